//! I/O commands: Encode Frame, Flush Session, Nop. Encode and flush are queued on the
//! session's engine; everything else completes at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vpu_ffi::*;

use super::controller::{Ctrl, Shared};
use super::dma::Access;
use super::engine::{EncodeJob, Job, JobKind};
use super::prp::{self, HostSpan, PrpError};
use super::queues::{Done, Origin, Status};
use super::session::EncodeInput;
use super::transcode;

/// Executes an I/O command; `None` when an engine completes it later.
pub(super) fn execute(
    shared: &Shared,
    ctrl: &mut Ctrl,
    sqe: &vpu_sqe,
    origin: Origin,
) -> Option<Done> {
    match u32::from(sqe.opcode) {
        VPU_IO_NOP => Some(Done::ok(0)),
        VPU_IO_ENCODE_FRAME => encode(shared, ctrl, sqe, origin),
        VPU_IO_FLUSH_SESSION => {
            let Some(session) = ctrl.sessions.get(&{ sqe.cdw10 }) else {
                return Some(Done::err(Status::vendor(VPU_SC_SESSION_NOT_FOUND)));
            };
            let engine = &shared.engines[usize::from(session.engine)];
            engine.submit(Job {
                session: Arc::clone(session),
                origin,
                kind: JobKind::Flush,
            });
            None
        }
        VPU_IO_DECODE_FRAME => transcode::decode(shared, ctrl, sqe, origin),
        VPU_IO_SCALE_FRAME => transcode::scale(shared, sqe, origin),
        VPU_IO_RELEASE_FRAME => transcode::release(shared, sqe),
        _ => Some(Done::err(Status::generic(VPU_SC_INVALID_OPCODE))),
    }
}

fn dma_error(shared: &Shared, origin: Origin, iova: u64, len: usize, reason: &str) -> Option<Done> {
    shared.counters.dma_faults.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(card = %shared.name, queue = origin.sqid, cid = origin.cid, iova, len, reason,
        "DMA fault");
    Some(Done::err(Status::generic(VPU_SC_DATA_TRANSFER_ERROR)))
}

fn encode(shared: &Shared, ctrl: &mut Ctrl, sqe: &vpu_sqe, origin: Origin) -> Option<Done> {
    let Some(session) = ctrl.sessions.get(&{ sqe.cdw10 }) else {
        return Some(Done::err(Status::vendor(VPU_SC_SESSION_NOT_FOUND)));
    };
    let flags = sqe.cdw11;
    let known = VPU_ENCODE_FORCE_IDR | VPU_ENCODE_END_OF_STREAM | VPU_ENCODE_CARD_FRAME;
    if flags & !known != 0 {
        return Some(Done::err(Status::generic(VPU_SC_INVALID_FIELD)));
    }
    let out_len = sqe.cdw14 as usize;
    let in_len = sqe.cdw15 as usize;
    let needed = session.params.frame_len();
    let fail = |status| {
        session.counters.errors.fetch_add(1, Ordering::Relaxed);
        Some(Done::err(status))
    };
    let card_frame = flags & VPU_ENCODE_CARD_FRAME != 0;
    if !card_frame && in_len < needed {
        return fail(Status::vendor(VPU_SC_INPUT_TOO_SMALL));
    }
    if out_len == 0 {
        return fail(Status::vendor(VPU_SC_OUTPUT_TOO_SMALL));
    }
    let page = ctrl.page_size();
    let p = &session.params;
    // Only the bytes the session's layout needs are transferred.
    let input = match card_frame {
        true => match transcode::encode_source(shared, sqe.cdw15, p.width, p.height) {
            Ok(f) => Ok(EncodeInput::Card(f)),
            Err(s) => return fail(s),
        },
        false => prp::resolve(&shared.iova, sqe.prp1, sqe.prp2, needed, page, Access::Read)
            .map(EncodeInput::Host),
    };
    let input = match input {
        Ok(s) => s,
        Err(PrpError::InvalidOffset) => return fail(Status::generic(VPU_SC_INVALID_PRP_OFFSET)),
        Err(PrpError::Dma(f)) => {
            session.counters.errors.fetch_add(1, Ordering::Relaxed);
            return dma_error(shared, origin, f.iova, f.len, f.reason);
        }
    };
    let mptr = sqe.mptr;
    let output = match shared.iova.resolve(mptr, out_len, Access::Write) {
        Ok(r) => HostSpan {
            region: r.region,
            offset: r.offset,
            len: out_len,
        },
        Err(f) => {
            session.counters.errors.fetch_add(1, Ordering::Relaxed);
            return dma_error(shared, origin, f.iova, f.len, f.reason);
        }
    };
    session.counters.frames_in.fetch_add(1, Ordering::Relaxed);
    let engine = &shared.engines[usize::from(session.engine)];
    engine.submit(Job {
        session: Arc::clone(session),
        origin,
        kind: JobKind::Encode(EncodeJob {
            input,
            output,
            force_idr: flags & VPU_ENCODE_FORCE_IDR != 0,
            end_of_stream: flags & VPU_ENCODE_END_OF_STREAM != 0,
            pts: u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
        }),
    });
    None
}
