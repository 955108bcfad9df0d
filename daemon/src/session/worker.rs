//! The task that serves one session's data channel: records in, frames to the card by
//! reference (up to the window in flight), packets back in order, and the end of the
//! session — whatever ends it — with every resource released.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tracing::Instrument;
use vpu_driver::card::{CardError, FrameInput, FrameType, Packet, SessionId};

use super::buffers::Buffers;
use crate::channel::proto::{
    packet_chunks, ClientRecord, DaemonRecord, ErrorCode, FrameRef, Hello, WireFrameType,
    WirePacket, MAX_RECORD_LEN,
};
use crate::channel::socket::SeqPacket;
use crate::metrics::{Metrics, SessionMetrics};
use crate::scheduler::CardState;
use crate::service::changes::Change;
use crate::service::state::{CardEntry, CloseRequest, Control, Daemon, SessionEntry};

/// How often a session's counters are published as property changes.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// How long the final `ERROR` record may wait for a client that does not read.
const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) type Encode =
    Pin<Box<dyn Future<Output = (u32, u64, Result<Packet, CardError>)> + Send>>;

/// Why the session ended.
#[derive(Debug)]
pub(super) struct Ending {
    /// `ERROR` code for the client; `None` for a normal end.
    pub(super) code: Option<ErrorCode>,
    pub(super) reason: String,
    /// The card failed: its session is not destroyed (the card is being reset).
    pub(super) card_fault: bool,
    /// The client is gone or not reading: no final record.
    pub(super) client_gone: bool,
}

impl Ending {
    pub(super) fn error(code: ErrorCode, reason: impl Into<String>) -> Ending {
        Ending {
            code: Some(code),
            reason: reason.into(),
            card_fault: false,
            client_gone: false,
        }
    }
    pub(super) fn normal(reason: &str) -> Ending {
        Ending {
            code: None,
            reason: reason.into(),
            card_fault: false,
            client_gone: false,
        }
    }
    pub(super) fn gone(reason: &str) -> Ending {
        Ending {
            client_gone: true,
            ..Ending::normal(reason)
        }
    }
    pub(super) fn from_request(r: Option<CloseRequest>) -> Ending {
        match r {
            Some(r) => Ending {
                code: r.code,
                reason: r.reason,
                card_fault: false,
                client_gone: false,
            },
            None => Ending::error(ErrorCode::Shutdown, "the daemon is stopping"),
        }
    }
}

/// One session's data-channel server.
#[derive(Debug)]
pub struct Worker {
    pub daemon: Arc<Daemon>,
    pub entry: Arc<SessionEntry>,
    pub sock: SeqPacket,
    pub card: Arc<CardEntry>,
    pub sid: SessionId,
    pub hello: Hello,
    pub control_rx: mpsc::UnboundedReceiver<Control>,
    /// A migration asked for while a record was being sent.
    pub pending_migrate: Option<String>,
    /// The per-codec counters and latency histogram this session updates.
    pub metrics: SessionMetrics,
}

/// Frames sent to the card, in order, with their encodes.
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) encodes: FuturesOrdered<Encode>,
    pub(super) frames: VecDeque<FrameRef>,
    /// When each frame of `frames` first arrived (if frames are timed). A migration
    /// resubmits `frames` but leaves these: latency counts from the first arrival.
    pub(super) arrived: VecDeque<Option<Instant>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("frames", &self.frames.len())
            .finish()
    }
}

impl InFlight {
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// What to do after a frame's completion.
enum Flow {
    End(Ending),
    /// The card failed: move the session.
    Migrate(String),
}

impl From<Ending> for Flow {
    fn from(e: Ending) -> Flow {
        Flow::End(e)
    }
}

impl Worker {
    /// Serves the channel until the session ends, then releases everything.
    pub async fn serve(self) {
        let span = tracing::info_span!("session", session = self.entry.id, card = %self.card.name);
        async move {
            let mut me = self;
            let mut buffers = Buffers::default();
            let mut inflight = InFlight::default();
            let ending = me.run(&mut buffers, &mut inflight).await;
            me.teardown(ending, buffers, inflight).await;
        }
        .instrument(span)
        .await
    }

    /// Sends a record unless a close request comes first (a migration request is kept
    /// for the main loop).
    async fn send(&mut self, record: &DaemonRecord) -> Result<(), Ending> {
        let bytes = record.encode();
        loop {
            tokio::select! {
                r = self.sock.send(&bytes, None) => return r.map_err(|e| {
                    tracing::debug!(error = %e, "client stopped reading");
                    Ending::gone("the data channel was closed")
                }),
                c = self.control_rx.recv() => match c {
                    Some(Control::Migrate { card, epoch, reason }) => {
                        if self.entry.migrate_applies(card, epoch) {
                            self.pending_migrate = Some(reason);
                        }
                    }
                    Some(Control::Close(r)) => return Err(Ending::from_request(Some(r))),
                    None => return Err(Ending::from_request(None)),
                },
            }
        }
    }

