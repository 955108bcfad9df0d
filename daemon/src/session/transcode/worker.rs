//! The task that serves one transcode session's data channel: access units in (by
//! reference to the client's memory, up to the window), through the card with several
//! pictures in flight ([`super::pipeline`]), `FRAME_DONE` once the card has read an access
//! unit, every rendition's packet of each picture in picture order, and the end of the
//! session with every resource released.
//!
//! Pictures come out of the decoder in display order; the pts of each is the smallest pts
//! of the access units decoded whose picture has not come out yet. Keyframes are forced on
//! the same pictures for every rendition: every `gop` pictures, on the first, after a
//! `RequestKeyframe`, and on the first picture after the ladder moved.
//!
//! For a move, the access units since the IDR before the oldest picture not yet sent are
//! kept (copied, [`super::history`]): the new card's decoder starts from there, the
//! pictures already sent are dropped, and the rest go on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::history::{History, UnitRef};
use super::ladder::{CardLadder, Turn};
use super::pipeline::InFlight;
use super::request::TranscodeRequest;
use crate::channel::proto::{
    ClientRecord, DaemonRecord, ErrorCode, FrameRef, Hello, MAX_RECORD_LEN,
};
use crate::channel::socket::SeqPacket;
use crate::metrics::Metrics;
use crate::service::changes::Change;
use crate::service::state::{Control, Daemon, SessionEntry};
use crate::session::buffers::Buffers;
use crate::session::worker::Ending;

/// How often a session's counters are published as property changes.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// How long the final `ERROR` record may wait for a client that does not read.
const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

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
    pub(super) replay: VecDeque<UnitRef>,
    /// Access units kept for a move.
    pub(super) history: History,
    /// Pts of access units decoded whose picture has not come out, with multiplicity.
    pub(super) pending: BTreeMap<u64, u32>,
    /// Pictures the decoder output (after a move: counted again from where it restarted).
    pub(super) decoded: u64,
    /// Pictures sent.
    pub(super) sent: u64,
    /// Force a keyframe on every rendition at the next picture.
    pub(super) force_next: bool,
    /// Pictures on the card at once at most.
    pub(super) depth: usize,
    /// The decode and the pictures on the card.
    pub(super) in_flight: InFlight,
    /// Per rendition, the turn of its next encode.
    pub(super) turns: Vec<Option<Turn>>,
    /// The input failed to decode: no more decoding; the session ends with this once the
    /// pictures before it are out.
    pub(super) failed: Option<Ending>,
    /// Access units whose `FRAME_DONE` is owed.
    pub(super) owed: usize,
    pub(super) eos: bool,
    /// The decoder was flushed at the end of the stream.
    pub(super) flushed: bool,
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
        let depth = usize::from(daemon.config.transcode.pictures_in_flight.max(1));
        let renditions = ladder.encoders.len();
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
            history: History::new(),
            pending: BTreeMap::new(),
            decoded: 0,
            sent: 0,
            force_next: false,
            depth,
            in_flight: InFlight::default(),
            turns: (0..renditions).map(|_| None).collect(),
            failed: None,
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
            let ending = me.run(&mut buffers).await;
            me.teardown(ending, buffers).await;
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

    pub(super) fn violation(&self, msg: String) -> Ending {
        self.daemon.metrics.error("channel.protocol-violation");
        Ending::error(ErrorCode::ProtocolViolation, msg)
    }

    async fn run(&mut self, buffers: &mut Buffers) -> Ending {
        if let Err(end) = self.send(&DaemonRecord::Hello(self.hello)).await {
            return end;
        }
        let window = usize::from(self.hello.window);
        let mut buf = vec![0u8; MAX_RECORD_LEN];
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        let mut published = (0u64, 0u64);
        loop {
            if let Some(reason) = self.pending_migrate.take() {
                if let Err(end) = self.migrate(&reason, buffers).await {
                    return end;
                }
            }
            if let Err(end) = self.start_decode(buffers) {
                return end;
            }
            if self.in_flight.is_idle() {
                if let Some(end) = self.failed.take() {
                    return end;
                }
                if self.flushed {
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
            }
            tokio::select! {
                biased;
                c = self.control_rx.recv() => {
                    if let Err(end) = self.control(c) {
                        return end;
                    }
                }
                event = self.in_flight.next() => match self.event(event).await {
                    Ok(()) => {}
                    Err(Flow::End(end)) => return end,
                    Err(Flow::Migrate(reason)) => self.pending_migrate = Some(reason),
                },
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

    /// Ends the session: the final record, the card sessions destroyed, buffers unmapped,
    /// the channel closed, the book released.
    async fn teardown(self, ending: Ending, mut buffers: Buffers) {
        let TranscodeWorker {
            daemon,
            entry,
            sock,
            ladder,
            in_flight,
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
        // Work still on the card holds commands there: it ends once the sessions are
        // destroyed (aborted) and releases its frames, before the client's memory is
        // unmapped.
        in_flight.finish(timeout).await;
        buffers.clear();
        crate::session::finish(&daemon, &entry, &ending.reason).await;
    }
}
