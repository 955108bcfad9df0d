//! Admin commands: Identify, queues, features, logs, abort, asynchronous events and the
//! vendor session commands.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vpu_ffi::*;

use super::av1_jobs;
use super::config::EmuConfig;
use super::controller::{Ctrl, Shared, QUEUE_PAIRS};
use super::dma::{as_bytes, from_bytes, Pod};
use super::engine::JobKind;
use super::prp::{self, PrpError};
use super::queues::{self, CompQueue, Done, Origin, Status, SubQueue};
use super::regs::MQES;
use super::session::{Session, SessionParams};

/// Asynchronous Event Requests the card holds at once (Identify AERL + 1).
const AER_LIMIT: usize = 4;
/// Maximum data transfer: 2^MDTS pages of CAP.MPSMIN (32 MiB), what the largest frame
/// with generous strides needs.
const MDTS: u8 = super::params::MDTS;
/// NVMe status: Asynchronous Event Request Limit Exceeded (SCT 1).
const SC_AER_LIMIT: u32 = 0x05;

fn invalid_field() -> Option<Done> {
    Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)))
}

fn prp_status(e: PrpError, shared: &Shared) -> Status {
    match e {
        PrpError::InvalidOffset => Status::generic(VPU_SC_INVALID_PRP_OFFSET),
        PrpError::Dma(f) => {
            shared.counters.dma_faults.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(card = %shared.name, iova = f.iova, len = f.len, reason = f.reason, "DMA fault");
            Status::generic(VPU_SC_DATA_TRANSFER_ERROR)
        }
    }
}

/// Writes a structure to the command's data pointer; the completion to post.
fn send<T: Pod>(shared: &Shared, ctrl: &Ctrl, sqe: &vpu_sqe, v: &T, len: usize) -> Done {
    let bytes = as_bytes(v);
    let len = len.min(bytes.len());
    match prp::write(
        &shared.iova,
        sqe.prp1,
        sqe.prp2,
        ctrl.page_size(),
        &bytes[..len],
    ) {
        Ok(()) => Done::ok(0),
        Err(e) => Done::err(prp_status(e, shared)),
    }
}

/// Executes an admin command; `None` when its completion comes later.
pub(super) fn execute(
    shared: &Shared,
    ctrl: &mut Ctrl,
    sqe: &vpu_sqe,
    origin: Origin,
) -> Option<Done> {
    let opcode = u32::from(sqe.opcode);
    tracing::trace!(card = %shared.name, opcode, cid = origin.cid, "admin command");
    match opcode {
        VPU_ADMIN_IDENTIFY => identify(shared, ctrl, sqe),
        VPU_ADMIN_SET_FEATURES | VPU_ADMIN_GET_FEATURES => features(ctrl, sqe, opcode),
        VPU_ADMIN_CREATE_CQ => create_cq(shared, ctrl, sqe),
        VPU_ADMIN_CREATE_SQ => create_sq(ctrl, sqe),
        VPU_ADMIN_DELETE_CQ => delete_cq(ctrl, sqe),
        VPU_ADMIN_DELETE_SQ => delete_sq(shared, ctrl, sqe),
        VPU_ADMIN_GET_LOG_PAGE => get_log(shared, ctrl, sqe),
        VPU_ADMIN_ABORT => abort(shared, ctrl, sqe),
        VPU_ADMIN_ASYNC_EVENT_REQUEST => {
            if let Some(event) = ctrl.events.pop_front() {
                return Some(Done::ok(event));
            }
            if ctrl.aers.len() >= AER_LIMIT {
                return Some(Done::err(Status::specific(SC_AER_LIMIT)));
            }
            ctrl.aers.push(origin);
            None
        }
        VPU_ADMIN_CREATE_SESSION => create_session(shared, ctrl, sqe),
        VPU_ADMIN_DESTROY_SESSION => destroy_session(shared, ctrl, sqe),
        VPU_ADMIN_RECONFIGURE_SESSION => reconfigure(ctrl, sqe),
        VPU_ADMIN_CREATE_DECODER => super::transcode::create_decoder(shared, ctrl, sqe),
        _ => Some(Done::err(Status::generic(VPU_SC_INVALID_OPCODE))),
    }
}

