//! Encode engines: one worker thread each, taking jobs in order.
//!
//! An engine owns the encoders of the sessions placed on it (they are only ever locked by
//! its thread while encoding). With `pace`, an engine holds each frame for the time its
//! declared pixel rate needs, so that its throughput is the card's, not the host CPU's.
//! Load is measured over the last second as busy time × capacity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vpu_ffi::*;

use super::controller::Shared;
use super::lock;
use super::prp::HostSpan;
use super::queues::{self, Done, Origin, Status};
use super::session::EncodeInput;
use super::session::{self, Session};

/// Load is averaged over this window, in `BUCKETS` slots.
const WINDOW: Duration = Duration::from_secs(1);
const BUCKETS: usize = 10;

/// The data of an Encode Frame command.
pub(super) struct EncodeJob {
    pub input: EncodeInput,
    pub output: HostSpan,
    pub force_idr: bool,
}

pub(super) enum JobKind {
    Encode(EncodeJob),
    /// Flush Session: completes once the session's earlier frames have.
    Flush,
}

/// A command queued on an engine.
pub(super) struct Job {
    pub session: Arc<Session>,
    pub origin: Origin,
    pub kind: JobKind,
}

/// Faults injected into one engine.
#[derive(Debug, Default, Clone, Copy)]
struct EngineFaults {
    /// Hung until the instant (forever when the inner value is `None`).
    hang: Option<Option<Instant>>,
    /// Slowed by the factor until the instant (until reset when `None`).
    slow: Option<(u32, Option<Instant>)>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    faults: EngineFaults,
    stop: bool,
}

/// Busy time per slot of the last second.
#[derive(Debug)]
struct LoadWindow {
    origin: Instant,
    slot: u64,
    busy: [u64; BUCKETS],
}

impl LoadWindow {
    fn advance(&mut self, now: Instant) {
        let slot_len = WINDOW.as_nanos() as u64 / BUCKETS as u64;
        let slot = (now.duration_since(self.origin).as_nanos() as u64) / slot_len;
        let gap = slot.saturating_sub(self.slot).min(BUCKETS as u64);
        for i in 1..=gap {
            self.busy[((self.slot + i) % BUCKETS as u64) as usize] = 0;
        }
        self.slot = self.slot.max(slot);
    }
}

/// Figures of one engine (the engine log).
#[derive(Debug, Default)]
pub(super) struct EngineCounters {
    pub sessions: AtomicU32,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub busy_ns: AtomicU64,
    pub state: AtomicU8,
}

/// One encode engine.
pub(super) struct Engine {
    pub index: u8,
    pub counters: EngineCounters,
    queue: Mutex<Queue>,
    cv: Condvar,
    load: Mutex<LoadWindow>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("index", &self.index)
            .finish()
    }
}

impl Engine {
    pub fn new(index: u8) -> Self {
        Self {
            index,
            counters: EngineCounters::default(),
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            load: Mutex::new(LoadWindow {
                origin: Instant::now(),
                slot: 0,
                busy: [0; BUCKETS],
            }),
        }
    }

    /// Queues a job behind the engine's earlier ones.
    pub fn submit(&self, job: Job) {
        lock(&self.queue).jobs.push_back(job);
        self.cv.notify_one();
    }

    /// Removes and returns the queued (not started) jobs matching `pred`.
    pub fn take(&self, mut pred: impl FnMut(&Job) -> bool) -> Vec<Job> {
        let mut q = lock(&self.queue);
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(q.jobs.len());
        for job in q.jobs.drain(..) {
            if pred(&job) {
                taken.push(job);
            } else {
                kept.push_back(job);
            }
        }
        q.jobs = kept;
        taken
    }

    /// Controller reset: queued work is dropped, faults cleared, figures zeroed.
    pub fn reset(&self) {
        let mut q = lock(&self.queue);
        q.jobs.clear();
        q.faults = EngineFaults::default();
        let c = &self.counters;
        c.sessions.store(0, Ordering::Relaxed);
        c.frames.store(0, Ordering::Relaxed);
        c.bytes.store(0, Ordering::Relaxed);
        c.errors.store(0, Ordering::Relaxed);
        c.busy_ns.store(0, Ordering::Relaxed);
        *lock(&self.load) = LoadWindow {
            origin: Instant::now(),
            slot: 0,
            busy: [0; BUCKETS],
        };
        self.cv.notify_all();
    }

    /// Stops the worker thread.
    pub fn stop(&self) {
        lock(&self.queue).stop = true;
        self.cv.notify_all();
    }

    pub fn hang(&self, until: Option<Instant>) {
        lock(&self.queue).faults.hang = Some(until);
        self.cv.notify_all();
    }

    pub fn slow(&self, factor: u32, until: Option<Instant>) {
        lock(&self.queue).faults.slow = Some((factor, until));
    }

