//! A data channel split in two halves ([`DataChannel::split`](crate::DataChannel::split)):
//! a [`FrameSender`] that submits frames and a [`PacketReceiver`] that reads what the
//! daemon sends back, each usable from its own task or thread.
//!
//! The halves share the window accounting: the receiver frees a frame's window place (and
//! its slot of the frame pool) when the frame's `FRAME_DONE` arrives, and wakes the sender
//! waiting for one. Besides the pool's slots, the sender can send frames that live in
//! other memfds the client registered ([`FrameSender::register_buffer`]), by reference and
//! without a copy: a media framework's own buffer pool, for one.
//!
//! When the receiver sees the channel end (an error record, end of file, a protocol
//! violation, or simply being dropped) it marks the shared state closed, so a sender
//! waiting for the window fails at once instead of waiting for ever.

use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use vpud_proto::socket::SeqPacket;
use vpud_proto::{
    ClientRecord, DaemonRecord, FrameRef, Hello, PacketAssembler, FRAME_FORCE_KEYFRAME,
};

use super::channel::{io_error, recv_record, session_failed, Packet, SessionCounters, POOL_BUFFER};
use super::error::{ClientError, Result};
use super::pool::FramePool;

/// Largest buffer id the protocol allows.
const MAX_BUFFER_ID: u32 = 63;

/// What a [`DataChannel`](crate::DataChannel) is made of, handed over by `split`.
pub(crate) struct Parts {
    pub name: String,
    pub channel: SeqPacket,
    pub hello: Hello,
    pub pool: FramePool,
    pub free: Vec<usize>,
    pub in_flight: HashMap<u64, usize>,
    pub recv_buf: Vec<u8>,
    pub assembler: PacketAssembler,
    pub packets: VecDeque<Packet>,
    pub eos_sent: bool,
    pub eos_acked: bool,
    pub counters: SessionCounters,
}

/// One frame in flight: the buffer it lives in and, for the pool's own buffer, its slot.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    buffer_id: u32,
    slot: Option<usize>,
}

/// Window accounting both halves see.
#[derive(Debug)]
struct Flight {
    window: usize,
    /// pts → frame of every frame sent and not yet done.
    in_flight: HashMap<u64, InFlight>,
    /// Free slots of the pool (buffer 0).
    free: Vec<usize>,
    /// Buffers the client registered besides the pool: id → size.
    registered: HashMap<u32, u64>,
    /// Why the channel ended, once it has.
    ended: Option<String>,
    /// End of stream was sent and its acknowledgement is owed.
    eos_owed: bool,
}

#[derive(Debug)]
struct Shared {
    flight: Mutex<Flight>,
    /// Wakes the sender when a window place or slot frees or the channel ends (one waiter,
    /// so `notify_one`'s stored permit means no wake-up is lost).
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Flight> {
        // A panic while holding this lock leaves plain bookkeeping behind; keep going.
        self.flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end(&self, reason: String) {
        let mut f = self.lock();
        if f.ended.is_none() {
            f.ended = Some(reason);
        }
        drop(f);
        self.changed.notify_one();
    }
}

pub(crate) fn split(p: Parts) -> (FrameSender, PacketReceiver) {
    let channel = Arc::new(p.channel);
    let window = usize::from(p.hello.window);
    let in_flight = p
        .in_flight
        .into_iter()
        .map(|(pts, slot)| {
            let f = InFlight {
                buffer_id: POOL_BUFFER,
                slot: Some(slot),
            };
            (pts, f)
        })
        .collect();
    let shared = Arc::new(Shared {
        flight: Mutex::new(Flight {
            window,
            in_flight,
            free: p.free,
            registered: HashMap::new(),
            ended: None,
            eos_owed: p.eos_sent && !p.eos_acked,
        }),
        changed: Notify::new(),
    });
    let sender = FrameSender {
        name: p.name.clone(),
        channel: channel.clone(),
        hello: p.hello,
        pool: p.pool,
        shared: shared.clone(),
        eos_sent: p.eos_sent,
        frames_sent: p.counters.frames_sent,
    };
    let receiver = PacketReceiver {
        name: p.name,
        channel,
        recv_buf: p.recv_buf,
        assembler: p.assembler,
        packets: p.packets,
        shared,
        eos_acked: p.eos_acked,
        counters: p.counters,
    };
    (sender, receiver)
}

/// The sending half of a split data channel.
#[derive(Debug)]
pub struct FrameSender {
    name: String,
    channel: Arc<SeqPacket>,
    hello: Hello,
    pool: FramePool,
    shared: Arc<Shared>,
    eos_sent: bool,
    frames_sent: u64,
}

impl FrameSender {
    /// What the daemon announced: frame size, window, dimensions.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Bytes of one raw frame.
    pub fn frame_size(&self) -> usize {
        self.hello.frame_size as usize
    }

