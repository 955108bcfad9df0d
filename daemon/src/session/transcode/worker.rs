//! The task that serves one transcode session's data channel: access units in (by
//! reference to the client's memory, up to the window), one step at a time through the
//! card (decode, then every rendition scaled and encoded), `FRAME_DONE` once the card has
//! read an access unit, every rendition's packet of each picture, and the end of the
//! session with every resource released.
//!
//! Pictures come out of the decoder in display order; the pts of each is the smallest pts
//! of the access units decoded whose picture has not come out yet. Keyframes are forced on
//! the same pictures for every rendition: every `gop` pictures, on the first, after a
//! `RequestKeyframe`, and on the first picture after the ladder moved.
//!
//! For a move, the access units since the last IDR are kept (copied): the new card's
//! decoder starts from there, the pictures already sent are dropped, and the rest go on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;
use vpu_driver::card::{CardError, VendorStatus};

use super::ladder::{self, CardLadder, Outcome, Step, StepError, StepPlan, UnitInput};
use super::request::TranscodeRequest;
use crate::channel::proto::{
    packet_chunks, ClientRecord, DaemonRecord, ErrorCode, FrameRef, Hello, WirePacket,
    MAX_RECORD_LEN,
};
use crate::channel::socket::SeqPacket;
use crate::metrics::Metrics;
use crate::scheduler::CardState;
use crate::service::changes::Change;
use crate::service::state::{Control, Daemon, SessionEntry};
use crate::session::buffers::Buffers;
use crate::session::worker::{wire_frame_type, Ending};

/// How often a session's counters are published as property changes.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// How long the final `ERROR` record may wait for a client that does not read.
const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of access units kept for a move; a stream with longer stretches between IDRs
/// cannot move (it ends with `card-failed` when its card fails).
const MAX_HISTORY: usize = 64 << 20;

/// An access unit since the last IDR.
#[derive(Debug)]
pub(super) struct Kept {
    pub data: Arc<[u8]>,
    pub pts: u64,
    /// The buffer whose `FRAME_DONE` is still owed, if it is.
    pub owed: Option<u32>,
}

/// What the main loop does next after a step.
pub(super) enum Flow {
    End(Ending),
    Migrate(String),
}

impl From<Ending> for Flow {
    fn from(e: Ending) -> Flow {
        Flow::End(e)
    }
}

/// The step running now and what it was started with.
pub(super) struct Running {
    step: Step,
    /// The access unit's pts; `None` for a flush.
    unit: Option<u64>,
    /// The buffer whose `FRAME_DONE` the step's end owes.
    owed: Option<u32>,
    /// The step's access unit among the kept ones.
    kept: Option<usize>,
}

/// The state of one transcode session's task.
#[derive(Debug)]
pub(super) struct TranscodeWorker {
    pub(super) daemon: Arc<Daemon>,
    pub(super) entry: Arc<SessionEntry>,
    pub(super) sock: SeqPacket,
    pub(super) ladder: CardLadder,
    pub(super) req: TranscodeRequest,
    pub(super) hello: Hello,
    pub(super) control_rx: mpsc::UnboundedReceiver<Control>,
    pub(super) pending_migrate: Option<String>,
    /// Access units received and not started.
    pub(super) queue: VecDeque<FrameRef>,
    /// Kept access units to decode again on a new card, before the queue.
    pub(super) replay: VecDeque<usize>,
    /// Access units since the last IDR (`None` once they outgrew [`MAX_HISTORY`]).
    pub(super) history: Option<Vec<Kept>>,
    history_bytes: usize,
    /// Pictures sent before the first kept access unit.
    pub(super) pictures_at_history: u64,
    /// Pts of access units decoded whose picture has not come out, with multiplicity.
    pub(super) pending: BTreeMap<u64, u32>,
    /// Pictures sent.
    pub(super) pictures: u64,
    /// Pictures to drop after a move (sent before it).
    pub(super) skip: u64,
    /// Force a keyframe on every rendition at the next picture.
    pub(super) force_next: bool,
    /// Access units whose `FRAME_DONE` is owed.
    owed: usize,
    eos: bool,
    /// The decoder was flushed at the end of the stream.
    flushed: bool,
}

