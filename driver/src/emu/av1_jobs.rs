//! Encode Frame and Flush on an AV1 engine: commands held until their frame's temporal
//! unit comes out of the encoder (`av1`), then completed in order with their own frame.
//!
//! An Encode Frame joins the session's held commands before its frame goes into the
//! encoder; every temporal unit that comes out completes the oldest held command. A
//! unit larger than its command's output buffer completes the command with
//! OUTPUT_TOO_SMALL and is kept for the retry (the same frame, recognised by its
//! timestamp), which then completes at once without coding the frame again; frames
//! submitted behind it meanwhile are coded as usual (up to [`KEPT_MAX`] units are kept). When the
//! encoder fails, every held command completes with ENGINE_FAULT: their frames were in
//! the failed sequence, and the host resubmits them (after a keyframe).
//!
//! Lock order: a session's `held` is never locked while the controller state is wanted;
//! Destroy Session and Abort lock it under the controller state.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use vpu_ffi::*;

use super::av1::TemporalUnit;
use super::controller::Shared;
use super::engine::{EncodeJob, Engine};
use super::lock;
use super::prp::HostSpan;
use super::queues::{Done, Origin, Status};
use super::session::{self, Encoded, Session};

/// An Encode Frame waiting for its temporal unit.
pub(super) struct HeldCmd {
    pub origin: Origin,
    output: HostSpan,
    pts: u64,
    /// When its frame went into the encoder.
    since: Instant,
    /// Completed ABORT_REQUESTED already; its unit, when it comes, is dropped.
    aborted: bool,
}

/// How many temporal units a session keeps for retries at once; the oldest is given up
/// beyond that.
const KEPT_MAX: usize = 8;

/// The held commands of a session, oldest first, and the units kept for retries, by pts.
#[derive(Default)]
pub(super) struct Held {
    pub cmds: VecDeque<HeldCmd>,
    kept: VecDeque<(u64, TemporalUnit)>,
}

impl Held {
    /// When the oldest held frame went in.
    pub fn oldest(&self) -> Option<Instant> {
        self.cmds.front().map(|c| c.since)
    }
}

/// Completions to post once the engine's time for the job has passed.
pub(super) type Posts = Vec<(Origin, Done)>;

/// Writes `unit` to `cmd`'s output buffer (while the controller may write host memory)
/// and returns its completion; counts it.
fn finish(
    shared: &Shared,
    engine: &Engine,
    session: &Session,
    cmd: HeldCmd,
    unit: TemporalUnit,
    posts: &mut Posts,
) {
    let result = if unit.data.len() > cmd.output.len {
        tracing::debug!(
            session = session.id,
            bytes = unit.data.len(),
            buffer = cmd.output.len,
            "temporal unit larger than the output buffer; kept for the retry"
        );
        let mut held = lock(&session.held);
        if held.kept.len() >= KEPT_MAX {
            held.kept.pop_front();
        }
        held.kept.push_back((cmd.pts, unit));
        Err(Status::vendor(VPU_SC_OUTPUT_TOO_SMALL))
    } else {
        write(shared, &cmd, &unit)
    };
    post_result(engine, session, cmd.origin, result, cmd.output.len, posts);
}

fn write(shared: &Shared, cmd: &HeldCmd, unit: &TemporalUnit) -> Result<Encoded, Status> {
    let ctrl = lock(&shared.ctrl);
    let live = ctrl.generation == cmd.origin.generation
        && shared.bus_master()
        && !shared.removed.load(Ordering::Acquire);
    if !live || !cmd.output.region.write(cmd.output.offset, &unit.data) {
        return Err(Status::generic(VPU_SC_DATA_TRANSFER_ERROR));
    }
    drop(ctrl);
    Ok(Encoded {
        bytes: unit.data.len() as u32,
        frame_type: unit.frame_type,
        keyframe: unit.keyframe,
    })
}

