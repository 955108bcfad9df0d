//! The controller: shared device state and the thread that fetches and dispatches commands.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vpu_ffi::{
    vpu_sqe, VPU_CC_MPS_MASK, VPU_CC_MPS_SHIFT, VPU_SC_DATA_TRANSFER_ERROR, VPU_SQE_SIZE,
};

use super::config::EmuConfig;
use super::dma::{from_bytes, IovaTable};
use super::engine::Engine;
use super::pci::PciConfig;
use super::queues::{self, CompQueue, Origin, Status, SubQueue};
use super::session::Session;
use super::{admin, io_cmd, lock};

/// Queue pairs the card implements (admin included), as `VPU_BAR0_SIZE` declares.
pub(super) const QUEUE_PAIRS: usize = 64;
/// Commands taken from one queue before moving on to the next (round-robin arbitration).
const BURST: usize = 8;
/// Longest the controller thread sleeps without a doorbell.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Error and event counters of the card, for tests and diagnostics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub doorbell_errors: AtomicU64,
    pub dma_faults: AtomicU64,
    pub completions: AtomicU64,
    pub interrupts: AtomicU64,
    pub interrupts_lost: AtomicU64,
    pub corrupted: AtomicU64,
    pub fatal_errors: AtomicU64,
}

/// Everything the card's threads and the host-facing `DeviceIo` share.
pub(super) struct Shared {
    pub name: String,
    pub config: EmuConfig,
    pub iova: IovaTable,
    pub ctrl: Mutex<Ctrl>,
    /// Wakes the controller thread (doorbells, BME, reset, stop).
    pub wake: Condvar,
    pub engines: Vec<Arc<Engine>>,
    /// Decode and scale engines, frame memory and decoder sessions.
    pub xcode: super::transcode::Transcoding,
    pub irqs: RwLock<Vec<Arc<EventFd>>>,
    pub pci: Mutex<PciConfig>,
    pub removed: AtomicBool,
    pub bme: AtomicBool,
    pub stop: AtomicBool,
    pub lost_interrupts: AtomicU32,
    pub corrupt_completions: AtomicU32,
    pub counters: Counters,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("name", &self.name).finish()
    }
}

impl Shared {
    /// Whether the card may master the bus (PCI command register bit 2).
    pub fn bus_master(&self) -> bool {
        self.bme.load(Ordering::Acquire)
    }

