//! [`Transcode`]: an open transcode session: compressed access units in, every
//! rendition's packets out (`docs/data-channel.md`, transcode sessions).
//!
//! Like an encode session's channel, it registers one memfd pool with the daemon (one slot
//! per access unit in flight, each as large as the largest access unit the daemon takes),
//! copies each access unit into a free slot and sends an `ACCESS_UNIT` record naming it;
//! the slot comes back with `FRAME_DONE` once the card has read it. Packets arriving
//! meanwhile are queued, each tagged with its rendition.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;

use vpud_proto::socket::SeqPacket;
use vpud_proto::{
    ClientRecord, DaemonRecord, FrameRef, Hello, PacketAssembler, WirePacket, MAX_RECORD_LEN,
};
use zbus::OwnedObjectPath;

use super::channel::{io_error, recv_record, session_failed};
use super::error::{ClientError, Result};
use super::pool::FramePool;
use super::proxy::SessionProxy;

/// One encoded picture of one rendition: `rendition` (the index into
/// [`crate::TranscodeParams::outputs`]), the pts of the input access unit it came from,
/// keyframe flag, frame type and Annex-B bytes.
pub type RenditionPacket = WirePacket;

/// The buffer id of the access-unit pool.
const POOL_BUFFER: u32 = 0;

/// What one transcode channel has sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranscodeCounters {
    pub access_units_sent: u64,
    /// Packets of all renditions.
    pub packets: u64,
    pub bytes: u64,
    pub keyframes: u64,
}

/// An open transcode session. Dropping it closes the data channel, which ends the session
/// in the daemon; [`Transcode::close`] also says so over D-Bus.
pub struct Transcode {
    path: OwnedObjectPath,
    proxy: SessionProxy<'static>,
    name: String,
    channel: SeqPacket,
    hello: Hello,
    pool: FramePool,
    free: Vec<usize>,
    /// pts → slot of every access unit in flight.
    in_flight: HashMap<u64, usize>,
    recv_buf: Vec<u8>,
    assembler: PacketAssembler,
    packets: VecDeque<RenditionPacket>,
    eos_sent: bool,
    eos_acked: bool,
    counters: TranscodeCounters,
}

