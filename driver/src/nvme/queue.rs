//! One submission/completion queue pair: command ids, submission, completion validation.
//!
//! Command ids carry a generation above the slot index, so a stale or corrupted id is
//! very unlikely to name another command in flight; a completion is accepted only when
//! its id, submission queue id and head are all consistent. Each command in flight owns
//! its data buffer handles, PRP list pages and a queue-depth permit until the device
//! completes it (or the controller is reset), so memory the device may still write is
//! never unmapped or reused, whatever happened to the caller.

use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use vpu_ffi::{vpu_cqe, VPU_CQE_PHASE, VPU_CQE_SIZE, VPU_SQE_SIZE};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer};

use super::command::{encode_sqe, Command, Completion, RawCqe};
use super::error::{NvmeError, ProtocolViolation};
use super::metrics::NvmeMetrics;
use super::prp::{self, PrpPagePool, Prps};

/// What a submitter waits on.
pub(crate) type Waiter = oneshot::Receiver<Result<Completion, NvmeError>>;
type Notifier = oneshot::Sender<Result<Completion, NvmeError>>;

/// A command the device has not completed yet.
#[derive(Debug)]
struct InFlight {
    cid: u16,
    opcode: u8,
    /// Gone once the submitter stopped waiting (timeout, protocol error, cancellation).
    waiter: Option<Notifier>,
    /// Data buffer and PRP list pages: mapped until this entry is dropped.
    _prps: Prps,
    _metadata: Option<DmaBuffer>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u16,
    entry: Option<InFlight>,
}

#[derive(Debug)]
struct SqState {
    tail: u16,
    slots: Vec<Slot>,
    free: Vec<u16>,
    dead: bool,
}

#[derive(Debug)]
struct CqState {
    head: u16,
    phase: bool,
}

/// Doorbell offsets in BAR0 for queue `qid` with stride `4 << dstrd`.
pub(crate) fn doorbells(qid: u16, dstrd: u32) -> (u64, u64) {
    let stride = 4u64 << dstrd;
    let base = u64::from(vpu_ffi::VPU_REG_DBS);
    let sq = base + 2 * u64::from(qid) * stride;
    (sq, sq + stride)
}

/// Bits of a command id that index the slot.
fn slot_bits(slots: usize) -> u32 {
    usize::BITS - slots.saturating_sub(1).max(1).leading_zeros()
}

/// A submission queue and its completion queue (one-to-one).
#[derive(Debug)]
pub(crate) struct QueuePair {
    pub device: String,
    pub qid: u16,
    pub depth: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    io: Arc<dyn DeviceIo>,
    sq_doorbell: u64,
    cq_doorbell: u64,
    slot_mask: u16,
    generation_mask: u16,
    permits: Arc<Semaphore>,
    sq_state: Mutex<SqState>,
    cq_state: Mutex<CqState>,
    metrics: Arc<NvmeMetrics>,
    pool: Arc<PrpPagePool>,
    /// Polling mode: set while one submitter polls the CQ for everybody.
    poller: AtomicBool,
    /// Polling mode: wakes a waiter to take over when the poller leaves.
    poller_left: Notify,
}

/// The polling role; released (and handed on) on drop, cancellation included.
struct PollerRole<'a>(&'a QueuePair);

