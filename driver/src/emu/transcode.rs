//! On-card transcoding: decode engines, scaler engines, card frame memory and their
//! commands (Create Decoder, Decode Frame, Scale Frame, Release Frame; Encode Frame from a
//! card frame is in `io_cmd`).
//!
//! Decode and scale engines are worker threads like the encode engines, each taking its
//! jobs in order. A decoder session stays on one decode engine, so its access units are
//! decoded in the order they were submitted; scale jobs go to the scaler engines in turn.
//! A job's result (a picture) enters frame memory only if the controller was not reset
//! since the command was fetched, under the controller lock, like any completion.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use fast_image_resize::Resizer;
use vpu_ffi::*;

use super::controller::{Ctrl, Shared};
use super::decode::DecoderSession;
use super::dma::from_bytes;
use super::frames::{CardFrame, FrameMemory};
use super::lock;
use super::prp::{self, PrpError};
use super::queues::{self, Done, Origin, Status};
use super::scale::{self, Filter};

/// Largest access unit Decode Frame takes.
pub(super) const MAX_ACCESS_UNIT: usize = 16 << 20;

/// What a job does on its engine thread: a picture to store, or none.
type Work = Box<dyn FnOnce(&mut Resizer) -> Result<Option<CardFrame>, Status> + Send>;

struct AuxJob {
    origin: Origin,
    /// The decoder session the job belongs to (aborted when it is destroyed).
    decoder: Option<u32>,
    work: Work,
}

#[derive(Default)]
struct AuxQueue {
    jobs: VecDeque<AuxJob>,
    stop: bool,
}

/// A decode or scale engine.
pub(super) struct AuxEngine {
    pub index: u8,
    pub kind: &'static str,
    pub jobs_done: AtomicU64,
    pub busy_ns: AtomicU64,
    pub sessions: AtomicUsize,
    queue: Mutex<AuxQueue>,
    cv: Condvar,
}