    /// Frames sent whose `FRAME_DONE` has not arrived yet.
    pub fn frames_in_flight(&self) -> usize {
        self.shared.lock().in_flight.len()
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// The session's object path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until every frame sent has had its `FRAME_DONE`: the daemon has read and
    /// encoded all of them, so a `Session.RequestKeyframe` made now lands on the next
    /// frame sent.
    pub async fn wait_idle(&mut self) -> Result<()> {
        loop {
            {
                let f = self.shared.lock();
                if let Some(reason) = &f.ended {
                    return Err(ClientError::ChannelEnded {
                        session: self.name.clone(),
                        reason: reason.clone(),
                    });
                }
                if f.in_flight.is_empty() {
                    return Ok(());
                }
            }
            self.shared.changed.notified().await;
        }
    }

    /// Registers another memfd (sealed against shrinking, see `docs/data-channel.md`) as
    /// buffer `buffer_id` (1 … `HELLO.max_buffers` − 1; 0 is the channel's own pool), so
    /// that frames written into it can be sent by reference ([`FrameSender::send_ref`]).
    pub async fn register_buffer(
        &mut self,
        buffer_id: u32,
        fd: BorrowedFd<'_>,
        size: u64,
    ) -> Result<()> {
        let max = u32::from(self.hello.max_buffers).min(MAX_BUFFER_ID + 1);
        if buffer_id == POOL_BUFFER || buffer_id >= max {
            return Err(self.bad_ref(format!(
                "buffer id {buffer_id}: give 1 to {} (0 is the channel's own pool)",
                max.saturating_sub(1)
            )));
        }
        if self.shared.lock().registered.contains_key(&buffer_id) {
            return Err(self.bad_ref(format!("buffer {buffer_id} is already registered")));
        }
        let record = ClientRecord::RegisterBuffer { buffer_id, size };
        self.channel
            .send(&record.encode(), Some(fd))
            .await
            .map_err(|e| io_error(&self.name, "register-buffer", e))?;
        self.shared.lock().registered.insert(buffer_id, size);
        Ok(())
    }

    /// Waits for a free slot of the channel's own pool and a place in the window, and
    /// lends the slot out: write the frame into [`SenderSlot::frame`], then
    /// [`SenderSlot::send`] it (one copy, for frames that live in memory the daemon does
    /// not know).
    pub async fn reserve(&mut self, pts: u64) -> Result<SenderSlot<'_>> {
        let slot = self.wait(pts, true).await?.unwrap_or_default();
        Ok(SenderSlot {
            sender: self,
            slot,
            sent: false,
        })
    }

    /// Sends a frame that lies in registered buffer `buffer_id` at `offset`, by reference,
    /// once the window has room. The caller must leave those bytes alone until the frame's
    /// [`ChannelEvent::FrameDone`].
    pub async fn send_ref(
        &mut self,
        buffer_id: u32,
        offset: u64,
        pts: u64,
        force_keyframe: bool,
    ) -> Result<()> {
        let size = self.shared.lock().registered.get(&buffer_id).copied();
        let fits = size.is_some_and(|size| {
            offset
                .checked_add(u64::from(self.hello.frame_size))
                .is_some_and(|end| end <= size)
        });
        if !fits {
            return Err(self.bad_ref(format!(
                "frame at offset {offset} of buffer {buffer_id} is not inside a registered buffer"
            )));
        }
        self.wait(pts, false).await?;
        self.submit(buffer_id, None, offset, pts, force_keyframe)
            .await
    }

