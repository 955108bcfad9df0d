//! [`DataChannel`]: the client side of a session's data channel (`docs/data-channel.md`).
//!
//! The channel registers one memfd frame pool with the daemon (as many slots as the
//! window in the daemon's hello record), writes each frame into a free slot, sends a frame
//! record that refers to it, and waits for the slot to come back (`FRAME_DONE`) when all
//! slots are in flight: that wait is the back-pressure. Packets arriving meanwhile are
//! queued and handed out by [`DataChannel::next_packet`] and [`DataChannel::ready_packets`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;

use super::error::{ClientError, Result};
use super::pool::FramePool;
use super::split::{self, FrameSender, PacketReceiver};
use vpud_proto::socket::{SeqPacket, SocketError};
use vpud_proto::{
    ClientRecord, DaemonRecord, ErrorCode, FrameRef, Hello, PacketAssembler, WirePacket,
    FRAME_FORCE_KEYFRAME, MAX_RECORD_LEN,
};

/// An encoded packet: Annex-B bytes (empty when the encoder skipped the frame), the
/// frame's pts and whether it is a keyframe.
pub type Packet = WirePacket;

/// The buffer id of the frame pool (the session registers exactly one).
pub(crate) const POOL_BUFFER: u32 = 0;

/// Counters of one data channel as the client saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub frames_sent: u64,
    pub packets: u64,
    pub bytes: u64,
    pub keyframes: u64,
}

/// The client end of one session's data channel. Dropping it closes the channel, which
/// ends the session in the daemon.
pub struct DataChannel {
    /// The session's object path, for messages.
    name: String,
    channel: SeqPacket,
    hello: Hello,
    pool: FramePool,
    free: Vec<usize>,
    /// pts → slot of every frame in flight.
    in_flight: HashMap<u64, usize>,
    recv_buf: Vec<u8>,
    assembler: PacketAssembler,
    packets: VecDeque<Packet>,
    eos_sent: bool,
    eos_acked: bool,
    counters: SessionCounters,
}