impl TranscodeWorker {
    pub(super) fn new(
        daemon: Arc<Daemon>,
        entry: Arc<SessionEntry>,
        sock: SeqPacket,
        ladder: CardLadder,
        req: TranscodeRequest,
        hello: Hello,
        control_rx: mpsc::UnboundedReceiver<Control>,
    ) -> TranscodeWorker {
        TranscodeWorker {
            daemon,
            entry,
            sock,
            ladder,
            req,
            hello,
            control_rx,
            pending_migrate: None,
            queue: VecDeque::new(),
            replay: VecDeque::new(),
            history: Some(Vec::new()),
            history_bytes: 0,
            pictures_at_history: 0,
            pending: BTreeMap::new(),
            pictures: 0,
            skip: 0,
            force_next: false,
            owed: 0,
            eos: false,
            flushed: false,
        }
    }

    /// Serves the channel until the session ends, then releases everything.
    pub(super) async fn serve(self) {
        let span = tracing::info_span!("transcode", session = self.entry.id, card = %self.ladder.card.name);
        async move {
            let mut me = self;
            let mut buffers = Buffers::default();
            let mut running = None;
            let ending = me.run(&mut buffers, &mut running).await;
            me.teardown(ending, buffers, running).await;
        }
        .instrument(span)
        .await
    }

    /// Sends a record unless a close request comes first (a migration request is kept
    /// for the main loop).
    pub(super) async fn send(&mut self, record: &DaemonRecord) -> Result<(), Ending> {
        let bytes = record.encode();
        loop {
            tokio::select! {
                r = self.sock.send(&bytes, None) => return r.map_err(|e| {
                    tracing::debug!(error = %e, "client stopped reading");
                    Ending::gone("the data channel was closed")
                }),
                c = self.control_rx.recv() => self.control(c)?,
            }
        }
    }

    /// Handles a control message: a close ends, a migration is kept for the main loop.
    fn control(&mut self, c: Option<Control>) -> Result<(), Ending> {
        match c {
            Some(Control::Migrate {
                card,
                epoch,
                reason,
            }) => {
                if self.entry.migrate_applies(card, epoch) {
                    self.pending_migrate = Some(reason);
                }
                Ok(())
            }
            Some(Control::Close(r)) => Err(Ending::from_request(Some(r))),
            None => Err(Ending::from_request(None)),
        }
    }

    fn violation(&self, msg: String) -> Ending {
        self.daemon.metrics.error("channel.protocol-violation");
        Ending::error(ErrorCode::ProtocolViolation, msg)
    }