    /// Sends end of stream. The receiver then yields the remaining packets and
    /// [`ChannelEvent::EndOfStream`].
    pub async fn finish(&mut self) -> Result<()> {
        if self.eos_sent {
            return Ok(());
        }
        self.channel
            .send(&ClientRecord::EndOfStream.encode(), None)
            .await
            .map_err(|e| io_error(&self.name, "end-of-stream", e))?;
        self.eos_sent = true;
        self.shared.lock().eos_owed = true;
        Ok(())
    }

    /// Waits until the window has room and no frame of `pts` is in flight (the daemon
    /// names finished frames by pts), and, with `slot`, a slot of the pool is free: takes
    /// and returns it.
    async fn wait(&mut self, pts: u64, slot: bool) -> Result<Option<usize>> {
        if self.eos_sent {
            return Err(ClientError::AfterEndOfStream {
                session: self.name.clone(),
            });
        }
        loop {
            {
                let mut f = self.shared.lock();
                if let Some(reason) = &f.ended {
                    return Err(ClientError::ChannelEnded {
                        session: self.name.clone(),
                        reason: reason.clone(),
                    });
                }
                let room = f.in_flight.len() < f.window && !f.in_flight.contains_key(&pts);
                if room && !slot {
                    return Ok(None);
                }
                if room {
                    if let Some(s) = f.free.pop() {
                        return Ok(Some(s));
                    }
                }
            }
            self.shared.changed.notified().await;
        }
    }

    async fn submit(
        &mut self,
        buffer_id: u32,
        slot: Option<usize>,
        offset: u64,
        pts: u64,
        force_keyframe: bool,
    ) -> Result<()> {
        let record = ClientRecord::Frame(FrameRef {
            buffer_id,
            flags: if force_keyframe {
                FRAME_FORCE_KEYFRAME
            } else {
                0
            },
            offset,
            length: self.hello.frame_size,
            pts,
        });
        // In flight before the send: the daemon may answer before `send` returns.
        self.shared
            .lock()
            .in_flight
            .insert(pts, InFlight { buffer_id, slot });
        if let Err(e) = self.channel.send(&record.encode(), None).await {
            let mut f = self.shared.lock();
            f.in_flight.remove(&pts);
            if let Some(s) = slot {
                f.free.push(s);
            }
            return Err(io_error(&self.name, "frame", e));
        }
        self.frames_sent += 1;
        Ok(())
    }

    fn bad_ref(&self, what: String) -> ClientError {
        ClientError::FrameRef {
            session: self.name.clone(),
            what,
        }
    }
}

/// A free slot of the channel's own frame pool, lent out by [`FrameSender::reserve`].
#[derive(Debug)]
pub struct SenderSlot<'a> {
    sender: &'a mut FrameSender,
    slot: usize,
    sent: bool,
}

impl SenderSlot<'_> {
    /// The slot's frame bytes (shared memory the card reads the frame from).
    pub fn frame(&mut self) -> &mut [u8] {
        // `wait` only hands out slots below the pool's slot count.
        self.sender.pool.slot_mut(self.slot).unwrap_or_default()
    }

    /// Sends the frame in this slot.
    pub async fn send(mut self, pts: u64, force_keyframe: bool) -> Result<()> {
        self.sent = true;
        let offset = self.sender.pool.offset(self.slot) as u64;
        self.sender
            .submit(POOL_BUFFER, Some(self.slot), offset, pts, force_keyframe)
            .await
    }
}

impl Drop for SenderSlot<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.sender.shared.lock().free.push(self.slot);
            self.sender.shared.changed.notify_one();
        }
    }
}

/// What the receiving half reads from the daemon.
#[derive(Debug)]
pub enum ChannelEvent {
    /// The card has read the frame of `pts` (in `buffer_id`): its memory may be reused.
    FrameDone { buffer_id: u32, pts: u64 },
    /// A whole encoded packet.
    Packet(Packet),
    /// The daemon acknowledged end of stream: every packet has been delivered.
    EndOfStream { frames_in: u64, frames_out: u64 },
}

/// Watches a split data channel: what the daemon still owes it, and a way to give it up
/// (see [`PacketReceiver::monitor`]).
#[derive(Debug, Clone)]
pub struct ChannelMonitor {
    shared: Arc<Shared>,
}