fn pad(dst: &mut [core::ffi::c_char], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = *s.as_bytes().get(i).unwrap_or(&b' ') as core::ffi::c_char;
    }
}

/// The union of the codecs the card's engines encode (Identify's legacy mask).
fn encode_codecs(cfg: &EmuConfig) -> u32 {
    let mut mask = 0;
    if cfg.av1_engines < cfg.engines {
        mask |= 1 << VPU_CODEC_H264;
    }
    if cfg.av1_engines > 0 {
        mask |= 1 << VPU_CODEC_AV1;
    }
    mask
}

fn identify(shared: &Shared, ctrl: &Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    if sqe.cdw10 & 0xff != VPU_IDENTIFY_CNS_CONTROLLER {
        return invalid_field();
    }
    let cfg = &shared.config;
    let mut id = vpu_identify_controller {
        vid: VPU_PCI_VENDOR_ID as u16,
        ssvid: VPU_PCI_VENDOR_ID as u16,
        mdts: MDTS,
        cntlid: 1,
        ver: VPU_NVME_VERSION_1_4,
        sqes: ((VPU_SQES_LOG2 << 4) | VPU_SQES_LOG2) as u8,
        cqes: ((VPU_CQES_LOG2 << 4) | VPU_CQES_LOG2) as u8,
        maxcmd: 0,
        nn: 0,
        ..Default::default()
    };
    pad(&mut id.sn, &cfg.serial);
    pad(&mut id.mn, &cfg.model);
    pad(&mut id.fr, &cfg.firmware);
    id.vpu = vpu_identify_vpu {
        magic: IDENTIFY_MAGIC,
        version: VPU_INTERFACE_VERSION as u16,
        encode_engines: cfg.engines,
        decode_engines: cfg.decode_engines,
        scale_engines: cfg.scale_engines,
        capacity_per_engine: cfg.capacity_per_engine,
        codecs: encode_codecs(cfg),
        max_width: cfg.max_width,
        max_height: cfg.max_height,
        max_sessions_per_engine: cfg.max_sessions_per_engine,
        max_frames_in_flight: cfg.max_frames_in_flight,
        pixel_formats: (1 << VPU_PIXFMT_I420) | (1 << VPU_PIXFMT_NV12),
        pixel_rate_per_engine: cfg.pixel_rate_per_engine,
        ..Default::default()
    };
    let caps = cfg.engine_caps();
    // `validate` keeps the table within VPU_MAX_ENGINE_CAPS entries.
    id.vpu.engine_caps_count = caps.len().min(id.vpu.engine_caps.len()) as u8;
    for (slot, c) in id.vpu.engine_caps.iter_mut().zip(&caps) {
        *slot = c.to_raw();
    }
    Some(send(shared, ctrl, sqe, &id, VPU_IDENTIFY_SIZE as usize))
}

fn features(ctrl: &mut Ctrl, sqe: &vpu_sqe, opcode: u32) -> Option<Done> {
    if sqe.cdw10 & 0xff != VPU_FEATURE_NUMBER_OF_QUEUES {
        return invalid_field();
    }
    let max = (QUEUE_PAIRS - 2) as u16; // 0's based count of I/O queues
    if opcode == VPU_ADMIN_GET_FEATURES {
        let (sq, cq) = ctrl.queues_granted.unwrap_or((max, max));
        return Some(Done::ok(
            u32::from(sq) | (u32::from(cq) << VPU_NUM_QUEUES_NCQR_SHIFT),
        ));
    }
    let nsqr = (sqe.cdw11 & 0xffff) as u16;
    let ncqr = (sqe.cdw11 >> VPU_NUM_QUEUES_NCQR_SHIFT) as u16;
    if nsqr == 0xffff || ncqr == 0xffff {
        return invalid_field();
    }
    let granted = (nsqr.min(max), ncqr.min(max));
    ctrl.queues_granted = Some(granted);
    Some(Done::ok(
        u32::from(granted.0) | (u32::from(granted.1) << VPU_NUM_QUEUES_NCQR_SHIFT),
    ))
}