    async fn run(&mut self, buffers: &mut Buffers, running: &mut Option<Running>) -> Ending {
        if let Err(end) = self.send(&DaemonRecord::Hello(self.hello)).await {
            return end;
        }
        let window = usize::from(self.hello.window);
        let mut buf = vec![0u8; MAX_RECORD_LEN];
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        let mut published = (0u64, 0u64);
        loop {
            if let Some(reason) = self.pending_migrate.take() {
                *running = None;
                if let Err(end) = self.migrate(&reason, buffers).await {
                    return end;
                }
            }
            if running.is_none() {
                match self.next_step(buffers) {
                    Ok(step) => *running = step,
                    Err(end) => return end,
                }
            }
            if running.is_none() && self.flushed {
                if let Some(end) = self.leftover_check() {
                    return end;
                }
                let c = &self.entry.counters;
                let ack = DaemonRecord::EndOfStreamAck {
                    frames_in: c.frames_in.load(Ordering::Relaxed),
                    frames_out: c.frames_out.load(Ordering::Relaxed),
                };
                return match self.send(&ack).await {
                    Ok(()) => Ending::normal("end of stream"),
                    Err(end) => end,
                };
            }
            tokio::select! {
                biased;
                c = self.control_rx.recv() => {
                    if let Err(end) = self.control(c) {
                        return end;
                    }
                }
                out = async {
                    match running.as_mut() {
                        Some(r) => (&mut r.step).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(done) = running.take() else { continue };
                    match self.complete(done, out).await {
                        Ok(()) => {}
                        Err(Flow::End(end)) => return end,
                        Err(Flow::Migrate(reason)) => self.pending_migrate = Some(reason),
                    }
                }
                received = self.sock.recv(&mut buf), if !self.eos => {
                    let received = match received {
                        Ok(r) => r,
                        Err(e) => {
                            self.daemon.metrics.error("channel.receive");
                            return Ending::error(ErrorCode::MalformedRecord, format!("{e}"));
                        }
                    };
                    if received.len == 0 {
                        return Ending::gone("the data channel was closed");
                    }
                    let record = match ClientRecord::decode(&buf[..received.len]) {
                        Ok(r) => r,
                        Err(e) => {
                            self.daemon.metrics.error("channel.malformed-record");
                            return Ending::error(ErrorCode::MalformedRecord, e.to_string());
                        }
                    };
                    if !matches!(record, ClientRecord::RegisterBuffer { .. }) && !received.fds.is_empty() {
                        return self.violation(
                            "only register-buffer records may carry file descriptors".into());
                    }
                    match record {
                        ClientRecord::RegisterBuffer { buffer_id, size } => {
                            if let Err(e) = buffers.register(&self.ladder.card.card, buffer_id, size, received.fds) {
                                let code = if e.is_protocol() { ErrorCode::ProtocolViolation } else { ErrorCode::Resource };
                                self.daemon.metrics.error(&format!("channel.{code}"));
                                return Ending::error(code, e.to_string());
                            }
                        }
                        ClientRecord::UnregisterBuffer { buffer_id } => {
                            if let Err(e) = buffers.unregister(buffer_id) {
                                return self.violation(e.to_string());
                            }
                            if let Err(end) = self.send(&DaemonRecord::BufferReleased { buffer_id }).await {
                                return end;
                            }
                        }
                        ClientRecord::AccessUnit(unit) => {
                            if self.owed >= window {
                                return self.violation(format!(
                                    "access unit pts {} beyond the window of {window} in flight; wait for a frame-done record",
                                    unit.pts));
                            }
                            if unit.length > self.hello.frame_size {
                                return self.violation(format!(
                                    "access unit pts {} of {} bytes; this session takes at most {}",
                                    unit.pts, unit.length, self.hello.frame_size));
                            }
                            // The range is checked now; the card reads it when its turn comes.
                            match buffers.acquire(unit.buffer_id, unit.offset, unit.length) {
                                Ok(_) => buffers.release(unit.buffer_id),
                                Err(msg) => return self.violation(msg),
                            }
                            self.owed += 1;
                            Metrics::add(&self.entry.counters.frames_in, 1);
                            Metrics::add(&self.daemon.metrics.frames_in, 1);
                            self.queue.push_back(unit);
                        }
                        ClientRecord::Frame(f) => {
                            return self.violation(format!(
                                "frame pts {} on a transcode session; send compressed access units (access-unit records)",
                                f.pts));
                        }
                        ClientRecord::EndOfStream => self.eos = true,
                    }
                }
                _ = tick.tick() => {
                    let c = &self.entry.counters;
                    let now = (c.frames_in.load(Ordering::Relaxed), c.frames_out.load(Ordering::Relaxed));
                    if now != published {
                        published = now;
                        self.daemon.changes.push(Change::SessionCounters {
                            session: Arc::clone(&self.entry),
                        });
                    }
                }
            }
        }
    }

    /// The smallest pts whose picture has not come out, if any.
    fn first_pending(&self) -> Option<u64> {
        self.pending.keys().next().copied()
    }

    fn add_pending(&mut self, pts: u64) {
        *self.pending.entry(pts).or_default() += 1;
    }

    fn take_pending(&mut self, pts: u64) {
        if let Some(n) = self.pending.get_mut(&pts) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&pts);
            }
        }
    }

    /// Which renditions get a keyframe on the next picture.
    fn keyframes(&mut self) -> Vec<bool> {
        let k = self.pictures;
        let forced = self.force_next || self.entry.force_keyframe.load(Ordering::Acquire);
        self.ladder
            .encoders
            .iter()
            .map(|e| forced || k == 0 || (e.gop != 0 && k % u64::from(e.gop) == 0))
            .collect()
    }

    fn plan(&mut self, input: UnitInput, unit_pts: u64) -> StepPlan {
        let picture_pts = match (&input, self.first_pending()) {
            (UnitInput::Flush, Some(p)) => p,
            (UnitInput::Flush, None) => u64::MAX,
            (_, Some(p)) => p.min(unit_pts),
            (_, None) => unit_pts,
        };
        StepPlan {
            card: Arc::clone(&self.ladder.card.card),
            decoder: self.ladder.decoder,
            encoders: self.ladder.encoders.clone(),
            input,
            unit_pts,
            picture_pts,
            force: self.keyframes(),
            skip: self.skip > 0,
        }
    }

    /// The next step, if there is work: a kept access unit to decode again, a queued one,
    /// or, at the end of the stream, a flush of the decoder.
    fn next_step(&mut self, buffers: &mut Buffers) -> Result<Option<Running>, Ending> {
        if let Some(i) = self.replay.pop_front() {
            let Some(kept) = self.history.as_ref().and_then(|h| h.get(i)) else {
                return Ok(None);
            };
            let (data, pts, owed) = (Arc::clone(&kept.data), kept.pts, kept.owed);
            let plan = self.plan(UnitInput::Copy(data), pts);
            return Ok(Some(Running {
                step: ladder::run(plan),
                unit: Some(pts),
                owed,
                kept: Some(i),
            }));
        }
        if let Some(unit) = self.queue.pop_front() {
            let dma = buffers
                .acquire(unit.buffer_id, unit.offset, unit.length)
                .map_err(|m| self.violation(m))?;
            // Released at once: the buffer stays registered (and mapped) while the step
            // holds its own reference.
            buffers.release(unit.buffer_id);
            let len = unit.length as usize;
            let offset = usize::try_from(unit.offset).unwrap_or(usize::MAX);
            let mut copy = vec![0u8; len];
            if !dma.region().read(offset, &mut copy) {
                return Err(self.violation(format!(
                    "access unit pts {} lies outside its buffer",
                    unit.pts
                )));
            }
            let kept = self.keep(copy, unit.pts, unit.buffer_id);
            let input = UnitInput::Dma {
                buffer: dma,
                offset,
                len,
            };
            let plan = self.plan(input, unit.pts);
            return Ok(Some(Running {
                step: ladder::run(plan),
                unit: Some(unit.pts),
                owed: Some(unit.buffer_id),
                kept,
            }));
        }
        if self.eos && !self.flushed {
            let plan = self.plan(UnitInput::Flush, 0);
            return Ok(Some(Running {
                step: ladder::run(plan),
                unit: None,
                owed: None,
                kept: None,
            }));
        }
        Ok(None)
    }

    /// Keeps an access unit for a move (an IDR starts the history afresh); its index
    /// among the kept ones.
    fn keep(&mut self, data: Vec<u8>, pts: u64, buffer_id: u32) -> Option<usize> {
        if ladder::has_idr(&data) {
            self.history = Some(Vec::new());
            self.history_bytes = 0;
            self.pictures_at_history = self.pictures;
        }
        let history = self.history.as_mut()?;
        self.history_bytes += data.len();
        if self.history_bytes > MAX_HISTORY {
            tracing::warn!(
                bytes = self.history_bytes,
                "no IDR for too long; the session could not move if its card failed"
            );
            self.history = None;
            return None;
        }
        history.push(Kept {
            data: data.into(),
            pts,
            owed: Some(buffer_id),
        });
        Some(history.len() - 1)
    }

    /// Whether this session's card is out of service.
    fn card_is_down(&self) -> bool {
        !matches!(
            self.daemon.card_state(self.ladder.card.index),
            CardState::Online | CardState::Draining
        )
    }

    fn card_error(&mut self, e: &CardError) -> Option<Flow> {
        if e.is_device_fault() || self.card_is_down() {
            self.daemon.metrics.error("card.device-fault");
            tracing::warn!(error = %e, "card fault while transcoding; moving the ladder");
            crate::service::health::card_fault(
                &self.daemon,
                self.ladder.card.index,
                &e.to_string(),
            );
            return Some(Flow::Migrate(format!(
                "card {} failed: {e}",
                self.ladder.card.name
            )));
        }
        None
    }

    /// Sends what a finished step produced.
    async fn complete(
        &mut self,
        done: Running,
        out: Result<Outcome, StepError>,
    ) -> Result<(), Flow> {
        let outcome = match out {
            Ok(o) => o,
            Err(StepError::Decode(e)) => {
                if let Some(flow) = self.card_error(&e) {
                    return Err(flow);
                }
                self.daemon.metrics.error("card.decode");
                let at = done
                    .unit
                    .map_or("at the end of the stream".to_string(), |p| {
                        format!("access unit pts {p}")
                    });
                let (code, what) = match e.vendor_status() {
                    Some(VendorStatus::NoFrameMemory) => {
                        (ErrorCode::Resource, "the card's frame memory is full")
                    }
                    Some(VendorStatus::SessionNotFound | VendorStatus::SessionAborted) => {
                        (ErrorCode::CardFailed, "the card lost the decoder")
                    }
                    _ => (ErrorCode::DecodeFailed, "the input could not be decoded"),
                };
                return Err(Flow::End(Ending::error(code, format!("{at}: {what}: {e}"))));
            }
            Err(StepError::Picture(e)) => {
                if let Some(flow) = self.card_error(&e) {
                    return Err(flow);
                }
                self.ladder.card.errors.fetch_add(1, Ordering::Relaxed);
                self.daemon.metrics.error("card.encode");
                self.daemon.changes.push(Change::CardErrors {
                    card: self.ladder.card.index,
                });
                let code = if e.vendor_status() == Some(VendorStatus::NoFrameMemory) {
                    ErrorCode::Resource
                } else {
                    ErrorCode::EncodeFailed
                };
                return Err(Flow::End(Ending::error(
                    code,
                    format!(
                        "picture pts {}: {e}",
                        self.first_pending().unwrap_or_default()
                    ),
                )));
            }
        };
        // The card has read the access unit: its slot is free again.
        if let Some(pts) = done.unit {
            self.add_pending(pts);
            if let Some(buffer_id) = done.owed {
                if let Some(k) = done
                    .kept
                    .and_then(|i| self.history.as_mut().and_then(|h| h.get_mut(i)))
                {
                    k.owed = None;
                }
                self.owed = self.owed.saturating_sub(1);
                self.send(&DaemonRecord::FrameDone { buffer_id, pts })
                    .await?;
            }
        }
        match outcome {
            Outcome::NoPicture => {
                if done.unit.is_none() {
                    // The decoder is empty: the flush is over.
                    self.flushed = true;
                }
            }
            Outcome::Skipped => {
                if let Some(p) = self.first_pending() {
                    self.take_pending(p);
                }
                self.skip = self.skip.saturating_sub(1);
            }
            Outcome::Encoded(packets) => {
                let Some(pts) = self.first_pending() else {
                    return Err(Flow::End(Ending::error(
                        ErrorCode::DecodeFailed,
                        "the decoder produced more pictures than access units went in",
                    )));
                };
                self.take_pending(pts);
                self.pictures += 1;
                self.force_next = false;
                self.entry.force_keyframe.store(false, Ordering::Release);
                for (r, packet) in packets.into_iter().enumerate() {
                    let c = &self.entry.counters;
                    Metrics::add(&c.frames_out, 1);
                    Metrics::add(&c.bytes_out, packet.data.len() as u64);
                    if packet.keyframe {
                        Metrics::add(&c.keyframes, 1);
                    }
                    Metrics::add(&self.daemon.metrics.packets_out, 1);
                    Metrics::add(&self.daemon.metrics.bytes_out, packet.data.len() as u64);
                    let wire = WirePacket {
                        pts,
                        rendition: r as u16,
                        keyframe: packet.keyframe,
                        frame_type: wire_frame_type(packet.frame_type),
                        data: packet.data,
                    };
                    for chunk in packet_chunks(&wire) {
                        self.send(&chunk).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// At the end: access units whose picture never came out mean the input was cut.
    fn leftover_check(&mut self) -> Option<Ending> {
        let left: u32 = self.pending.values().sum();
        (left > 0).then(|| {
            self.daemon.metrics.error("card.decode");
            Ending::error(
                ErrorCode::DecodeFailed,
                format!(
                    "{left} access units yielded no picture (first pts {}): the input is truncated or corrupt",
                    self.first_pending().unwrap_or_default()
                ),
            )
        })
    }

    /// Ends the session: the final record, the card sessions destroyed, buffers unmapped,
    /// the channel closed, the book released.
    async fn teardown(self, ending: Ending, mut buffers: Buffers, running: Option<Running>) {
        let TranscodeWorker {
            daemon,
            entry,
            sock,
            ladder,
            ..
        } = self;
        entry.closed.store(true, Ordering::Release);
        tracing::debug!(reason = %ending.reason, code = ?ending.code, "transcode session ending");
        crate::session::retire(&daemon, &entry, &ending.reason);
        if let (Some(code), false) = (ending.code, ending.client_gone) {
            let record = DaemonRecord::Error {
                code: code as u32,
                message: ending.reason.clone(),
            };
            let _ =
                tokio::time::timeout(FINAL_SEND_TIMEOUT, sock.send(&record.encode(), None)).await;
        }
        sock.discard_pending(1024);
        drop(sock);
        let timeout = daemon.config.timeouts.command();
        if !ending.card_fault {
            ladder.destroy(timeout).await;
        }
        // A step still running holds commands on the card: it ends once the sessions are
        // destroyed (aborted), before the client's memory is unmapped.
        if let Some(r) = running {
            if tokio::time::timeout(timeout, r.step).await.is_err() {
                tracing::warn!("the step in flight did not finish; abandoning it");
            }
        }
        buffers.clear();
        crate::session::finish(&daemon, &entry, &ending.reason).await;
    }
}
