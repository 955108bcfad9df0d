//! Encode engines: one worker thread each, taking jobs in order.
//!
//! An engine encodes one codec (`EngineCodec`): H.264 jobs complete as they are coded;
//! AV1 jobs go through `av1_jobs`, which holds each Encode Frame until its temporal unit
//! is out and drains sessions left idle. An engine owns the encoders of the sessions
//! placed on it (they are only ever locked by its thread while encoding). With `pace`, an engine holds each frame for the time its
//! declared pixel rate needs, so that its throughput is the card's, not the host CPU's.
//! Load is measured over the last second as busy time × capacity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vpu_ffi::*;

use super::av1::IDLE_DRAIN;
use super::av1_jobs::{self, Posts};
use super::config::EngineCodec;
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
    /// VPU_ENCODE_END_OF_STREAM: an engine that holds frames drains after this one.
    pub end_of_stream: bool,
    /// The frame's presentation timestamp (CDW12–13).
    pub pts: u64,
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
    pub codec: EngineCodec,
    /// Luma samples per second it declares (pacing holds frames to it).
    pub pixel_rate: u64,
    pub counters: EngineCounters,
    queue: Mutex<Queue>,
    cv: Condvar,
    load: Mutex<LoadWindow>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("index", &self.index)
            .field("codec", &self.codec)
            .finish()
    }
}

impl Engine {
    pub fn new(index: u8, codec: EngineCodec, pixel_rate: u64) -> Self {
        Self {
            index,
            codec,
            pixel_rate,
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

    /// Waits for the next job (with the slow-down factor), or until `idle` has passed
    /// with nothing to do.
    fn next(&self, idle: Option<Instant>) -> Next {
        let mut q = lock(&self.queue);
        loop {
            if q.stop {
                return Next::Stop;
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
                    return Next::Job(job, factor);
                }
                if idle.is_some_and(|at| now >= at) {
                    return Next::Idle;
                }
            }
            // A hung engine does not drain either: its held commands wait with it.
            let timeout = match (wait, idle) {
                (None, Some(at)) => at - now,
                (Some(w), _) => w,
                (None, None) => Duration::from_secs(3600),
            };
            q = self
                .cv
                .wait_timeout(q, timeout)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// What an engine thread does next.
enum Next {
    Job(Job, u32),
    /// A session's held frames waited long enough: drain it.
    Idle,
    Stop,
}

/// Holds the engine for a frame as long as its declared pixel rate needs (with `pace`),
/// times the slow-down `factor`; records the busy time.
fn pace(shared: &Shared, engine: &Engine, start: Instant, luma: u64, factor: u32) {
    let worked = start.elapsed();
    // Pacing holds the frame for the declared rate; a slow engine takes `factor` times as
    // long as it otherwise would.
    let paced = if shared.config.pace {
        let ns = luma * 1_000_000_000 / engine.pixel_rate.max(1);
        worked.max(Duration::from_nanos(ns))
    } else {
        worked
    };
    let total = paced.checked_mul(factor).unwrap_or(paced);
    if let Some(rest) = total.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    engine.record_busy(start.elapsed().as_nanos() as u64);
}

/// Posts finished commands and raises their interrupts.
fn post_all(shared: &Shared, posts: Posts) {
    if posts.is_empty() {
        return;
    }
    let mut ctrl = lock(&shared.ctrl);
    for (origin, done) in posts {
        queues::post(shared, &mut ctrl, origin, done);
    }
    queues::flush_interrupts(shared, &mut ctrl);
}

/// The engine thread.
pub(super) fn run(shared: Arc<Shared>, engine: Arc<Engine>) {
    // AV1 sessions with held commands, to drain when they fall idle.
    let mut holding: Vec<Arc<Session>> = Vec::new();
    loop {
        holding.retain(|s| lock(&s.held).oldest().is_some());
        let idle = holding
            .iter()
            .filter_map(|s| lock(&s.held).oldest())
            .min()
            .map(|t| t + IDLE_DRAIN);
        let (job, factor) = match engine.next(idle) {
            Next::Stop => break,
            Next::Idle => {
                let now = Instant::now();
                for s in &holding {
                    let due = lock(&s.held)
                        .oldest()
                        .is_some_and(|t| t + IDLE_DRAIN <= now);
                    if due && !shared.removed.load(Ordering::Acquire) {
                        tracing::debug!(card = %shared.name, session = s.id, "draining an idle AV1 session");
                        post_all(&shared, av1_jobs::drain(&shared, &engine, s));
                    }
                }
                continue;
            }
            Next::Job(job, factor) => (job, factor),
        };
        if shared.removed.load(Ordering::Acquire) {
            // A card that fell off the bus does nothing more.
            continue;
        }
        let posts: Posts = match &job.kind {
            JobKind::Encode(_) if !shared.bus_master() => vec![(
                job.origin,
                Done::err(Status::generic(VPU_SC_DATA_TRANSFER_ERROR)),
            )],
            JobKind::Flush if job.session.is_av1() => {
                let mut posts = av1_jobs::drain(&shared, &engine, &job.session);
                posts.push((job.origin, Done::ok(0)));
                posts
            }
            JobKind::Flush => vec![(job.origin, Done::ok(0))],
            JobKind::Encode(_) if job.session.destroyed.load(Ordering::Acquire) => vec![(
                job.origin,
                Done::err(Status::vendor(VPU_SC_SESSION_ABORTED)),
            )],
            JobKind::Encode(e) if job.session.is_av1() => {
                let start = Instant::now();
                busy(&engine, true);
                let posts = av1_jobs::encode(&shared, &engine, &job.session, job.origin, e);
                pace(&shared, &engine, start, job.session.params.luma(), factor);
                busy(&engine, false);
                if lock(&job.session.held).oldest().is_some()
                    && !holding.iter().any(|s| Arc::ptr_eq(s, &job.session))
                {
                    holding.push(Arc::clone(&job.session));
                }
                posts
            }
            JobKind::Encode(e) => {
                busy(&engine, true);
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
                    .encode(&e.input, &e.output, e.force_idr, e.pts, may_write);
                pace(&shared, &engine, start, job.session.params.luma(), factor);
                busy(&engine, false);
                session::count(&job.session, &result);
                let c = &engine.counters;
                let done = match result {
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
                };
                vec![(job.origin, done)]
            }
        };
        post_all(&shared, posts);
    }
}

/// Marks the engine busy or idle in its log.
fn busy(engine: &Engine, busy: bool) {
    let state = if busy {
        VPU_ENGINE_STATE_BUSY
    } else {
        VPU_ENGINE_STATE_IDLE
    };
    engine.counters.state.store(state as u8, Ordering::Relaxed);
}