    async fn run(&mut self, buffers: &mut Buffers, inflight: &mut InFlight) -> Ending {
        if let Err(end) = self.send(&DaemonRecord::Hello(self.hello)).await {
            return end;
        }
        let window = usize::from(self.hello.window);
        let mut buf = vec![0u8; MAX_RECORD_LEN];
        let mut eos = false;
        // Whether this card session was sent a Flush after the end of stream.
        let mut flushed = false;
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        let mut published = (0u64, 0u64);
        loop {
            if let Some(reason) = self.pending_migrate.take() {
                if let Err(end) = self.migrate(&reason, buffers, inflight).await {
                    return end;
                }
                flushed = false;
            }
            if eos && !flushed && !inflight.is_empty() {
                // An engine may hold the last frames until more input comes (AV1
                // engines code with lookahead): Flush asks for them. Its own completion
                // only follows theirs, so nothing waits for it.
                flushed = true;
                let card = Arc::clone(&self.card.card);
                let sid = self.sid;
                tokio::spawn(async move {
                    if let Err(e) = card.flush(sid).await {
                        tracing::debug!(error = %e, "flush after the end of stream");
                    }
                });
            }
            if eos && inflight.is_empty() {
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
                c = self.control_rx.recv() => match c {
                    Some(Control::Migrate { card, epoch, reason }) => {
                        if self.entry.migrate_applies(card, epoch) {
                            self.pending_migrate = Some(reason);
                        }
                    }
                    Some(Control::Close(r)) => return Ending::from_request(Some(r)),
                    None => return Ending::from_request(None),
                },
                Some((buffer_id, pts, result)) = inflight.encodes.next(), if !inflight.is_empty() => {
                    let arrived = inflight.arrived.front().copied().flatten();
                    match self.complete(buffer_id, pts, arrived, result).await {
                        Ok(()) => {
                            inflight.frames.pop_front();
                            inflight.arrived.pop_front();
                            buffers.release(buffer_id);
                        }
                        Err(Flow::End(end)) => return end,
                        // The frame stays in flight: it is resubmitted on the next card.
                        Err(Flow::Migrate(reason)) => self.pending_migrate = Some(reason),
                    }
                }
                received = self.sock.recv(&mut buf), if !eos => {
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
                        self.daemon.metrics.error("channel.protocol-violation");
                        return Ending::error(ErrorCode::ProtocolViolation,
                            "only register-buffer records may carry file descriptors");
                    }
                    match record {
                        ClientRecord::RegisterBuffer { buffer_id, size } => {
                            if let Err(e) = buffers.register(&self.card.card, buffer_id, size, received.fds) {
                                let code = if e.is_protocol() { ErrorCode::ProtocolViolation } else { ErrorCode::Resource };
                                self.daemon.metrics.error(&format!("channel.{code}"));
                                return Ending::error(code, e.to_string());
                            }
                            tracing::debug!(buffer_id, size, "buffer registered");
                        }
                        ClientRecord::UnregisterBuffer { buffer_id } => {
                            if let Err(e) = buffers.unregister(buffer_id) {
                                self.daemon.metrics.error("channel.protocol-violation");
                                return Ending::error(ErrorCode::ProtocolViolation, e.to_string());
                            }
                            if let Err(end) = self.send(&DaemonRecord::BufferReleased { buffer_id }).await {
                                return end;
                            }
                        }
                        ClientRecord::Frame(frame) => {
                            if inflight.len() >= window {
                                self.daemon.metrics.error("channel.protocol-violation");
                                return Ending::error(ErrorCode::ProtocolViolation, format!(
                                    "frame pts {} beyond the window of {window} frames in flight; wait for a frame-done record",
                                    frame.pts));
                            }
                            if let Err(msg) = self.submit(buffers, inflight, frame, false) {
                                self.daemon.metrics.error("channel.protocol-violation");
                                return Ending::error(ErrorCode::ProtocolViolation, msg);
                            }
                        }
                        ClientRecord::AccessUnit(unit) => {
                            self.daemon.metrics.error("channel.protocol-violation");
                            return Ending::error(ErrorCode::ProtocolViolation, format!(
                                "access unit pts {} on an encode session; send raw frames (frame records)",
                                unit.pts));
                        }
                        ClientRecord::EndOfStream => eos = true,
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

    /// Starts encoding a frame. The encode future is polled once here, so that frames
    /// reach the card's queue in the order they arrived.
    pub(super) fn submit(
        &mut self,
        buffers: &mut Buffers,
        inflight: &mut InFlight,
        frame: FrameRef,
        resubmit: bool,
    ) -> Result<(), String> {
        if frame.length != self.hello.frame_size {
            return Err(format!(
                "frame of {} bytes; this session's frames have {} bytes ({}x{})",
                frame.length, self.hello.frame_size, self.hello.width, self.hello.height
            ));
        }
        let dma = buffers.acquire(frame.buffer_id, frame.offset, frame.length)?;
        let force =
            frame.force_keyframe() | self.entry.force_keyframe.swap(false, Ordering::AcqRel);
        let card = Arc::clone(&self.card.card);
        let sid = self.sid;
        let (buffer_id, pts) = (frame.buffer_id, frame.pts);
        // `acquire` checked offset + length against the registered size, which fits in
        // usize (it was mapped).
        let offset = usize::try_from(frame.offset).unwrap_or(usize::MAX);
        let len = frame.length as usize;
        let mut fut: Encode = Box::pin(async move {
            let input = FrameInput::Dma {
                buffer: &dma,
                offset,
                len,
            };
            let result = card.encode(sid, input, pts, force).await;
            (buffer_id, pts, result)
        });
        if !resubmit {
            Metrics::add(&self.entry.counters.frames_in, 1);
            let arrived = self.metrics.frame_in(&self.daemon.metrics);
            inflight.arrived.push_back(arrived);
        }
        inflight.frames.push_back(frame);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => inflight
                .encodes
                .push_back(Box::pin(std::future::ready(out))),
            Poll::Pending => inflight.encodes.push_back(fut),
        }
        Ok(())
    }

    /// Whether this session's card is out of service (failed, resetting, offline).
    fn card_is_down(&self) -> bool {
        !matches!(
            self.daemon.card_state(self.card.index),
            CardState::Online | CardState::Draining
        )
    }

    /// Sends a finished frame's records.
    async fn complete(
        &mut self,
        buffer_id: u32,
        pts: u64,
        arrived: Option<Instant>,
        result: Result<Packet, CardError>,
    ) -> Result<(), Flow> {
        let packet = match result {
            Ok(p) => p,
            Err(e) => {
                if e.is_device_fault() || self.card_is_down() {
                    self.daemon.metrics.error("card.device-fault");
                    tracing::warn!(error = %e, pts, "card fault while encoding; moving the session");
                    crate::service::health::card_fault(
                        &self.daemon,
                        self.card.index,
                        &e.to_string(),
                    );
                    return Err(Flow::Migrate(format!(
                        "card {} failed: {e}",
                        self.card.name
                    )));
                }
                self.card.count_error("encode");
                self.daemon.metrics.error("card.encode");
                self.daemon.changes.push(Change::CardErrors {
                    card: self.card.index,
                });
                return Err(Flow::End(Ending::error(
                    ErrorCode::EncodeFailed,
                    format!("frame pts {pts}: {e}"),
                )));
            }
        };
        self.send(&DaemonRecord::FrameDone { buffer_id, pts })
            .await?;
        let c = &self.entry.counters;
        Metrics::add(&c.frames_out, 1);
        Metrics::add(&c.bytes_out, packet.data.len() as u64);
        if packet.keyframe {
            Metrics::add(&c.keyframes, 1);
        }
        let bytes = packet.data.len() as u64;
        let wire = WirePacket {
            pts: packet.pts,
            rendition: 0,
            keyframe: packet.keyframe,
            frame_type: wire_frame_type(packet.frame_type),
            data: packet.data,
        };
        for chunk in packet_chunks(&wire) {
            self.send(&chunk).await?;
        }
        self.metrics
            .packet_out(&self.daemon.metrics, bytes, arrived);
        Ok(())
    }

    /// Ends the session: the final record, the card session destroyed, in-flight frames
    /// finished or abandoned, buffers unmapped, the channel closed, the book released.
    async fn teardown(self, ending: Ending, mut buffers: Buffers, inflight: InFlight) {
        let mut inflight = inflight.encodes;
        let Worker {
            daemon,
            entry,
            sock,
            card,
            sid,
            ..
        } = self;
        entry.closed.store(true, Ordering::Release);
        // `session::retire` logs the end once, at info.
        tracing::debug!(reason = %ending.reason, code = ?ending.code, "session ending");
        // Off the bus and the books at once; the card and memory follow below.
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
        // A reset since the card session was created wiped it, and its id may name
        // another session now.
        let wiped = card.reset_epoch() != entry.card_epoch.load(Ordering::Acquire);
        if !ending.card_fault && !wiped {
            match tokio::time::timeout(timeout, card.card.destroy_session(sid)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    daemon.metrics.error("card.destroy-session");
                    tracing::warn!(error = %e, "destroying the card session failed");
                }
                Err(_) => {
                    daemon.metrics.error("card.destroy-session");
                    tracing::warn!("destroying the card session timed out");
                }
            }
        }
        // The card aborts what was queued for the destroyed session; wait for those
        // commands so that no DMA mapping goes while the card may still read it.
        let drained =
            tokio::time::timeout(timeout, async { while inflight.next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("frames in flight did not finish; abandoning them");
        }
        drop(inflight);
        buffers.clear();
        crate::session::finish(&daemon, &entry, &ending.reason).await;
    }
}

pub(super) fn wire_frame_type(t: FrameType) -> WireFrameType {
    match t {
        FrameType::Skipped => WireFrameType::Skipped,
        FrameType::Idr => WireFrameType::Idr,
        FrameType::I => WireFrameType::I,
        FrameType::P => WireFrameType::P,
        FrameType::B => WireFrameType::B,
    }
}