impl Drop for PollerRole<'_> {
    fn drop(&mut self) {
        self.0.poller.store(false, Ordering::Release);
        self.0.poller_left.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data consistent enough to go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QueuePair {
    /// Allocates the queue memory of a pair with `depth` entries (at least 2).
    pub fn new(
        io: &Arc<dyn DeviceIo>,
        qid: u16,
        depth: u16,
        dstrd: u32,
        metrics: Arc<NvmeMetrics>,
        pool: Arc<PrpPagePool>,
    ) -> Result<Self, NvmeError> {
        let device = io.info().name.clone();
        let depth = depth.max(2);
        let alloc = |len: usize, what| {
            io.alloc_dma(len).map_err(|source| NvmeError::DmaAlloc {
                device: device.clone(),
                what,
                source,
            })
        };
        let sq = alloc(
            usize::from(depth) * VPU_SQE_SIZE as usize,
            "a submission queue",
        )?;
        let cq = alloc(
            usize::from(depth) * VPU_CQE_SIZE as usize,
            "a completion queue",
        )?;
        let slots = usize::from(depth) - 1;
        let bits = slot_bits(slots);
        let slot_mask = ((1u32 << bits) - 1) as u16;
        let generation_mask = if bits >= 16 {
            0
        } else {
            ((1u32 << (16 - bits)) - 1) as u16
        };
        let (sq_doorbell, cq_doorbell) = doorbells(qid, dstrd);
        Ok(Self {
            device,
            qid,
            depth,
            sq,
            cq,
            io: Arc::clone(io),
            sq_doorbell,
            cq_doorbell,
            slot_mask,
            generation_mask,
            permits: Arc::new(Semaphore::new(slots)),
            sq_state: Mutex::new(SqState {
                tail: 0,
                slots: (0..slots).map(|_| Slot::default()).collect(),
                free: (0..slots as u16).rev().collect(),
                dead: false,
            }),
            cq_state: Mutex::new(CqState {
                head: 0,
                phase: true,
            }),
            metrics,
            pool,
            poller: AtomicBool::new(false),
            poller_left: Notify::new(),
        })
    }

    /// Polling mode: waits for a completion without interrupts. One waiter at a time
    /// polls the completion queue (and wakes the others' commands as it finds them); the
    /// rest sleep until their completion arrives or the poller leaves.
    pub async fn poll_for(&self, rx: &mut Waiter) -> Option<Result<Completion, NvmeError>> {
        loop {
            if self
                .poller
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _role = PollerRole(self);
                loop {
                    self.process_completions();
                    match rx.try_recv() {
                        Ok(r) => return Some(r),
                        Err(TryRecvError::Closed) => return None,
                        Err(TryRecvError::Empty) => {
                            // Nothing yet: let other threads run (the device may be
                            // software sharing these CPUs), then other tasks.
                            std::thread::yield_now();
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
            tokio::select! {
                r = &mut *rx => return r.ok(),
                _ = self.poller_left.notified() => {}
            }
        }
    }

    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Commands the device has not completed.
    pub fn in_flight(&self) -> usize {
        lock(&self.sq_state)
            .slots
            .iter()
            .filter(|s| s.entry.is_some())
            .count()
    }

    fn reset_error(&self) -> NvmeError {
        NvmeError::Reset {
            device: self.device.clone(),
            queue: self.qid,
        }
    }

    /// Submits `cmd`: waits for a free slot, writes the entry and rings the doorbell.
    /// Returns the command id and what to wait on.
    pub async fn submit(&self, cmd: &Command) -> Result<(u16, Waiter), NvmeError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| self.reset_error())?;
        let prps = prp::build(&self.device, &self.pool, cmd.data.as_ref())?;
        let (metadata, mptr) = match &cmd.metadata {
            Some((buf, offset)) => (Some(buf.clone()), buf.iova() + *offset as u64),
            None => (None, 0),
        };
        let (tx, rx) = oneshot::channel();
        let mut sq = lock(&self.sq_state);
        if sq.dead {
            return Err(self.reset_error());
        }
        let index = sq.free.pop().ok_or_else(|| self.reset_error())?;
        let slot = &mut sq.slots[usize::from(index)];
        let bits = self.slot_mask.count_ones();
        let mut cid;
        loop {
            slot.generation = slot.generation.wrapping_add(1) & self.generation_mask;
            cid = if bits >= 16 {
                index
            } else {
                (slot.generation << bits) | index
            };
            // FFFFh means "no command" in error logs; never use it.
            if cid != u16::MAX {
                break;
            }
        }
        let entry = encode_sqe(cmd, cid, prps.prp1, prps.prp2, mptr);
        slot.entry = Some(InFlight {
            cid,
            opcode: cmd.opcode,
            waiter: Some(tx),
            _prps: prps,
            _metadata: metadata,
            _permit: permit,
        });
        let tail = sq.tail;
        self.sq
            .write(usize::from(tail) * VPU_SQE_SIZE as usize, &entry);
        let new_tail = (tail + 1) % self.depth;
        if let Err(source) = self.io.write32(0, self.sq_doorbell, u32::from(new_tail)) {
            // The device never saw the doorbell; the entry is not in flight. Keep the
            // slot out of use anyway, in case the write reached the device.
            if let Some(e) = sq.slots[usize::from(index)].entry.as_mut() {
                e.waiter = None;
            }
            sq.tail = new_tail;
            return Err(NvmeError::Register {
                device: self.device.clone(),
                source,
            });
        }
        sq.tail = new_tail;
        drop(sq);
        NvmeMetrics::inc(&self.metrics.commands);
        Ok((cid, rx))
    }

    /// Consumes the completion entries the device has posted (at most one queue's
    /// worth), wakes their submitters and moves the CQ head doorbell. Returns how many
    /// entries were consumed.
    pub fn process_completions(&self) -> usize {
        self.process(false)
    }

    /// `process_completions`; a `sweep` that finds entries counts a lost interrupt, before
    /// anybody is woken.
    fn process(&self, sweep: bool) -> usize {
        let status_dword = offset_of!(vpu_cqe, cid);
        let mut cq = lock(&self.cq_state);
        let mut wake = Vec::new();
        let mut consumed = 0;
        while consumed < usize::from(self.depth) {
            let at = usize::from(cq.head) * VPU_CQE_SIZE as usize;
            let Some(word) = self.cq.read_u32(at + status_dword) else {
                break;
            };
            let phase = (word >> 16) & VPU_CQE_PHASE != 0;
            if phase != cq.phase {
                break;
            }
            let mut bytes = [0u8; VPU_CQE_SIZE as usize];
            if !self.cq.read(at, &mut bytes) {
                break;
            }
            let cqe = RawCqe::decode(&bytes);
            cq.head += 1;
            if cq.head == self.depth {
                cq.head = 0;
                cq.phase = !cq.phase;
            }
            consumed += 1;
            if let Some(w) = self.complete(&cqe) {
                wake.push(w);
            }
        }
        if consumed > 0 {
            if let Err(e) = self.io.write32(0, self.cq_doorbell, u32::from(cq.head)) {
                tracing::warn!(device = %self.device, queue = self.qid, error = %e,
                    "writing the completion queue head doorbell failed");
            }
        }
        drop(cq);
        if sweep && consumed > 0 {
            NvmeMetrics::inc(&self.metrics.lost_interrupts);
            tracing::warn!(device = %self.device, queue = self.qid, consumed,
                "completions found without an interrupt");
        }
        for (tx, result) in wake {
            // The submitter may have stopped waiting; nothing to do then.
            let _ = tx.send(result);
        }
        consumed
    }

    /// Whether a command is in flight and the device has posted a completion entry that
    /// has not been consumed yet (the entry at the head has the current phase).
    pub fn completion_posted(&self) -> bool {
        if self.in_flight() == 0 {
            return false;
        }
        let cq = lock(&self.cq_state);
        let at = usize::from(cq.head) * VPU_CQE_SIZE as usize;
        self.cq
            .read_u32(at + offset_of!(vpu_cqe, cid))
            .is_some_and(|word| ((word >> 16) & VPU_CQE_PHASE != 0) == cq.phase)
    }

    /// Interrupt mode, after a silent sweep interval: consumes completions that arrived
    /// without their interrupt, counting them as lost interrupts.
    pub fn sweep(&self) {
        if self.in_flight() == 0 {
            return;
        }
        self.process(true);
    }

    /// Validates one completion entry against the commands in flight.
    fn complete(&self, cqe: &RawCqe) -> Option<(Notifier, Result<Completion, NvmeError>)> {
        let mut sq = lock(&self.sq_state);
        let index = usize::from(cqe.cid & self.slot_mask);
        let known = sq
            .slots
            .get(index)
            .and_then(|s| s.entry.as_ref())
            .is_some_and(|e| e.cid == cqe.cid);
        let violation = if !known {
            Some(ProtocolViolation::UnknownCid { cid: cqe.cid })
        } else if cqe.sq_id != self.qid {
            Some(ProtocolViolation::SqIdMismatch {
                cid: cqe.cid,
                expected: self.qid,
                got: cqe.sq_id,
            })
        } else if cqe.sq_head >= self.depth {
            Some(ProtocolViolation::SqHeadOutOfRange {
                cid: cqe.cid,
                sq_head: cqe.sq_head,
                depth: self.depth,
            })
        } else {
            None
        };
        if let Some(violation) = violation {
            NvmeMetrics::inc(&self.metrics.protocol_errors);
            tracing::warn!(device = %self.device, queue = self.qid, %violation,
                "rejected a completion entry");
            if !known {
                NvmeMetrics::inc(&self.metrics.stray_completions);
                return None;
            }
            // The entry names a command in flight but cannot be trusted: tell its
            // submitter, and keep the command's memory mapped until a consistent
            // completion or a reset, since the device may not be done with it.
            let waiter = sq.slots[index].entry.as_mut()?.waiter.take()?;
            let err = NvmeError::DeviceProtocol {
                device: self.device.clone(),
                queue: self.qid,
                violation,
            };
            return Some((waiter, Err(err)));
        }
        let entry = sq.slots[index].entry.take()?;
        sq.free.push(index as u16);
        drop(sq);
        match entry.waiter {
            Some(tx) => Some((tx, Ok(Completion::from_raw(cqe)))),
            None => {
                NvmeMetrics::inc(&self.metrics.late_completions);
                tracing::debug!(device = %self.device, queue = self.qid, cid = entry.cid,
                    opcode = entry.opcode, "discarded the late completion of a timed-out command");
                None
            }
        }
    }

    /// Stops waiting for `cid`; its memory stays mapped until the device completes it.
    /// Returns false when it already completed.
    pub fn abandon(&self, cid: u16) -> bool {
        let mut sq = lock(&self.sq_state);
        let index = usize::from(cid & self.slot_mask);
        match sq.slots.get_mut(index).and_then(|s| s.entry.as_mut()) {
            Some(e) if e.cid == cid => {
                e.waiter = None;
                true
            }
            _ => false,
        }
    }

    /// Fails every command in flight with `Reset` and refuses new ones. Only once the
    /// device can no longer reach the queue's memory (controller disabled) does
    /// `release` let go of it; otherwise it is leaked on purpose.
    pub fn kill(&self, release: bool) {
        let mut sq = lock(&self.sq_state);
        sq.dead = true;
        self.permits.close();
        let entries: Vec<InFlight> = sq.slots.iter_mut().filter_map(|s| s.entry.take()).collect();
        drop(sq);
        let mut waiters = Vec::new();
        for mut e in entries {
            if let Some(tx) = e.waiter.take() {
                waiters.push(tx);
            }
            if !release {
                std::mem::forget(e);
            }
        }
        if !release {
            std::mem::forget(self.sq.clone());
            std::mem::forget(self.cq.clone());
        }
        for tx in waiters {
            let _ = tx.send(Err(self.reset_error()));
        }
    }

    /// Writes raw bytes into this queue's completion memory, as a device would (unit tests
    /// and [`super::hostile`]).
    pub(crate) fn device_post(&self, slot: u16, cqe: &[u8; VPU_CQE_SIZE as usize]) {
        self.cq
            .write(usize::from(slot) * VPU_CQE_SIZE as usize, cqe);
    }
}