impl ChannelMonitor {
    /// Whether the daemon owes the channel something: a `FRAME_DONE` for a frame sent, or
    /// the end of stream after [`FrameSender::finish`]. A caller that sees nothing
    /// arrive for long while something is owed may judge the daemon hung and
    /// [`abandon`](ChannelMonitor::abandon) the channel.
    pub fn owed(&self) -> bool {
        let f = self.shared.lock();
        f.ended.is_none() && (!f.in_flight.is_empty() || f.eos_owed)
    }

    /// Frames sent whose `FRAME_DONE` has not arrived yet.
    pub fn frames_in_flight(&self) -> usize {
        self.shared.lock().in_flight.len()
    }

    /// Gives the channel up for both halves: the sender's waits (and later calls) fail
    /// with [`ClientError::ChannelEnded`] carrying `reason`. For a caller that stopped
    /// waiting for the daemon; the channel closes when both halves are dropped, which ends
    /// the session in the daemon.
    pub fn abandon(&self, reason: impl Into<String>) {
        self.shared.end(reason.into());
    }
}

/// The receiving half of a split data channel.
#[derive(Debug)]
pub struct PacketReceiver {
    name: String,
    channel: Arc<SeqPacket>,
    recv_buf: Vec<u8>,
    assembler: PacketAssembler,
    /// Packets received before the split.
    packets: VecDeque<Packet>,
    shared: Arc<Shared>,
    eos_acked: bool,
    counters: SessionCounters,
}

impl PacketReceiver {
    /// Packets, bytes and keyframes received so far (`frames_sent` is the sender's).
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// A handle that watches this channel from another task or thread while
    /// [`next_event`](PacketReceiver::next_event) waits.
    pub fn monitor(&self) -> ChannelMonitor {
        ChannelMonitor {
            shared: self.shared.clone(),
        }
    }

    /// The next event, waiting for it. After [`ChannelEvent::EndOfStream`], or after an
    /// error, the channel is over: further calls fail.
    pub async fn next_event(&mut self) -> Result<ChannelEvent> {
        if let Some(p) = self.packets.pop_front() {
            return Ok(ChannelEvent::Packet(p));
        }
        match self.read().await {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.shared.end(e.to_string());
                Err(e)
            }
        }
    }

    async fn read(&mut self) -> Result<ChannelEvent> {
        if self.eos_acked {
            return Err(ClientError::ChannelClosed {
                session: self.name.clone(),
            });
        }
        loop {
            let record = recv_record(&self.channel, &mut self.recv_buf, &self.name).await?;
            match record {
                DaemonRecord::FrameDone { buffer_id, pts } => {
                    let mut f = self.shared.lock();
                    match f.in_flight.get(&pts) {
                        Some(i) if i.buffer_id == buffer_id => {
                            if let Some(s) = i.slot {
                                f.free.push(s);
                            }
                            f.in_flight.remove(&pts);
                        }
                        _ => {
                            drop(f);
                            return Err(self.protocol(format!(
                                "frame-done for buffer {buffer_id} pts {pts}, which is not in flight"
                            )));
                        }
                    }
                    drop(f);
                    self.shared.changed.notify_one();
                    return Ok(ChannelEvent::FrameDone { buffer_id, pts });
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
                        return Ok(ChannelEvent::Packet(p));
                    }
                }
                DaemonRecord::EndOfStreamAck {
                    frames_in,
                    frames_out,
                } => {
                    self.eos_acked = true;
                    self.shared.lock().eos_owed = false;
                    self.shared.end("end of stream".into());
                    return Ok(ChannelEvent::EndOfStream {
                        frames_in,
                        frames_out,
                    });
                }
                DaemonRecord::BufferReleased { .. } => {}
                DaemonRecord::Hello(_) => {
                    return Err(self.protocol("a second hello record".into()));
                }
                DaemonRecord::Error { code, message } => {
                    return Err(session_failed(&self.name, code, message));
                }
            }
        }
    }

    fn protocol(&self, what: String) -> ClientError {
        ClientError::ChannelProtocol {
            session: self.name.clone(),
            what,
        }
    }
}

impl Drop for PacketReceiver {
    fn drop(&mut self) {
        self.shared.end("the receiving half was dropped".into());
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