    pub fn interrupts(&self) -> Vec<Arc<EventFd>> {
        self.irqs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn enabled_vectors(&self) -> usize {
        self.irqs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Marks the controller fatally failed (CSTS.CFS).
    pub fn fatal(&self, ctrl: &mut Ctrl, why: &str) {
        if !ctrl.cfs {
            tracing::error!(card = %self.name, reason = why, "controller fatal status");
            self.counters.fatal_errors.fetch_add(1, Ordering::Relaxed);
        }
        ctrl.cfs = true;
    }
}

/// Controller state behind one lock.
#[derive(Debug)]
pub(super) struct Ctrl {
    pub cc: u32,
    pub aqa: u32,
    pub asq: u64,
    pub acq: u64,
    pub intms: u32,
    pub cfs: bool,
    pub shst: u32,
    /// When CSTS.RDY rises after CC.EN 0→1 (`None` while disabled).
    pub ready_at: Option<Instant>,
    pub generation: u64,
    pub next_serial: u64,
    pub sqs: Vec<Option<SubQueue>>,
    pub cqs: Vec<Option<CompQueue>>,
    /// Number of Queues as granted (0's based NSQR, NCQR), once set.
    pub queues_granted: Option<(u16, u16)>,
    pub sessions: BTreeMap<u32, Arc<Session>>,
    pub next_session: u32,
    /// Held Asynchronous Event Requests and events waiting for one.
    pub aers: Vec<Origin>,
    pub events: VecDeque<u32>,
    /// Interrupt vectors with completions not yet signalled.
    pub irq_pending: u64,
    /// The latest Error Information log entry (Identify ELPE = 0: one entry kept).
    pub last_error: Option<ErrorEntry>,
    pub error_count: u64,
    rr: usize,
}

impl Ctrl {
    pub fn new() -> Self {
        Self {
            cc: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            cfs: false,
            shst: 0,
            ready_at: None,
            generation: 0,
            next_serial: 1,
            sqs: (0..QUEUE_PAIRS).map(|_| None).collect(),
            cqs: (0..QUEUE_PAIRS).map(|_| None).collect(),
            queues_granted: None,
            sessions: BTreeMap::new(),
            next_session: 1,
            aers: Vec::new(),
            events: VecDeque::new(),
            irq_pending: 0,
            last_error: None,
            error_count: 0,
            rr: 1,
        }
    }

    /// Memory page size from CC.MPS.
    pub fn page_size(&self) -> usize {
        4096usize << ((self.cc >> VPU_CC_MPS_SHIFT) & VPU_CC_MPS_MASK).min(8)
    }

    pub fn ready(&self) -> bool {
        self.ready_at.is_some_and(|t| Instant::now() >= t)
    }

    /// Records an error in the Error Information log page. `sqid`/`cid` are 0xffff when
    /// the error belongs to no command.
    pub fn log_error(&mut self, sqid: u16, cid: u16, status: Status) {
        self.error_count += 1;
        self.last_error = Some(ErrorEntry {
            count: self.error_count,
            sqid,
            cid,
            status,
        });
    }

    pub fn serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }
}

/// One entry of the Error Information log page (NVMe 1.4 section 5.14.1.1).
#[derive(Debug, Clone, Copy)]
pub(super) struct ErrorEntry {
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl ErrorEntry {
    /// The 64-byte entry: error count, SQ id, command id, status field (phase bit 0),
    /// parameter error location (none: 0xffff), the rest zero.
    pub fn to_bytes(self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqid.to_le_bytes());
        b[10..12].copy_from_slice(&self.cid.to_le_bytes());
        b[12..14].copy_from_slice(&self.status.0.to_le_bytes());
        b[14..16].copy_from_slice(&u16::MAX.to_le_bytes());
        b
    }
}

fn can_process(shared: &Shared, ctrl: &Ctrl) -> bool {
    ctrl.ready()
        && !ctrl.cfs
        && ctrl.shst == 0
        && shared.bus_master()
        && !shared.removed.load(Ordering::Acquire)
}

/// Takes the next command of SQ `qid`, if any.
fn fetch(shared: &Shared, ctrl: &mut Ctrl, qid: usize) -> Option<(vpu_sqe, Origin)> {
    let generation = ctrl.generation;
    let sq = ctrl.sqs.get_mut(qid)?.as_mut()?;
    if sq.head == sq.tail {
        return None;
    }
    let addr = sq
        .base
        .wrapping_add(u64::from(sq.head) * u64::from(VPU_SQE_SIZE));
    let mut buf = [0u8; VPU_SQE_SIZE as usize];
    if let Err(f) = shared.iova.read(addr, &mut buf) {
        shared.counters.dma_faults.fetch_add(1, Ordering::Relaxed);
        tracing::error!(card = %shared.name, queue = qid, iova = f.iova, reason = f.reason,
            "submission queue fetch failed");
        shared.fatal(ctrl, "submission queue fetch failed");
        return None;
    }
    sq.head = (sq.head + 1) % sq.size;
    let sqe: vpu_sqe = from_bytes(&buf);
    let origin = Origin {
        sqid: qid as u16,
        serial: sq.serial,
        cid: sqe.cid,
        generation,
    };
    Some((sqe, origin))
}

/// Processes up to `BURST` commands of SQ `qid`; returns how many were processed.
fn process_queue(shared: &Shared, ctrl: &mut Ctrl, qid: usize) -> usize {
    let mut n = 0;
    while n < BURST && can_process(shared, ctrl) {
        let Some((sqe, origin)) = fetch(shared, ctrl, qid) else {
            break;
        };
        n += 1;
        let outcome = if qid == 0 {
            admin::execute(shared, ctrl, &sqe, origin)
        } else {
            io_cmd::execute(shared, ctrl, &sqe, origin)
        };
        if let Some(done) = outcome {
            if done.status == Status::generic(VPU_SC_DATA_TRANSFER_ERROR) {
                ctrl.log_error(origin.sqid, origin.cid, done.status);
            }
            queues::post(shared, ctrl, origin, done);
        }
    }
    n
}

/// Processes up to `BURST` commands of each queue; returns whether any was processed.
fn process(shared: &Shared, ctrl: &mut Ctrl) -> bool {
    let mut any = false;
    let start = ctrl.rr;
    let io_queues = (0..QUEUE_PAIRS - 1).map(|i| 1 + (start - 1 + i) % (QUEUE_PAIRS - 1));
    for qid in std::iter::once(0).chain(io_queues) {
        if !can_process(shared, ctrl) {
            return any;
        }
        any |= process_queue(shared, ctrl, qid) > 0;
    }
    ctrl.rr = ctrl.rr % (QUEUE_PAIRS - 1) + 1;
    any
}

/// A write to the admin submission queue's tail doorbell: the new commands run in the
/// writer's thread before the register write returns, and their completions (and
/// interrupts) are posted by then. Admin commands are short (none waits for an engine),
/// and running them here spares a round trip through the controller thread: two thread
/// wake-ups, which on a small host cost more than the command itself. Whatever cannot run
/// now (the controller is not ready, or more than one burst is queued) is left to the
/// controller thread.
pub(super) fn admin_doorbell(shared: &Shared, ctrl: &mut Ctrl) {
    process_queue(shared, ctrl, 0);
    queues::flush_interrupts(shared, ctrl);
    if ctrl.sqs[0].as_ref().is_some_and(|sq| sq.head != sq.tail) {
        shared.wake.notify_one();
    }
}

/// The controller thread: fetch, dispatch, sleep until the next doorbell.
pub(super) fn run(shared: Arc<Shared>) {
    let mut ctrl = lock(&shared.ctrl);
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let busy = can_process(&shared, &ctrl) && process(&shared, &mut ctrl);
        queues::flush_interrupts(&shared, &mut ctrl);
        if busy {
            // Let register accesses and engine completions in between bursts.
            drop(ctrl);
            ctrl = lock(&shared.ctrl);
            continue;
        }
        let wait = match ctrl.ready_at {
            Some(t) if t > Instant::now() => t - Instant::now(),
            _ => IDLE_WAIT,
        };
        ctrl = shared
            .wake
            .wait_timeout(ctrl, wait)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}