impl std::fmt::Debug for AuxEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuxEngine")
            .field("kind", &self.kind)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl AuxEngine {
    fn new(kind: &'static str, index: u8) -> AuxEngine {
        AuxEngine {
            index,
            kind,
            jobs_done: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            sessions: AtomicUsize::new(0),
            queue: Mutex::new(AuxQueue::default()),
            cv: Condvar::new(),
        }
    }

    fn submit(&self, job: AuxJob) {
        lock(&self.queue).jobs.push_back(job);
        self.cv.notify_one();
    }

    pub fn stop(&self) {
        lock(&self.queue).stop = true;
        self.cv.notify_all();
    }

    fn next(&self) -> Option<AuxJob> {
        let mut q = lock(&self.queue);
        loop {
            if q.stop {
                return None;
            }
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            q = self
                .cv
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn take_decoder(&self, id: u32) -> Vec<AuxJob> {
        let mut q = lock(&self.queue);
        let (taken, kept): (Vec<_>, Vec<_>) = q.jobs.drain(..).partition(|j| j.decoder == Some(id));
        q.jobs = kept.into();
        taken
    }

    fn reset(&self) {
        lock(&self.queue).jobs.clear();
        self.sessions.store(0, Ordering::Relaxed);
    }
}

/// The transcoding half of the card.
#[derive(Debug)]
pub(super) struct Transcoding {
    pub frames: FrameMemory,
    pub decoders: Mutex<BTreeMap<u32, Arc<DecoderSession>>>,
    pub decode_engines: Vec<Arc<AuxEngine>>,
    pub scale_engines: Vec<Arc<AuxEngine>>,
    next_scaler: AtomicUsize,
}

impl Transcoding {
    pub fn new(decoders: u8, scalers: u8, frame_memory: usize) -> Transcoding {
        Transcoding {
            frames: FrameMemory::new(frame_memory),
            decoders: Mutex::new(BTreeMap::new()),
            decode_engines: (0..decoders)
                .map(|i| Arc::new(AuxEngine::new("dec", i)))
                .collect(),
            scale_engines: (0..scalers)
                .map(|i| Arc::new(AuxEngine::new("scl", i)))
                .collect(),
            next_scaler: AtomicUsize::new(0),
        }
    }

    /// Every engine thread to start.
    pub fn engines(&self) -> impl Iterator<Item = &Arc<AuxEngine>> {
        self.decode_engines.iter().chain(&self.scale_engines)
    }

    /// Controller reset: decoders, queued jobs and pictures are gone.
    pub fn reset(&self) {
        for d in std::mem::take(&mut *lock(&self.decoders)).values() {
            d.destroyed.store(true, Ordering::Release);
        }
        for e in self.engines() {
            e.reset();
        }
        self.frames.reset();
    }

    pub fn stop(&self) {
        for e in self.engines() {
            e.stop();
        }
    }
}

/// An engine thread: runs jobs, stores their pictures, posts completions.
pub(super) fn run(shared: Arc<Shared>, engine: Arc<AuxEngine>) {
    let mut resizer = Resizer::new();
    while let Some(job) = engine.next() {
        if shared.removed.load(Ordering::Acquire) {
            continue;
        }
        let start = Instant::now();
        let result = if shared.bus_master() {
            (job.work)(&mut resizer)
        } else {
            Err(Status::generic(VPU_SC_DATA_TRANSFER_ERROR))
        };
        engine
            .busy_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        engine.jobs_done.fetch_add(1, Ordering::Relaxed);
        let mut ctrl = lock(&shared.ctrl);
        if ctrl.generation != job.origin.generation {
            continue;
        }
        let done = match result {
            Ok(Some(frame)) => {
                let dims = (frame.width as u32) | ((frame.height as u32) << 16);
                match shared.xcode.frames.store(frame) {
                    Ok(handle) => Done {
                        dw1: dims,
                        ..Done::ok(handle)
                    },
                    Err(s) => Done::err(s),
                }
            }
            Ok(None) => Done::ok(VPU_FRAME_HANDLE_NONE),
            Err(s) => Done::err(s),
        };
        queues::post(&shared, &mut ctrl, job.origin, done);
        queues::flush_interrupts(&shared, &mut ctrl);
    }
}

/// Create Decoder (admin).
pub(super) fn create_decoder(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let mut raw = [0u8; std::mem::size_of::<vpu_decoder_params>()];
    if let Err(e) = prp::read(&shared.iova, sqe.prp1, sqe.prp2, ctrl.page_size(), &mut raw) {
        return Some(Done::err(prp_status(shared, e)));
    }
    let p: vpu_decoder_params = from_bytes(&raw);
    let cfg = &shared.config;
    if u32::from(p.codec) != VPU_CODEC_H264 {
        return Some(Done::err(Status::vendor(VPU_SC_UNSUPPORTED_CODEC)));
    }
    if p.rsvd1 != 0 || p.rsvd.iter().any(|&b| b != 0) {
        return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
    }
    let (mw, mh) = (p.max_width, p.max_height);
    if mw > cfg.max_width || mh > cfg.max_height {
        return Some(Done::err(Status::vendor(VPU_SC_TOO_LARGE)));
    }
    let max_w = if mw == 0 { cfg.max_width } else { mw };
    let max_h = if mh == 0 { cfg.max_height } else { mh };
    let engines = &shared.xcode.decode_engines;
    let hint = p.engine_hint;
    let limit = usize::from(cfg.max_sessions_per_engine);
    let room = |e: &Arc<AuxEngine>| e.sessions.load(Ordering::Relaxed) < limit;
    let engine = if hint != VPU_ENGINE_ANY as u16 {
        match engines.get(usize::from(hint)) {
            Some(e) if room(e) => Some(e),
            Some(_) => None,
            None => return Some(Done::err(Status::vendor(VPU_SC_INVALID_PARAMS))),
        }
    } else {
        engines
            .iter()
            .filter(|e| room(e))
            .min_by_key(|e| e.sessions.load(Ordering::Relaxed))
    };
    let Some(engine) = engine else {
        return Some(Done::err(Status::vendor(VPU_SC_NO_CAPACITY)));
    };
    let mut decoders = lock(&shared.xcode.decoders);
    let mut id = ctrl.next_session;
    while id == 0 || ctrl.sessions.contains_key(&id) || decoders.contains_key(&id) {
        id = id.wrapping_add(1);
    }
    let session = match DecoderSession::new(id, engine.index, max_w.into(), max_h.into()) {
        Ok(s) => Arc::new(s),
        Err(s) => return Some(Done::err(s)),
    };
    ctrl.next_session = id.wrapping_add(1);
    decoders.insert(id, session);
    engine.sessions.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(card = %shared.name, session = id, engine = engine.index, "decoder created");
    Some(Done::ok(id))
}

/// Destroy Session for a decoder; `None` if `id` is no decoder.
pub(super) fn destroy_decoder(shared: &Shared, ctrl: &mut Ctrl, id: u32) -> Option<Done> {
    let session = lock(&shared.xcode.decoders).remove(&id)?;
    session.destroyed.store(true, Ordering::Release);
    let engine = &shared.xcode.decode_engines[usize::from(session.engine)];
    engine.sessions.fetch_sub(1, Ordering::Relaxed);
    for job in engine.take_decoder(id) {
        let aborted = Done::err(Status::vendor(VPU_SC_SESSION_ABORTED));
        queues::post(shared, ctrl, job.origin, aborted);
    }
    tracing::debug!(card = %shared.name, session = id, "decoder destroyed");
    Some(Done::ok(0))
}

fn prp_status(shared: &Shared, e: PrpError) -> Status {
    match e {
        PrpError::InvalidOffset => Status::generic(VPU_SC_INVALID_PRP_OFFSET),
        PrpError::Dma(f) => {
            shared.counters.dma_faults.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(card = %shared.name, iova = f.iova, len = f.len, reason = f.reason, "DMA fault");
            Status::generic(VPU_SC_DATA_TRANSFER_ERROR)
        }
    }
}

/// Decode Frame (I/O).
pub(super) fn decode(
    shared: &Shared,
    ctrl: &mut Ctrl,
    sqe: &vpu_sqe,
    origin: Origin,
) -> Option<Done> {
    let id = sqe.cdw10;
    let Some(session) = lock(&shared.xcode.decoders).get(&id).cloned() else {
        return Some(Done::err(Status::vendor(VPU_SC_SESSION_NOT_FOUND)));
    };
    let flags = sqe.cdw11;
    if flags & !VPU_DECODE_FLUSH != 0 {
        return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
    }
    let len = sqe.cdw15 as usize;
    let work: Work = if flags & VPU_DECODE_FLUSH != 0 {
        if len != 0 {
            return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
        }
        let s = Arc::clone(&session);
        Box::new(move |_| s.flush())
    } else {
        if len == 0 || len > MAX_ACCESS_UNIT {
            return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
        }
        // The access unit is read into the card as the command starts.
        let mut unit = vec![0u8; len];
        if let Err(e) = prp::read(
            &shared.iova,
            sqe.prp1,
            sqe.prp2,
            ctrl.page_size(),
            &mut unit,
        ) {
            return Some(Done::err(prp_status(shared, e)));
        }
        let s = Arc::clone(&session);
        Box::new(move |_| {
            if s.destroyed.load(Ordering::Acquire) {
                return Err(Status::vendor(VPU_SC_SESSION_ABORTED));
            }
            s.decode(&unit)
        })
    };
    let engine = &shared.xcode.decode_engines[usize::from(session.engine)];
    engine.submit(AuxJob {
        origin,
        decoder: Some(id),
        work,
    });
    None
}

/// Scale Frame (I/O).
pub(super) fn scale(shared: &Shared, sqe: &vpu_sqe, origin: Origin) -> Option<Done> {
    let src = match shared.xcode.frames.get(sqe.cdw10) {
        Ok(f) => f,
        Err(s) => return Some(Done::err(s)),
    };
    let (w, h) = ((sqe.cdw11 & 0xffff) as usize, (sqe.cdw11 >> 16) as usize);
    let Some(filter) = Filter::from_code(sqe.cdw12) else {
        return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
    };
    if w < scale::MIN_SIDE || h < scale::MIN_SIDE || w % 2 != 0 || h % 2 != 0 {
        return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
    }
    if w > usize::from(shared.config.max_width) || h > usize::from(shared.config.max_height) {
        return Some(Done::err(Status::vendor(VPU_SC_TOO_LARGE)));
    }
    let engines = &shared.xcode.scale_engines;
    let i = shared.xcode.next_scaler.fetch_add(1, Ordering::Relaxed) % engines.len().max(1);
    let Some(engine) = engines.get(i) else {
        return Some(Done::err(Status::generic(VPU_SC_INVALID_OPCODE)));
    };
    engine.submit(AuxJob {
        origin,
        decoder: None,
        work: Box::new(move |resizer| scale::scale(resizer, &src, w, h, filter).map(Some)),
    });
    None
}

/// Release Frame (I/O).
pub(super) fn release(shared: &Shared, sqe: &vpu_sqe) -> Option<Done> {
    Some(match shared.xcode.frames.release(sqe.cdw10) {
        Ok(()) => Done::ok(0),
        Err(s) => Done::err(s),
    })
}

/// A card frame for Encode Frame with `VPU_ENCODE_CARD_FRAME`, checked against the
/// session's size.
pub(super) fn encode_source(
    shared: &Shared,
    handle: u32,
    width: usize,
    height: usize,
) -> Result<Arc<CardFrame>, Status> {
    let frame = shared.xcode.frames.get(handle)?;
    if frame.width != width || frame.height != height {
        return Err(Status::vendor(VPU_SC_FRAME_MISMATCH));
    }
    Ok(frame)
}