    /// Load over the last second, in load units of `capacity`.
    pub fn load(&self, capacity: u32) -> u32 {
        let mut w = lock(&self.load);
        w.advance(Instant::now());
        let busy: u64 = w.busy.iter().sum();
        let frac = (busy as f64 / WINDOW.as_nanos() as f64).min(1.0);
        (frac * f64::from(capacity)) as u32
    }

    /// VPU_ENGINE_STATE_* now.
    pub fn state(&self) -> u8 {
        let q = lock(&self.queue);
        if q.faults.hang.is_some() {
            VPU_ENGINE_STATE_FAULT as u8
        } else {
            self.counters.state.load(Ordering::Relaxed)
        }
    }

    fn record_busy(&self, ns: u64) {
        self.counters.busy_ns.fetch_add(ns, Ordering::Relaxed);
        let mut w = lock(&self.load);
        w.advance(Instant::now());
        let slot = (w.slot % BUCKETS as u64) as usize;
        w.busy[slot] += ns;
    }

    /// Waits for the next job; `None` when stopping. Returns the slow-down factor too.
    fn next(&self) -> Option<(Job, u32)> {
        let mut q = lock(&self.queue);
        loop {
            if q.stop {
                return None;
            }
            let now = Instant::now();
            if let Some((_, Some(until))) = q.faults.slow {
                if now >= until {
                    q.faults.slow = None;
                }
            }
            let wait = match q.faults.hang {
                Some(Some(until)) if now >= until => {
                    q.faults.hang = None;
                    None
                }
                Some(Some(until)) => Some(until - now),
                Some(None) => Some(Duration::from_secs(3600)),
                None => None,
            };
            if wait.is_none() {
                if let Some(job) = q.jobs.pop_front() {
                    let factor = q.faults.slow.map_or(1, |(f, _)| f);
                    return Some((job, factor));
                }
            }
            let timeout = wait.unwrap_or(Duration::from_secs(3600));
            q = self
                .cv
                .wait_timeout(q, timeout)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// The engine thread.
pub(super) fn run(shared: Arc<Shared>, engine: Arc<Engine>) {
    let pixel_rate = shared.config.pixel_rate_per_engine.max(1);
    while let Some((job, factor)) = engine.next() {
        if shared.removed.load(Ordering::Acquire) {
            // A card that fell off the bus does nothing more.
            continue;
        }
        let done = match &job.kind {
            JobKind::Encode(_) if !shared.bus_master() => {
                Done::err(Status::generic(VPU_SC_DATA_TRANSFER_ERROR))
            }
            JobKind::Flush => Done::ok(0),
            JobKind::Encode(_) if job.session.destroyed.load(Ordering::Acquire) => {
                Done::err(Status::vendor(VPU_SC_SESSION_ABORTED))
            }
            JobKind::Encode(e) => {
                engine
                    .counters
                    .state
                    .store(VPU_ENGINE_STATE_BUSY as u8, Ordering::Relaxed);
                let start = Instant::now();
                let generation = job.origin.generation;
                let may_write = || {
                    let ctrl = lock(&shared.ctrl);
                    let live = ctrl.generation == generation
                        && shared.bus_master()
                        && !shared.removed.load(Ordering::Acquire);
                    live.then_some(ctrl)
                };
                let result = job
                    .session
                    .encode(&e.input, &e.output, e.force_idr, may_write);
                let worked = start.elapsed();
                // Pacing holds the frame for the declared rate; a slow engine takes
                // `factor` times as long as it otherwise would.
                let paced = if shared.config.pace {
                    let ns = job.session.params.luma() * 1_000_000_000 / pixel_rate;
                    worked.max(Duration::from_nanos(ns))
                } else {
                    worked
                };
                let total = paced.checked_mul(factor).unwrap_or(paced);
                if let Some(rest) = total.checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
                engine.record_busy(start.elapsed().as_nanos() as u64);
                engine
                    .counters
                    .state
                    .store(VPU_ENGINE_STATE_IDLE as u8, Ordering::Relaxed);
                session::count(&job.session, &result);
                let c = &engine.counters;
                match result {
                    Ok(enc) => {
                        c.frames.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(u64::from(enc.bytes), Ordering::Relaxed);
                        let mut dw1 = enc.frame_type;
                        if enc.keyframe {
                            dw1 |= VPU_ENCODED_KEYFRAME;
                        }
                        Done {
                            status: Status::SUCCESS,
                            dw0: enc.bytes,
                            dw1,
                            out_len: Some(e.output.len as u32),
                        }
                    }
                    Err(status) => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        Done::err(status)
                    }
                }
            }
        };
        let mut ctrl = lock(&shared.ctrl);
        queues::post(&shared, &mut ctrl, job.origin, done);
        queues::flush_interrupts(&shared, &mut ctrl);
    }
}