/// Checks a queue id and size of Create I/O CQ/SQ.
fn queue_args(ctrl: &Ctrl, sqe: &vpu_sqe, granted: u16) -> Result<(usize, u16), Status> {
    let qid = (sqe.cdw10 & 0xffff) as usize;
    let qsize = (sqe.cdw10 >> VPU_QUEUE_QSIZE_SHIFT) as u16;
    if qid == 0 || qid >= QUEUE_PAIRS || qid > usize::from(granted) + 1 {
        return Err(Status::specific(VPU_SC_INVALID_QID));
    }
    if qsize == 0 || qsize > MQES {
        return Err(Status::specific(VPU_SC_INVALID_QUEUE_SIZE));
    }
    if sqe.cdw11 & VPU_QUEUE_PC == 0 {
        return Err(Status::generic(VPU_SC_INVALID_FIELD));
    }
    if sqe.prp1 == 0 || sqe.prp1 % ctrl.page_size() as u64 != 0 {
        return Err(Status::generic(VPU_SC_INVALID_PRP_OFFSET));
    }
    Ok((qid, qsize + 1))
}

fn create_cq(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    if (ctrl.cc >> VPU_CC_IOCQES_SHIFT) & 0xf != VPU_CQES_LOG2 {
        return invalid_field();
    }
    let granted = ctrl
        .queues_granted
        .map_or((QUEUE_PAIRS - 2) as u16, |g| g.1);
    let (qid, size) = match queue_args(ctrl, sqe, granted) {
        Ok(a) => a,
        Err(s) => return Some(Done::err(s)),
    };
    if ctrl.cqs[qid].is_some() {
        return Some(Done::err(Status::specific(VPU_SC_INVALID_QID)));
    }
    let ien = sqe.cdw11 & VPU_CQ_IEN != 0;
    let iv = (sqe.cdw11 >> VPU_CQ_IV_SHIFT) as u16;
    if ien && usize::from(iv) >= shared.enabled_vectors().min(64) {
        return Some(Done::err(Status::specific(VPU_SC_INVALID_INTERRUPT_VECTOR)));
    }
    ctrl.cqs[qid] = Some(CompQueue::new(sqe.prp1, size, iv, ien));
    tracing::debug!(card = %shared.name, queue = qid, size, vector = iv, interrupts = ien, "I/O completion queue created");
    Some(Done::ok(0))
}

fn create_sq(ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    if (ctrl.cc >> VPU_CC_IOSQES_SHIFT) & 0xf != VPU_SQES_LOG2 {
        return invalid_field();
    }
    let granted = ctrl
        .queues_granted
        .map_or((QUEUE_PAIRS - 2) as u16, |g| g.0);
    let (qid, size) = match queue_args(ctrl, sqe, granted) {
        Ok(a) => a,
        Err(s) => return Some(Done::err(s)),
    };
    if ctrl.sqs[qid].is_some() {
        return Some(Done::err(Status::specific(VPU_SC_INVALID_QID)));
    }
    let cqid = (sqe.cdw11 >> VPU_SQ_CQID_SHIFT) as u16;
    let cq_ok =
        cqid != 0 && usize::from(cqid) < QUEUE_PAIRS && ctrl.cqs[usize::from(cqid)].is_some();
    if !cq_ok {
        return Some(Done::err(Status::specific(VPU_SC_INVALID_CQ)));
    }
    if let Some(cq) = ctrl.cqs[usize::from(cqid)].as_mut() {
        cq.users += 1;
    }
    let serial = ctrl.serial();
    ctrl.sqs[qid] = Some(SubQueue {
        base: sqe.prp1,
        size,
        head: 0,
        tail: 0,
        cqid,
        serial,
    });
    Some(Done::ok(0))
}