fn post_result(
    engine: &Engine,
    session: &Session,
    origin: Origin,
    result: Result<Encoded, Status>,
    out_len: usize,
    posts: &mut Posts,
) {
    session::count(session, &result);
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
                out_len: Some(out_len as u32),
            }
        }
        Err(status) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            Done::err(status)
        }
    };
    posts.push((origin, done));
}

/// Completes held commands with `units`, in order; on `failed`, every command still
/// held completes with that status.
fn settle(
    shared: &Shared,
    engine: &Engine,
    session: &Session,
    units: Vec<TemporalUnit>,
    failed: Option<Status>,
    posts: &mut Posts,
) {
    for unit in units {
        let Some(cmd) = lock(&session.held).cmds.pop_front() else {
            // Destroyed or reset meanwhile: nobody waits for this unit.
            break;
        };
        if cmd.aborted {
            continue;
        }
        finish(shared, engine, session, cmd, unit, posts);
    }
    if let Some(status) = failed {
        let cmds: Vec<HeldCmd> = lock(&session.held).cmds.drain(..).collect();
        for cmd in cmds.into_iter().filter(|c| !c.aborted) {
            let len = cmd.output.len;
            post_result(engine, session, cmd.origin, Err(status), len, posts);
        }
    }
}

/// Encode Frame on an AV1 session.
pub(super) fn encode(
    shared: &Shared,
    engine: &Engine,
    session: &Arc<Session>,
    origin: Origin,
    job: &EncodeJob,
) -> Posts {
    let mut posts = Vec::new();
    {
        let mut held = lock(&session.held);
        let retry = held.kept.iter().position(|(pts, _)| *pts == job.pts);
        if let Some((pts, unit)) = retry.and_then(|i| held.kept.remove(i)) {
            drop(held);
            let cmd = HeldCmd {
                origin,
                output: job.output.clone(),
                pts,
                since: Instant::now(),
                aborted: false,
            };
            finish(shared, engine, session, cmd, unit, &mut posts);
            return posts;
        }
        held.cmds.push_back(HeldCmd {
            origin,
            output: job.output.clone(),
            pts: job.pts,
            since: Instant::now(),
            aborted: false,
        });
    }
    let (mut units, r) = session.encode_av1(&job.input, job.force_idr);
    let r = match r {
        Ok(()) if job.end_of_stream => {
            let (rest, r) = session.drain_av1();
            units.extend(rest);
            r
        }
        r => r,
    };
    settle(shared, engine, session, units, r.err(), &mut posts);
    posts
}

/// Drains an AV1 session (Flush, or idle): every held command completes.
pub(super) fn drain(shared: &Shared, engine: &Engine, session: &Session) -> Posts {
    let mut posts = Vec::new();
    let (units, r) = session.drain_av1();
    settle(shared, engine, session, units, r.err(), &mut posts);
    // A drained encoder owes nothing more: any command still held lost its frame.
    settle(
        shared,
        engine,
        session,
        Vec::new(),
        Some(Status::vendor(VPU_SC_ENGINE_FAULT)),
        &mut posts,
    );
    posts
}

/// Marks the held commands `pred` selects as aborted (Abort) and returns them: their
/// places stay, so that later units still meet their own commands.
pub(super) fn abort_held(session: &Session, mut pred: impl FnMut(&Origin) -> bool) -> Vec<Origin> {
    let mut held = lock(&session.held);
    let mut taken = Vec::new();
    for c in held.cmds.iter_mut().filter(|c| !c.aborted) {
        if pred(&c.origin) {
            c.aborted = true;
            taken.push(c.origin);
        }
    }
    taken
}

/// Takes every held command of a destroyed session.
pub(super) fn take_all(session: &Session) -> Vec<Origin> {
    let mut held = lock(&session.held);
    held.kept.clear();
    held.cmds
        .drain(..)
        .filter(|c| !c.aborted)
        .map(|c| c.origin)
        .collect()
}
