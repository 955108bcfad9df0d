//! An open vpud session of the element: the sending half of its data channel, used by
//! the streaming thread, and the output thread, which owns the receiving half and pushes
//! each packet downstream as it arrives. Several frames are in flight to the card at once
//! (the session's window); the streaming thread only waits when the window is full.
//!
//! A daemon that stops answering (hung, not gone: its channel stays open) is given up
//! after the `timeout` property: when frames in flight, or the end of stream, go
//! unanswered that long, the output thread posts an error and abandons the channel,
//! which also wakes a streaming thread waiting for room in the window.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gst_video::prelude::*;
use tokio::runtime::Handle;
use tokio::sync::watch;
use vpud_client::proxy::SessionProxy;
use vpud_client::{
    ChannelEvent, ChannelMonitor, Client, ClientError, FrameSender, PacketReceiver, SessionParams,
};
use zbus::OwnedObjectPath;

use super::caps::profile_level;
use super::pool::Arena;
use super::VpuH264Enc;

/// Buffer id of the element's pool memfd in every session (0 is the channel's own).
pub const ARENA_BUFFER: u32 = 1;

/// What the output thread reports back.
#[derive(Debug, Default)]
pub struct Output {
    /// The first failure pushing downstream or reading from the daemon; the streaming
    /// thread returns it from its next call.
    flow: Mutex<Option<gst::FlowError>>,
    /// Signalled when `flow` is set.
    set: Condvar,
}

impl Output {
    pub fn failed(&self) -> Option<gst::FlowError> {
        *self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The failure, once the output thread recorded one (after posting why), waiting for
    /// it at most `within`.
    pub fn wait_failed(&self, within: Duration) -> Option<gst::FlowError> {
        let flow = self.flow.lock().unwrap_or_else(|e| e.into_inner());
        let (flow, _) = self
            .set
            .wait_timeout_while(flow, within, |f| f.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *flow
    }

    fn fail(&self, e: gst::FlowError) {
        self.flow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
        self.set.notify_all();
    }
}

/// One open session.
#[derive(Debug)]
pub struct Active {
    pub path: OwnedObjectPath,
    pub proxy: SessionProxy<'static>,
    pub sender: FrameSender,
    /// The element's pool memfd, once registered with this session.
    pub arena: Option<Arc<Arena>>,
    pub output: Arc<Output>,
    /// The bit rate (bit/s) the session runs at.
    pub bitrate: Option<u32>,
    thread: Option<JoinHandle<()>>,
    cancel: watch::Sender<bool>,
}

impl Active {
    /// Opens a session with `params` and starts its output thread, which pushes packets
    /// through `element`; `input` is the input state output caps are derived from;
    /// `timeout` (zero: none) is how long the daemon may leave what it owes unanswered.
    pub fn open(
        rt: &Handle,
        client: &Client,
        params: &SessionParams,
        element: &VpuH264Enc,
        input: gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
        timeout: Duration,
    ) -> Result<Active, ClientError> {
        let session = rt.block_on(client.create_session(params))?;
        let (path, proxy, channel) = session.into_parts();
        let (sender, receiver) = channel.split();
        let monitor = receiver.monitor();
        let output = Arc::new(Output::default());
        let (cancel, cancelled) = watch::channel(false);
        let ctx = OutputThread {
            rt: rt.clone(),
            element: element.clone(),
            receiver,
            cancelled,
            output: output.clone(),
            input,
            caps_set: false,
            path: path.to_string(),
            timeout,
            monitor,
        };
        let thread = std::thread::Builder::new()
            .name("vpuh264enc-out".into())
            .spawn(move || ctx.run())
            .map_err(|source| ClientError::ChannelIo {
                session: path.to_string(),
                op: "starting the output thread",
                source,
            })?;
        Ok(Active {
            path,
            proxy,
            sender,
            arena: None,
            output,
            bitrate: params.bitrate,
            thread: Some(thread),
            cancel,
        })
    }

    /// Registers the element's pool memfd with the session.
    pub fn register(&mut self, rt: &Handle, arena: Arc<Arena>) -> Result<(), ClientError> {
        let pool = arena.pool();
        rt.block_on(
            self.sender
                .register_buffer(ARENA_BUFFER, pool.fd(), pool.len() as u64),
        )?;
        self.arena = Some(arena);
        Ok(())
    }

    /// Sends end of stream; the output thread pushes the remaining packets and ends.
    /// Then [`Active::join`] it (with the stream lock released).
    pub fn finish(&mut self, rt: &Handle) -> Result<(), ClientError> {
        rt.block_on(self.sender.finish())
    }

    /// Tells the output thread to stop at once (flush, stop): packets still to come are
    /// dropped, and the channel closes when the thread ends, which ends the session.
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Waits for the output thread to end. The caller must not hold the stream lock: the
    /// thread takes it to push packets.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                self.output.fail(gst::FlowError::Error);
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // Never leave the thread waiting on a channel no one will finish.
        self.cancel();
    }
}

/// What the output thread's wait for the daemon ended with.
enum Wait {
    /// The element stopped the thread.
    Cancelled,
    /// Something was owed and nothing came for the timeout.
    Hung,
    Event(Result<ChannelEvent, ClientError>),
}

/// The output thread's state.
struct OutputThread {
    rt: Handle,
    element: VpuH264Enc,
    receiver: PacketReceiver,
    cancelled: watch::Receiver<bool>,
    output: Arc<Output>,
    input: gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
    /// Whether output caps were set from this session's stream.
    caps_set: bool,
    path: String,
    /// How long the daemon may owe an answer (zero: for ever).
    timeout: Duration,
    monitor: ChannelMonitor,
}

impl OutputThread {
    fn run(mut self) {
        loop {
            let receiver = &mut self.receiver;
            let cancelled = &mut self.cancelled;
            let (monitor, timeout) = (&self.monitor, self.timeout);
            // Checked every tenth of the timeout: time with something owed and no
            // event adds up to the timeout, and then the daemon is taken for hung.
            let tick = (timeout / 10).max(Duration::from_millis(10));
            let event = self.rt.block_on(async {
                let next = receiver.next_event();
                tokio::pin!(next);
                let mut quiet = Duration::ZERO;
                loop {
                    tokio::select! {
                        biased;
                        _ = cancelled.wait_for(|c| *c) => return Wait::Cancelled,
                        ev = &mut next => return Wait::Event(ev),
                        _ = tokio::time::sleep(tick), if !timeout.is_zero() => {
                            if !monitor.owed() {
                                quiet = Duration::ZERO;
                            } else {
                                quiet += tick;
                                if quiet >= timeout {
                                    return Wait::Hung;
                                }
                            }
                        }
                    }
                }
            });
            match event {
                Wait::Cancelled => return,
                Wait::Hung => {
                    let in_flight = self.monitor.frames_in_flight();
                    let why = format!(
                        "vpud did not answer for {} ms ({in_flight} frames in flight)",
                        self.timeout.as_millis()
                    );
                    // Posted before the streaming thread, woken by the abandoned
                    // channel, returns its error: the pipeline's first error says why.
                    self.stopped(&why);
                    self.monitor.abandon(why);
                    return;
                }
                Wait::Event(Ok(ChannelEvent::FrameDone { .. })) => {}
                Wait::Event(Ok(ChannelEvent::Packet(p))) => {
                    if let Err(e) = self.push(p) {
                        gst::debug!(
                            gst::CAT_DEFAULT,
                            obj = &self.element,
                            "pushing downstream: {e:?}"
                        );
                        self.output.fail(e);
                    }
                }
                Wait::Event(Ok(ChannelEvent::EndOfStream {
                    frames_in,
                    frames_out,
                })) => {
                    gst::debug!(
                        gst::CAT_DEFAULT,
                        obj = &self.element,
                        "{}: end of stream, {frames_in} frames in, {frames_out} packets out",
                        self.path
                    );
                    return;
                }
                Wait::Event(Err(e)) => {
                    if !*self.cancelled.borrow() {
                        self.stopped(&e);
                    }
                    return;
                }
            }
        }
    }