impl std::fmt::Debug for Transcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcode")
            .field("session", &self.name)
            .field("hello", &self.hello)
            .field("in_flight", &self.in_flight.len())
            .field("queued_packets", &self.packets.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Transcode {
    /// Takes over a freshly created transcode session: reads the hello record, creates and
    /// registers the access-unit pool.
    pub(crate) async fn open(
        path: OwnedObjectPath,
        proxy: SessionProxy<'static>,
        channel: OwnedFd,
    ) -> Result<Transcode> {
        let name = path.as_str().to_string();
        let channel = SeqPacket::new(channel).map_err(|e| io_error(&name, "setup", e))?;
        let mut recv_buf = vec![0u8; MAX_RECORD_LEN];
        let hello = match recv_record(&channel, &mut recv_buf, &name).await? {
            DaemonRecord::Hello(h) => h,
            DaemonRecord::Error { code, message } => {
                return Err(session_failed(&name, code, message))
            }
            other => {
                return Err(ClientError::ChannelProtocol {
                    session: name,
                    what: format!("expected a hello record first, got {other:?}"),
                })
            }
        };
        if hello.renditions == 0 || hello.frame_size == 0 {
            return Err(ClientError::ChannelProtocol {
                session: name,
                what: format!(
                    "hello record of an encode session ({} renditions, {} bytes) on a transcode session",
                    hello.renditions, hello.frame_size
                ),
            });
        }
        let window = usize::from(hello.window);
        let pool = FramePool::new(window, hello.frame_size as usize).map_err(|source| {
            ClientError::FramePool {
                session: name.clone(),
                source,
            }
        })?;
        let register = ClientRecord::RegisterBuffer {
            buffer_id: POOL_BUFFER,
            size: pool.len() as u64,
        };
        channel
            .send(&register.encode(), Some(pool.fd()))
            .await
            .map_err(|e| io_error(&name, "register-buffer", e))?;
        Ok(Transcode {
            path,
            proxy,
            name,
            channel,
            hello,
            free: (0..window).rev().collect(),
            in_flight: HashMap::new(),
            pool,
            recv_buf,
            assembler: PacketAssembler::new(),
            packets: VecDeque::new(),
            eos_sent: false,
            eos_acked: false,
            counters: TranscodeCounters::default(),
        })
    }

    /// The session's object path.
    pub fn path(&self) -> &OwnedObjectPath {
        &self.path
    }

    /// The session's D-Bus proxy (`State`, `Card`, `Renditions`, `Migrated`, `Close`…).
    pub fn proxy(&self) -> &SessionProxy<'static> {
        &self.proxy
    }

    /// What the daemon announced.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Number of renditions.
    pub fn renditions(&self) -> usize {
        usize::from(self.hello.renditions)
    }

    /// The largest access unit the session takes, in bytes.
    pub fn max_access_unit(&self) -> usize {
        self.hello.frame_size as usize
    }

    /// Access units sent whose slots have not come back yet.
    pub fn access_units_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// What this client has sent and received so far.
    pub fn counters(&self) -> TranscodeCounters {
        self.counters
    }

    /// Sends one access unit (Annex-B, start codes included, one coded picture; parameter
    /// sets may precede it) with its pts. Waits while the window is full, queueing the
    /// packets that arrive meanwhile.
    pub async fn send_access_unit(&mut self, unit: &[u8], pts: u64) -> Result<()> {
        if self.eos_sent {
            return Err(ClientError::AfterEndOfStream {
                session: self.name.clone(),
            });
        }
        if unit.is_empty() || unit.len() > self.max_access_unit() {
            return Err(ClientError::AccessUnitSize {
                session: self.name.clone(),
                got: unit.len(),
                max: self.max_access_unit(),
            });
        }
        while self.in_flight.contains_key(&pts) {
            self.pump().await?;
        }
        let slot = loop {
            if let Some(slot) = self.free.pop() {
                break slot;
            }
            self.pump().await?;
        };
        match self.pool.slot_mut(slot) {
            Some(bytes) => bytes[..unit.len()].copy_from_slice(unit),
            None => {
                return Err(ClientError::ChannelProtocol {
                    session: self.name.clone(),
                    what: format!("pool slot {slot} does not exist"),
                })
            }
        }
        let record = ClientRecord::AccessUnit(FrameRef {
            buffer_id: POOL_BUFFER,
            flags: 0,
            offset: self.pool.offset(slot) as u64,
            length: unit.len() as u32,
            pts,
        });
        if let Err(e) = self.channel.send(&record.encode(), None).await {
            self.free.push(slot);
            return Err(self.failure_after_send_error(e).await);
        }
        self.in_flight.insert(pts, slot);
        self.counters.access_units_sent += 1;
        Ok(())
    }

    /// Packets received so far and not yet taken, without waiting.
    pub fn ready_packets(&mut self) -> impl Iterator<Item = RenditionPacket> + '_ {
        self.packets.drain(..)
    }

    /// The next packet, waiting for it; `None` once the end of stream has been
    /// acknowledged and every packet was taken. Before [`Transcode::finish`] it waits until
    /// a packet arrives, so call it only with access units in flight.
    pub async fn next_packet(&mut self) -> Result<Option<RenditionPacket>> {
        loop {
            if let Some(p) = self.packets.pop_front() {
                return Ok(Some(p));
            }
            if self.eos_acked {
                return Ok(None);
            }
            self.pump().await?;
        }
    }

    /// Sends end of stream: the decoder is drained, the last packets follow.
    pub async fn finish(&mut self) -> Result<()> {
        if self.eos_sent {
            return Ok(());
        }
        self.channel
            .send(&ClientRecord::EndOfStream.encode(), None)
            .await
            .map_err(|e| io_error(&self.name, "end-of-stream", e))?;
        self.eos_sent = true;
        Ok(())
    }

    /// Sends end of stream and collects every remaining packet.
    pub async fn drain(&mut self) -> Result<Vec<RenditionPacket>> {
        self.finish().await?;
        let mut out = Vec::new();
        while let Some(p) = self.next_packet().await? {
            out.push(p);
        }
        Ok(out)
    }

    /// Closes the session over D-Bus (`Session.Close`) and drops the channel. A session the
    /// daemon already ended is not an error.
    pub async fn close(self) -> Result<()> {
        let result = self.proxy.close().await;
        drop(self.channel);
        match result {
            Ok(()) => Ok(()),
            Err(e) => match ClientError::from_call("Session.Close", e) {
                e if e.is_unknown_object() => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn pump(&mut self) -> Result<()> {
        let record = recv_record(&self.channel, &mut self.recv_buf, &self.name).await?;
        self.handle(record)
    }

    fn handle(&mut self, record: DaemonRecord) -> Result<()> {
        match record {
            DaemonRecord::FrameDone { buffer_id, pts } => {
                let slot = match (buffer_id, self.in_flight.remove(&pts)) {
                    (POOL_BUFFER, Some(slot)) => slot,
                    _ => {
                        return Err(self.protocol(format!(
                            "frame-done for buffer {buffer_id} pts {pts}, which is not in flight"
                        )))
                    }
                };
                self.free.push(slot);
            }
            DaemonRecord::Packet(chunk) => {
                if usize::from(chunk.rendition) >= self.renditions() {
                    return Err(self.protocol(format!(
                        "packet of rendition {} of {}",
                        chunk.rendition,
                        self.renditions()
                    )));
                }
                let assembled = self
                    .assembler
                    .push(chunk)
                    .map_err(|e| self.protocol(e.to_string()))?;
                if let Some(p) = assembled {
                    self.counters.packets += 1;
                    self.counters.bytes += p.data.len() as u64;
                    if p.keyframe {
                        self.counters.keyframes += 1;
                    }
                    self.packets.push_back(p);
                }
            }
            DaemonRecord::EndOfStreamAck { .. } => {
                if !self.eos_sent {
                    return Err(self.protocol("end-of-stream-ack before end of stream".into()));
                }
                self.eos_acked = true;
            }
            DaemonRecord::BufferReleased { .. } => {}
            DaemonRecord::Hello(_) => return Err(self.protocol("a second hello record".into())),
            DaemonRecord::Error { code, message } => {
                tracing::debug!(session = %self.name, code, %message, "the daemon ended the session");
                return Err(session_failed(&self.name, code, message));
            }
        }
        Ok(())
    }

    /// After a failed send the daemon may have said why before closing: prefer its error
    /// record to the bare socket error.
    async fn failure_after_send_error(
        &mut self,
        e: vpud_proto::socket::SocketError,
    ) -> ClientError {
        let fallback = io_error(&self.name, "access-unit", e);
        for _ in 0..64 {
            match recv_record(&self.channel, &mut self.recv_buf, &self.name).await {
                Ok(DaemonRecord::Error { code, message }) => {
                    return session_failed(&self.name, code, message)
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        fallback
    }

    fn protocol(&self, what: String) -> ClientError {
        ClientError::ChannelProtocol {
            session: self.name.clone(),
            what,
        }
    }
}