fn delete_cq(ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let qid = (sqe.cdw10 & 0xffff) as usize;
    if qid == 0 || qid >= QUEUE_PAIRS {
        return Some(Done::err(Status::specific(VPU_SC_INVALID_QID)));
    }
    match &ctrl.cqs[qid] {
        None => Some(Done::err(Status::specific(VPU_SC_INVALID_QID))),
        Some(cq) if cq.users > 0 => {
            Some(Done::err(Status::specific(VPU_SC_INVALID_QUEUE_DELETION)))
        }
        Some(_) => {
            ctrl.cqs[qid] = None;
            Some(Done::ok(0))
        }
    }
}

fn delete_sq(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let qid = (sqe.cdw10 & 0xffff) as usize;
    let Some(sq) = ctrl
        .sqs
        .get(qid)
        .filter(|_| qid != 0)
        .and_then(|q| q.as_ref())
    else {
        return Some(Done::err(Status::specific(VPU_SC_INVALID_QID)));
    };
    let serial = sq.serial;
    // Commands of the queue not yet started complete "aborted, SQ deleted" first.
    for e in &shared.engines {
        for job in e.take(|j| j.origin.sqid as usize == qid && j.origin.serial == serial) {
            queues::post(
                shared,
                ctrl,
                job.origin,
                Done::err(Status::generic(VPU_SC_ABORT_SQ_DELETED)),
            );
        }
    }
    if let Some(sq) = ctrl.sqs[qid].take() {
        if let Some(cq) = ctrl.cqs[usize::from(sq.cqid)].as_mut() {
            cq.users = cq.users.saturating_sub(1);
        }
    }
    Some(Done::ok(0))
}

fn get_log(shared: &Shared, ctrl: &Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let lid = sqe.cdw10 & 0xff;
    let numd = ((sqe.cdw10 >> VPU_LOG_NUMDL_SHIFT) | ((sqe.cdw11 & 0xffff) << 16)) as usize + 1;
    let len = numd * 4;
    // Log page offsets (CDW12-13) are not supported (Identify LPA clear).
    if len > super::params::MAX_TRANSFER || sqe.cdw12 != 0 || sqe.cdw13 != 0 {
        return invalid_field();
    }
    let lsi = sqe.cdw11 >> VPU_LOG_LSI_SHIFT;
    match lid {
        VPU_LOG_ENGINE => {
            let mut log = vpu_engine_log {
                engines: u32::from(shared.config.engines),
                ..Default::default()
            };
            for (slot, e) in log.engine.iter_mut().zip(&shared.engines) {
                let c = &e.counters;
                *slot = vpu_engine_log_entry {
                    load: e.load(shared.config.capacity_per_engine),
                    sessions: c.sessions.load(Ordering::Relaxed),
                    frames: c.frames.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    busy_ns: c.busy_ns.load(Ordering::Relaxed),
                    temperature: 0,
                    state: e.state(),
                    ..Default::default()
                };
            }
            Some(send_log(shared, ctrl, sqe, &log, len))
        }
        VPU_LOG_SESSION => {
            let Some(s) = ctrl.sessions.get(&lsi) else {
                return Some(Done::err(Status::vendor(VPU_SC_SESSION_NOT_FOUND)));
            };
            let c = &s.counters;
            let log = vpu_session_log {
                session_id: s.id,
                engine: u16::from(s.engine),
                frames_in: c.frames_in.load(Ordering::Relaxed),
                frames_out: c.frames_out.load(Ordering::Relaxed),
                bytes_out: c.bytes_out.load(Ordering::Relaxed),
                keyframes: c.keyframes.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                ..Default::default()
            };
            Some(send_log(shared, ctrl, sqe, &log, len))
        }
        VPU_LOG_ERROR => {
            let entry = ctrl.last_error.map(|e| e.to_bytes()).unwrap_or([0; 64]);
            Some(send_bytes(shared, ctrl, sqe, &entry, len))
        }
        _ => Some(Done::err(Status::specific(VPU_SC_INVALID_LOG_PAGE))),
    }
}