    /// Posts why the daemon stopped encoding; the streaming thread returns the error.
    fn stopped(&self, why: &dyn std::fmt::Display) {
        gst::element_error!(
            self.element,
            gst::ResourceError::Failed,
            ("vpud stopped encoding: {}", why),
            ["session {}", self.path]
        );
        self.output.fail(gst::FlowError::Error);
    }

    /// Finishes the frame a packet belongs to (its pts is the frame's number).
    fn push(&mut self, p: vpud_client::Packet) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Ok(number) = i32::try_from(p.pts) else {
            return Ok(gst::FlowSuccess::Ok);
        };
        if !self.caps_set && !p.data.is_empty() {
            self.set_caps(&p.data)?;
        }
        let Some(mut frame) = self.element.frame(number) else {
            // Flushed meanwhile.
            return Ok(gst::FlowSuccess::Ok);
        };
        if p.data.is_empty() {
            // The encoder skipped the frame: finishing it without output drops it.
            return self.element.finish_frame(frame);
        }
        if p.keyframe {
            frame.set_flags(gst_video::VideoCodecFrameFlags::SYNC_POINT);
        }
        frame.set_output_buffer(gst::Buffer::from_mut_slice(p.data));
        self.element.finish_frame(frame)
    }

    /// Output caps with the profile and level of the session's first SPS.
    fn set_caps(&mut self, access_unit: &[u8]) -> Result<(), gst::FlowError> {
        let mut caps = gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au");
        if let Some(pl) = profile_level(access_unit) {
            caps = caps.field("profile", pl.profile).field("level", pl.level);
        }
        let state = self
            .element
            .set_output_state(caps.build(), Some(&self.input))
            .map_err(|_| gst::FlowError::NotNegotiated)?;
        self.element
            .negotiate(state)
            .map_err(|_| gst::FlowError::NotNegotiated)?;
        self.caps_set = true;
        Ok(())
    }
}