impl std::fmt::Debug for DataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataChannel")
            .field("session", &self.name)
            .field("hello", &self.hello)
            .field("in_flight", &self.in_flight.len())
            .field("queued_packets", &self.packets.len())
            .field("eos_sent", &self.eos_sent)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl DataChannel {
    /// Takes over the channel `CreateSession` returned: reads the hello record, creates
    /// and registers the frame pool. `name` (the session's path) appears in errors.
    pub async fn open(channel: OwnedFd, name: String) -> Result<DataChannel> {
        let channel = SeqPacket::new(channel).map_err(|e| ClientError::ChannelIo {
            session: name.clone(),
            op: "setup",
            source: std::io::Error::other(e),
        })?;
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
        if hello.frame_size == 0 {
            return Err(ClientError::ChannelProtocol {
                session: name,
                what: "hello record announces frames of 0 bytes".into(),
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
        tracing::debug!(
            session = %name,
            window = hello.window,
            frame_size = hello.frame_size,
            pool_bytes = pool.len(),
            "data channel open, frame pool registered"
        );
        Ok(DataChannel {
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
            counters: SessionCounters::default(),
        })
    }

    /// What the daemon announced: frame size, window, dimensions.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Bytes of one raw frame.
    pub fn frame_size(&self) -> usize {
        self.hello.frame_size as usize
    }

    /// Frames sent whose slots have not come back yet.
    pub fn frames_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// What this client has sent and received so far.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Sends one frame (exactly [`DataChannel::frame_size`] bytes), copying it into a free
    /// slot of the pool. Waits while the window is full.
    pub async fn send_frame(&mut self, frame: &[u8], pts: u64, force_keyframe: bool) -> Result<()> {
        if frame.len() != self.frame_size() {
            return Err(ClientError::FrameSize {
                session: self.name.clone(),
                got: frame.len(),
                expected: self.frame_size(),
            });
        }
        self.send_frame_with(|slot| slot.copy_from_slice(frame), pts, force_keyframe)
            .await
    }

    /// Sends one frame written in place: `fill` gets the slot (frame-size bytes of shared
    /// memory) and writes the frame into it. Waits while the window is full.
    pub async fn send_frame_with<F>(
        &mut self,
        fill: F,
        pts: u64,
        force_keyframe: bool,
    ) -> Result<()>
    where
        F: FnOnce(&mut [u8]),
    {
        let mut slot = self.reserve(pts).await?;
        fill(slot.frame());
        slot.send(pts, force_keyframe).await
    }

    /// Waits for a free slot of the frame pool (the back-pressure) and lends it out: write
    /// the frame into [`FrameSlot::frame`], then [`FrameSlot::send`] it. A slot dropped
    /// unsent goes back to the pool. `pts` is the pts the frame will be sent with: a frame
    /// of the same pts still in flight is waited for first, as the daemon names finished
    /// frames by pts.
    pub async fn reserve(&mut self, pts: u64) -> Result<FrameSlot<'_>> {
        if self.eos_sent {
            return Err(ClientError::AfterEndOfStream {
                session: self.name.clone(),
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
        Ok(FrameSlot {
            session: self,
            slot,
            sent: false,
        })
    }

    async fn submit(&mut self, slot: usize, pts: u64, force_keyframe: bool) -> Result<()> {
        let record = ClientRecord::Frame(FrameRef {
            buffer_id: POOL_BUFFER,
            flags: if force_keyframe {
                FRAME_FORCE_KEYFRAME
            } else {
                0
            },
            offset: self.pool.offset(slot) as u64,
            length: self.hello.frame_size,
            pts,
        });
        if let Err(e) = self.channel.send(&record.encode(), None).await {
            self.free.push(slot);
            return Err(self.failure_after_send_error(e).await);
        }
        self.in_flight.insert(pts, slot);
        self.counters.frames_sent += 1;
        Ok(())
    }

    /// Packets received so far and not yet taken, without waiting.
    pub fn ready_packets(&mut self) -> impl Iterator<Item = Packet> + '_ {
        self.packets.drain(..)
    }

    /// The next packet, waiting for it; `None` once the end of stream has been
    /// acknowledged (after [`DataChannel::finish`]) and every packet was taken.
    pub async fn next_packet(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(p) = self.packets.pop_front() {
                return Ok(Some(p));
            }
            if self.eos_acked {
                return Ok(None);
            }
            if !self.eos_sent && self.counters.packets >= self.counters.frames_sent {
                // Every frame sent has its packet (one per frame, empty when skipped) and
                // nothing more comes without another frame: waiting would never end.
                return Ok(None);
            }
            self.pump().await?;
        }
    }

    /// Sends end of stream. Packets still to come are read with [`DataChannel::next_packet`]
    /// until it returns `None`.
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
    pub async fn drain(&mut self) -> Result<Vec<Packet>> {
        self.finish().await?;
        let mut out = Vec::new();
        while let Some(p) = self.next_packet().await? {
            out.push(p);
        }
        Ok(out)
    }

    /// Splits the channel into a sending half and a receiving half that may be driven from
    /// different tasks or threads at once: one thread submits frames while another reads
    /// packets and pushes them on (what a media framework's encoder element does). Frames
    /// already in flight and packets already received carry over.
    pub fn split(self) -> (FrameSender, PacketReceiver) {
        split::split(split::Parts {
            name: self.name,
            channel: self.channel,
            hello: self.hello,
            pool: self.pool,
            free: self.free,
            in_flight: self.in_flight,
            recv_buf: self.recv_buf,
            assembler: self.assembler,
            packets: self.packets,
            eos_sent: self.eos_sent,
            eos_acked: self.eos_acked,
            counters: self.counters,
        })
    }

    /// The session's object path this channel belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads and handles one record from the daemon.
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
            DaemonRecord::Hello(_) => {
                return Err(self.protocol("a second hello record".into()));
            }
            DaemonRecord::Error { code, message } => {
                tracing::debug!(session = %self.name, code, %message, "the daemon ended the session");
                return Err(session_failed(&self.name, code, message));
            }
        }
        Ok(())
    }

    /// After a failed send the daemon may have said why before closing: prefer its error
    /// record to the bare socket error.
    async fn failure_after_send_error(&mut self, e: SocketError) -> ClientError {
        let fallback = io_error(&self.name, "frame", e);
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

pub(crate) async fn recv_record(
    channel: &SeqPacket,
    buf: &mut [u8],
    name: &str,
) -> Result<DaemonRecord> {
    let got = match channel.recv(buf).await {
        Ok(got) => got,
        // When the daemon closes its end while records of ours sit unread in it, the
        // kernel reports ECONNRESET once, ahead of the records the daemon sent before
        // closing (its ERROR record, say). Reading again yields them, then end of file.
        Err(SocketError::Receive(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            match channel.recv(buf).await {
                Ok(got) => got,
                Err(_) => {
                    return Err(ClientError::ChannelClosed {
                        session: name.to_string(),
                    })
                }
            }
        }
        Err(e) => return Err(io_error(name, "receive", e)),
    };
    if got.len == 0 {
        return Err(ClientError::ChannelClosed {
            session: name.to_string(),
        });
    }
    if !got.fds.is_empty() {
        return Err(ClientError::ChannelProtocol {
            session: name.to_string(),
            what: "the daemon passed file descriptors with a record".into(),
        });
    }
    DaemonRecord::decode(&buf[..got.len]).map_err(|e| ClientError::ChannelProtocol {
        session: name.to_string(),
        what: e.to_string(),
    })
}

pub(crate) fn session_failed(name: &str, code: u32, message: String) -> ClientError {
    let code_name = ErrorCode::from_u32(code).map_or("unknown", ErrorCode::as_str);
    ClientError::SessionFailed {
        session: name.to_string(),
        code,
        message: format!("{code_name}: {message}"),
    }
}

pub(crate) fn io_error(name: &str, op: &'static str, e: SocketError) -> ClientError {
    ClientError::ChannelIo {
        session: name.to_string(),
        op,
        source: std::io::Error::other(e),
    }
}

/// A free slot of a session's frame pool, lent out by [`DataChannel::reserve`].
#[derive(Debug)]
pub struct FrameSlot<'a> {
    session: &'a mut DataChannel,
    slot: usize,
    sent: bool,
}

impl FrameSlot<'_> {
    /// The slot's frame bytes (shared memory the card reads the frame from).
    pub fn frame(&mut self) -> &mut [u8] {
        // `reserve` only lends slots below the pool's slot count.
        self.session.pool.slot_mut(self.slot).unwrap_or_default()
    }

    /// Sends the frame in this slot.
    pub async fn send(mut self, pts: u64, force_keyframe: bool) -> Result<()> {
        self.sent = true;
        self.session.submit(self.slot, pts, force_keyframe).await
    }
}

impl Drop for FrameSlot<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.session.free.push(self.slot);
        }
    }
}

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