/// Transfers `len` bytes of a log page: the page, then zeros when more was asked for.
fn send_log<T: Pod>(shared: &Shared, ctrl: &Ctrl, sqe: &vpu_sqe, log: &T, len: usize) -> Done {
    send_bytes(shared, ctrl, sqe, as_bytes(log), len)
}

fn send_bytes(shared: &Shared, ctrl: &Ctrl, sqe: &vpu_sqe, bytes: &[u8], len: usize) -> Done {
    if len <= bytes.len() {
        return match prp::write(
            &shared.iova,
            sqe.prp1,
            sqe.prp2,
            ctrl.page_size(),
            &bytes[..len],
        ) {
            Ok(()) => Done::ok(0),
            Err(e) => Done::err(prp_status(e, shared)),
        };
    }
    let mut buf = bytes.to_vec();
    buf.resize(len, 0);
    match prp::write(&shared.iova, sqe.prp1, sqe.prp2, ctrl.page_size(), &buf) {
        Ok(()) => Done::ok(0),
        Err(e) => Done::err(prp_status(e, shared)),
    }
}

fn abort(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let sqid = (sqe.cdw10 & 0xffff) as u16;
    let cid = (sqe.cdw10 >> VPU_ABORT_CID_SHIFT) as u16;
    let mut aborted = false;
    if sqid == 0 {
        if let Some(i) = ctrl.aers.iter().position(|o| o.cid == cid) {
            let origin = ctrl.aers.remove(i);
            aborted = true;
            queues::post(
                shared,
                ctrl,
                origin,
                Done::err(Status::generic(VPU_SC_ABORT_REQUESTED)),
            );
        }
    } else {
        for e in &shared.engines {
            for job in e.take(|j| j.origin.sqid == sqid && j.origin.cid == cid) {
                aborted = true;
                if let JobKind::Encode(_) = job.kind {
                    job.session.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                queues::post(
                    shared,
                    ctrl,
                    job.origin,
                    Done::err(Status::generic(VPU_SC_ABORT_REQUESTED)),
                );
            }
        }
        let sessions: Vec<_> = ctrl.sessions.values().cloned().collect();
        for session in sessions {
            for origin in av1_jobs::abort_held(&session, |o| o.sqid == sqid && o.cid == cid) {
                aborted = true;
                session.counters.errors.fetch_add(1, Ordering::Relaxed);
                queues::post(
                    shared,
                    ctrl,
                    origin,
                    Done::err(Status::generic(VPU_SC_ABORT_REQUESTED)),
                );
            }
        }
    }
    tracing::info!(card = %shared.name, queue = sqid, cid, aborted, "abort");
    Some(Done::ok(if aborted { 0 } else { VPU_ABORT_NOT_ABORTED }))
}

fn create_session(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let mut raw = [0u8; std::mem::size_of::<vpu_session_params>()];
    if let Err(e) = prp::read(&shared.iova, sqe.prp1, sqe.prp2, ctrl.page_size(), &mut raw) {
        return Some(Done::err(prp_status(e, shared)));
    }
    let p: vpu_session_params = from_bytes(&raw);
    let params = match SessionParams::validate(&p, &shared.config) {
        Ok(v) => v,
        Err(s) => {
            tracing::info!(card = %shared.name, status = s.0, "create session rejected");
            return Some(Done::err(s));
        }
    };
    let engines = usize::from(shared.config.engines);
    let hint = usize::from(p.engine_hint);
    if p.engine_hint != VPU_ENGINE_ANY as u16 && hint >= engines {
        return Some(Done::err(Status::vendor(VPU_SC_INVALID_PARAMS)));
    }
    // Demand and sessions per engine.
    let mut demand = vec![(0u64, 0u16); engines];
    for s in ctrl.sessions.values() {
        let d = &mut demand[usize::from(s.engine)];
        d.0 += s.params.pixel_rate();
        d.1 += 1;
    }
    // Only engines of the session's codec, with room for one more session.
    let room = |e: usize| {
        shared.config.engine_codec(e) == params.codec
            && demand[e].1 < shared.config.max_sessions_per_engine
    };
    let engine = if hint < engines && room(hint) {
        Some(hint)
    } else {
        (0..engines).filter(|&e| room(e)).min_by_key(|&e| demand[e])
    };
    let Some(engine) = engine else {
        return Some(Done::err(Status::vendor(VPU_SC_NO_CAPACITY)));
    };
    // Ids start at 1 and are not reused while a session holds them.
    let mut id = ctrl.next_session;
    while id == 0 || ctrl.sessions.contains_key(&id) {
        id = id.wrapping_add(1);
    }
    let session = match Session::new(id, engine as u8, params) {
        Ok(s) => Arc::new(s),
        Err(s) => return Some(Done::err(s)),
    };
    ctrl.next_session = id.wrapping_add(1);
    ctrl.sessions.insert(id, session);
    shared.engines[engine]
        .counters
        .sessions
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(card = %shared.name, session = id, engine, "session created");
    Some(Done::ok(id))
}

fn destroy_session(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let id = sqe.cdw10;
    let Some(session) = ctrl.sessions.remove(&id) else {
        return super::transcode::destroy_decoder(shared, ctrl, id)
            .or(Some(Done::err(Status::vendor(VPU_SC_SESSION_NOT_FOUND))));
    };
    session.destroyed.store(true, Ordering::Release);
    let engine = &shared.engines[usize::from(session.engine)];
    engine.counters.sessions.fetch_sub(1, Ordering::Relaxed);
    for origin in av1_jobs::take_all(&session) {
        queues::post(
            shared,
            ctrl,
            origin,
            Done::err(Status::vendor(VPU_SC_SESSION_ABORTED)),
        );
    }
    for job in engine.take(|j| Arc::ptr_eq(&j.session, &session)) {
        queues::post(
            shared,
            ctrl,
            job.origin,
            Done::err(Status::vendor(VPU_SC_SESSION_ABORTED)),
        );
    }
    tracing::debug!(card = %shared.name, session = id, "session destroyed");
    Some(Done::ok(0))
}

fn reconfigure(ctrl: &mut Ctrl, sqe: &vpu_sqe) -> Option<Done> {
    let Some(session) = ctrl.sessions.get(&{ sqe.cdw10 }) else {
        return Some(Done::err(Status::vendor(VPU_SC_SESSION_NOT_FOUND)));
    };
    let flags = sqe.cdw11;
    let known = VPU_RECONFIG_FORCE_IDR | VPU_RECONFIG_BITRATE | VPU_RECONFIG_FRAMERATE;
    if flags & !known != 0 {
        return invalid_field();
    }
    let bitrate = if flags & VPU_RECONFIG_BITRATE != 0 {
        if u32::from(session.params.rate_control) == VPU_RC_CQP
            || sqe.cdw12 < 1000
            || sqe.cdw12 > i32::MAX as u32
        {
            return Some(Done::err(Status::vendor(VPU_SC_INVALID_PARAMS)));
        }
        Some(sqe.cdw12)
    } else {
        None
    };
    let fps = if flags & VPU_RECONFIG_FRAMERATE != 0 {
        if sqe.cdw13 == 0 || sqe.cdw14 == 0 || sqe.cdw13 / sqe.cdw14 > 240 {
            return Some(Done::err(Status::vendor(VPU_SC_INVALID_PARAMS)));
        }
        Some((sqe.cdw13, sqe.cdw14))
    } else {
        None
    };
    session.reconfigure(flags & VPU_RECONFIG_FORCE_IDR != 0, bitrate, fps);
    Some(Done::ok(0))
}
