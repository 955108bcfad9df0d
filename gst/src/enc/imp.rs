//! `vpuh264enc`'s implementation of the `GstVideoEncoder` hooks.
//!
//! Threads: the streaming thread runs `set_format`, `handle_frame`, `finish` and `flush`
//! holding the base class's stream lock; the output thread of the open session
//! (`session.rs`) takes the same lock to finish frames. Whenever the streaming thread
//! waits on the session (a full window, the end of stream, the output thread ending) it
//! releases the stream lock, as `v4l2videoenc` does, so the output thread keeps pushing.
//! The tokio runtime (one worker) carries the D-Bus connection and the channel's I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use gst::glib;
use gst::glib::translate::ToGlibPtr;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use gst_video::video_codec_state::Readable;
use gst_video::{VideoCodecFrameFlags, VideoCodecState, VideoFormat};
use tokio::runtime::{Handle, Runtime};
use vpud_client::{Client, ClientError};

use super::frame::Tight;
use super::pool::{Arena, SlotPool};
use super::props::{self, RateControl, Settings};
use super::session::{Active, ARENA_BUFFER};

/// Slots of the element's pool beyond the session's window: buffers upstream fills
/// while the window's frames are on the card.
const EXTRA_SLOTS: usize = 4;

/// What exists between `start` and `stop`.
#[derive(Debug, Default)]
struct State {
    client: Option<Client>,
    /// The input format, to reopen a session after a flush.
    input: Option<VideoCodecState<'static, Readable>>,
    layout: Option<Tight>,
    /// The pool proposed upstream and its memfd (only when GStreamer's layout of the
    /// input is the card's).
    arena: Option<Arc<Arena>>,
    pool: Option<SlotPool>,
    active: Option<Active>,
}

#[derive(Debug, Default)]
pub struct VpuH264Enc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    runtime: OnceLock<Runtime>,
    frames_copied: AtomicU64,
    frames_by_reference: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Re-takes the stream lock when dropped (see [`VpuH264Enc::unlocked`]).
struct Relock(*mut glib::ffi::GRecMutex);

impl Drop for Relock {
    fn drop(&mut self) {
        // SAFETY: the pointer is the live element's stream lock, released by `unlocked`
        // on this thread; taking it back restores what the base class expects.
        unsafe { glib::ffi::g_rec_mutex_lock(self.0) };
    }
}

impl VpuH264Enc {
    fn runtime(&self) -> Result<Handle, gst::ErrorMessage> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt.handle().clone());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vpuh264enc-io")
            .enable_all()
            .build()
            .map_err(|e| {
                gst::error_msg!(
                    gst::CoreError::Failed,
                    ["starting the I/O runtime failed: {}", e]
                )
            })?;
        Ok(self.runtime.get_or_init(|| rt).handle().clone())
    }

    /// Runs `f` with the stream lock released. The streaming thread holds the lock once
    /// (the base class takes it around every hook; callers drop their
    /// `VideoCodecFrame`, which holds it too, first).
    fn unlocked<R>(&self, f: impl FnOnce() -> R) -> R {
        let obj = self.obj();
        let enc: *mut gst_video::ffi::GstVideoEncoder =
            obj.upcast_ref::<gst_video::VideoEncoder>().to_glib_none().0;
        // SAFETY: `enc` is this live element; `stream_lock` is its GRecMutex, which the
        // base class holds on this thread while it runs the hook we are in.
        let lock = unsafe { std::ptr::addr_of_mut!((*enc).stream_lock) };
        // SAFETY: held once by this thread (above), so unlocking once releases it.
        unsafe { glib::ffi::g_rec_mutex_unlock(lock) };
        let _relock = Relock(lock);
        f()
    }

    /// Opens a session for the current input and registers the pool's memfd with it.
    fn open(&self, st: &mut State) -> Result<(), gst::ErrorMessage> {
        let rt = self.runtime()?;
        let settings = lock(&self.settings).clone();
        let (Some(client), Some(input), Some(layout)) = (&st.client, &st.input, st.layout) else {
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ["no input format before the first frame"]
            ));
        };
        let info = input.info();
        let fps = info.fps();
        let fps = if fps.numer() > 0 {
            (fps.numer() as u32, fps.denom() as u32)
        } else {
            // Variable frame rate: the session's cost model needs one; assume 30.
            (30, 1)
        };
        let pixel_format = match layout.format {
            VideoFormat::Nv12 => "nv12",
            _ => "i420",
        };
        let card = if settings.card.is_empty() {
            None
        } else {
            Some(
                rt.block_on(client.resolve_card(&settings.card))
                    .map_err(|e| {
                        gst::error_msg!(
                            gst::ResourceError::NotFound,
                            ["card {}: {}", settings.card, e]
                        )
                    })?,
            )
        };
        let params = settings.session_params(info.width(), info.height(), fps, pixel_format, card);
        let described = format!(
            "{}x{} {} at {}/{} fps",
            info.width(),
            info.height(),
            pixel_format,
            fps.0,
            fps.1
        );
        let timeout = Duration::from_millis(u64::from(settings.timeout_ms));
        let mut active = Active::open(&rt, client, &params, &self.obj(), input.clone(), timeout)
            .map_err(|e| session_error(&e, &described))?;
        let window = usize::from(active.sender.hello().window);
        if layout.matches(info) {
            let reuse = st.arena.as_ref().is_some_and(|a| {
                a.pool().frame_size() == layout.size() && a.pool().slots() > window
            });
            if !reuse {
                let arena = Arena::new(window + EXTRA_SLOTS, layout.size()).map_err(|e| {
                    gst::error_msg!(gst::ResourceError::NoSpaceLeft, ["frame memory: {}", e])
                })?;
                let arena = Arc::new(arena);
                let caps = info.to_caps().map_err(|e| {
                    gst::error_msg!(gst::CoreError::Negotiation, ["input caps: {}", e])
                })?;
                let pool = SlotPool::new(arena.clone(), &caps)
                    .map_err(|e| gst::error_msg!(gst::CoreError::Failed, ["buffer pool: {}", e]))?;
                st.arena = Some(arena);
                st.pool = Some(pool);
            }
            if let Some(arena) = &st.arena {
                active
                    .register(&rt, arena.clone())
                    .map_err(|e| session_error(&e, &described))?;
            }
        }
        // A frame comes out about one frame time after it went in; at most a window later.
        let frame_time =
            gst::ClockTime::from_nseconds(1_000_000_000 * u64::from(fps.1) / u64::from(fps.0));
        self.obj()
            .set_latency(frame_time, Some(frame_time * window as u64));
        gst::info!(
            gst::CAT_DEFAULT,
            imp = self,
            "session {} for {described}, window {window}",
            active.path
        );
        st.active = Some(active);
        Ok(())
    }

    /// Ends the open session after every frame sent has come out (end of stream, caps
    /// change). Returns what the output thread ran into.
    fn drain(&self, st: &mut State) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(mut active) = st.active.take() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        let rt = self.runtime().map_err(|_| gst::FlowError::Error)?;
        if let Err(e) = active.finish(&rt) {
            // The output thread sees the channel end too and reports it.
            gst::debug!(gst::CAT_DEFAULT, imp = self, "end of stream: {e}");
        }
        self.unlocked(|| active.join());
        match active.output.failed() {
            Some(e) => Err(e),
            None => Ok(gst::FlowSuccess::Ok),
        }
    }

    /// Drops the open session at once (flush, stop): frames in flight are discarded.
    fn discard(&self, st: &mut State) {
        if let Some(mut active) = st.active.take() {
            active.cancel();
            self.unlocked(|| active.join());
        }
    }

    /// Sends one frame: in place when it lies in the session's pool memfd, else copied
    /// into a slot of the channel's own pool.
    fn send(
        &self,
        st: &mut State,
        buffer: &gst::Buffer,
        number: u64,
        force_keyframe: bool,
    ) -> Result<(), SendError> {
        let rt = self.runtime().map_err(|_| SendError::Posted)?;
        let (Some(input), Some(layout)) = (&st.input, st.layout) else {
            return Err(SendError::Posted);
        };
        let info = input.info().clone();
        let Some(active) = st.active.as_mut() else {
            return Err(SendError::Posted);
        };
        if active.output.failed().is_some() {
            return Err(SendError::Posted);
        }
        let in_place = active.arena.as_ref().and_then(|arena| {
            // A producer's video meta may move planes; only the card's layout goes as is.
            if let Some(meta) = buffer.meta::<gst_video::VideoMeta>() {
                let ours = layout.offsets_strides();
                let same = meta.n_planes() as usize == ours.len()
                    && ours.iter().enumerate().all(|(i, &(o, s))| {
                        meta.offset()[i] == o && usize::try_from(meta.stride()[i]) == Ok(s)
                    });
                if !same {
                    return None;
                }
            }
            if buffer.n_memory() != 1 {
                return None;
            }
            let map = buffer.map_readable().ok()?;
            if map.size() < layout.size() {
                return None;
            }
            arena.offset_of(map.as_ptr(), layout.size())
        });
        let sender = &mut active.sender;
        let sent = if let Some(offset) = in_place {
            let r = self.unlocked(|| {
                rt.block_on(sender.send_ref(ARENA_BUFFER, offset, number, force_keyframe))
            });
            self.frames_by_reference.fetch_add(1, Ordering::Relaxed);
            r
        } else {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info)
                .map_err(|_| SendError::Layout)?;
            let r = self.unlocked(|| {
                rt.block_on(async {
                    let mut slot = sender.reserve(number).await?;
                    if !layout.copy(&frame, slot.frame()) {
                        return Ok(false);
                    }
                    slot.send(number, force_keyframe).await.map(|()| true)
                })
            });
            self.frames_copied.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(true) => Ok(()),
                Ok(false) => return Err(SendError::Layout),
                Err(e) => Err(e),
            }
        };
        sent.map_err(|e| {
            // When the daemon ended the session, the output thread, reading the same
            // channel, posts why: waiting for it keeps that the pipeline's first error.
            let output = &active.output;
            let ended = matches!(e, ClientError::ChannelEnded { .. });
            if output.failed().is_some()
                || (ended && self.unlocked(|| output.wait_failed(POSTED_WAIT)).is_some())
            {
                SendError::Posted
            } else {
                SendError::Client(e)
            }
        })
    }

    /// Asks the daemon for a keyframe on frame `number`, the next one to be sent: first
    /// waits until every frame in flight is done, so the request cannot land on an
    /// earlier one (a stall of one window, once per forced keyframe), then calls
    /// `Session.RequestKeyframe`. Returns whether the request was made.
    fn request_keyframe(&self, st: &mut State, number: u64) -> bool {
        let Ok(rt) = self.runtime() else {
            return false;
        };
        let Some(active) = st.active.as_mut() else {
            return false;
        };
        let sender = &mut active.sender;
        let proxy = &active.proxy;
        let r = self.unlocked(|| {
            rt.block_on(async {
                sender.wait_idle().await?;
                proxy
                    .request_keyframe()
                    .await
                    .map_err(|e| ClientError::from_call("Session.RequestKeyframe", e))
            })
        });
        match r {
            Ok(()) => {
                gst::debug!(
                    gst::CAT_DEFAULT,
                    imp = self,
                    "keyframe requested on frame {number}"
                );
                true
            }
            Err(e) => {
                gst::debug!(
                    gst::CAT_DEFAULT,
                    imp = self,
                    "RequestKeyframe for frame {number}: {e}; flagging the frame instead"
                );
                false
            }
        }
    }

    /// Changes the open session's bit rate (`Session.Reconfigure`), without waiting.
    fn reconfigure_bitrate(&self, kbps: u32) {
        let Ok(rt) = self.runtime() else { return };
        let rate_control = lock(&self.settings).rate_control;
        if rate_control == RateControl::Cqp {
            return;
        }
        let mut st = lock(&self.state);
        let Some(active) = st.active.as_mut() else {
            return;
        };
        let bps = kbps.saturating_mul(1000);
        if active.bitrate == Some(bps) {
            return;
        }
        active.bitrate = Some(bps);
        let proxy = active.proxy.clone();
        let element = self.obj().downgrade();
        rt.spawn(async move {
            let mut changes = HashMap::new();
            changes.insert("bitrate", zbus::Variant::from(bps));
            if let Err(e) = proxy.reconfigure(changes).await {
                let e = ClientError::from_call("Session.Reconfigure", e);
                if let Some(element) = element.upgrade() {
                    gst::element_warning!(
                        element,
                        gst::LibraryError::Settings,
                        ("changing the bit rate to {} kbit/s failed: {}", kbps, e)
                    );
                }
            }
        });
    }
}

/// How long a streaming thread that found the channel ended waits for the output thread
/// to post why.
const POSTED_WAIT: Duration = Duration::from_secs(2);

/// Why a frame could not be sent.
#[derive(Debug)]
enum SendError {
    /// Already reported on the bus (by the output thread, or before).
    Posted,
    /// The buffer does not hold a frame of the negotiated format.
    Layout,
    Client(ClientError),
}

/// A readable error message for a session that could not be opened.
fn session_error(e: &ClientError, what: &str) -> gst::ErrorMessage {
    match e {
        ClientError::NoCapacity(msg) => gst::error_msg!(
            gst::ResourceError::Busy,
            [
                "no VPU card has capacity for an H.264 encode of {}: {}",
                what,
                msg
            ]
        ),
        ClientError::QuotaExceeded(msg) => gst::error_msg!(
            gst::ResourceError::Busy,
            ["vpud's quota refuses an H.264 encode of {}: {}", what, msg]
        ),
        ClientError::InvalidArgument(_) | ClientError::NotSupported(_) => gst::error_msg!(
            gst::CoreError::Negotiation,
            ["vpud cannot encode {}: {}", what, e]
        ),
        other => gst::error_msg!(
            gst::ResourceError::OpenWrite,
            ["opening a vpud session for {} failed: {}", what, other]
        ),
    }
}

#[glib::object_subclass]
impl ObjectSubclass for VpuH264Enc {
    const NAME: &'static str = "GstVpuH264Enc";
    type Type = super::VpuH264Enc;
    type ParentType = gst_video::VideoEncoder;
    type Interfaces = (gst::Preset,);
}

impl ObjectImpl for VpuH264Enc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: OnceLock<Vec<glib::ParamSpec>> = OnceLock::new();
        PROPS.get_or_init(props::specs)
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let changed = props::set(&mut lock(&self.settings), value, pspec);
        if changed {
            let kbps = lock(&self.settings).bitrate;
            self.reconfigure_bitrate(kbps);
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "frames-copied" => self.frames_copied.load(Ordering::Relaxed).to_value(),
            "frames-by-reference" => self.frames_by_reference.load(Ordering::Relaxed).to_value(),
            _ => props::get(&lock(&self.settings), pspec)
                .unwrap_or_else(|| pspec.default_value().clone()),
        }
    }
}

impl GstObjectImpl for VpuH264Enc {}
impl PresetImpl for VpuH264Enc {}

impl ElementImpl for VpuH264Enc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: OnceLock<gst::subclass::ElementMetadata> = OnceLock::new();
        Some(META.get_or_init(|| {
            gst::subclass::ElementMetadata::new(
                "VPU H.264 encoder",
                "Codec/Encoder/Video/Hardware",
                "Encodes H.264 on VPU cards through vpud",
                "The vpud project",
            )
        }))
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: OnceLock<Vec<gst::PadTemplate>> = OnceLock::new();
        TEMPLATES.get_or_init(|| {
            let sink = gst_video::VideoCapsBuilder::new()
                .format_list([VideoFormat::I420, VideoFormat::Nv12])
                .width_range(16..=8192)
                .height_range(16..=8192)
                .build();
            let src = gst::Caps::builder("video/x-h264")
                .field("stream-format", "byte-stream")
                .field("alignment", "au")
                .field(
                    "profile",
                    gst::List::new(["constrained-baseline", "baseline", "main", "high"]),
                )
                .build();
            let templates = [
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &sink,
                ),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src,
                ),
            ];
            // Fixed caps built above: building their templates cannot fail.
            templates.into_iter().flatten().collect()
        })
    }
}

impl VideoEncoderImpl for VpuH264Enc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let rt = self.runtime()?;
        let bus = lock(&self.settings).bus_address.clone();
        let bus = (!bus.is_empty()).then_some(bus);
        let client = rt.block_on(Client::connect(bus.as_deref())).map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenRead, ["cannot reach vpud: {}", e])
        })?;
        *lock(&self.state) = State {
            client: Some(client),
            ..State::default()
        };
        self.frames_copied.store(0, Ordering::Relaxed);
        self.frames_by_reference.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let mut st = lock(&self.state);
        // Called without the stream lock held by this thread: join directly.
        if let Some(mut active) = st.active.take() {
            active.cancel();
            active.join();
        }
        *st = State::default();
        Ok(())
    }

    fn set_format(
        &self,
        state: &VideoCodecState<'static, Readable>,
    ) -> Result<(), gst::LoggableError> {
        let mut st = lock(&self.state);
        // A new format: what the old session has in flight comes out first.
        if let Err(e) = self.drain(&mut st) {
            return Err(gst::loggable_error!(
                gst::CAT_DEFAULT,
                "draining before a caps change: {e:?}"
            ));
        }
        let info = state.info();
        let format = info.format();
        if !matches!(format, VideoFormat::I420 | VideoFormat::Nv12) {
            return Err(gst::loggable_error!(
                gst::CAT_DEFAULT,
                "unsupported format {format:?}"
            ));
        }
        st.layout = Some(Tight {
            format,
            width: info.width() as usize,
            height: info.height() as usize,
        });
        st.input = Some(state.clone());
        if let Err(msg) = self.open(&mut st) {
            self.post_error_message(msg);
            return Err(gst::loggable_error!(
                gst::CAT_DEFAULT,
                "opening a vpud session failed"
            ));
        }
        Ok(())
    }

    fn handle_frame(
        &self,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let number = u64::from(frame.system_frame_number());
        let force = frame.flags().contains(VideoCodecFrameFlags::FORCE_KEYFRAME);
        let buffer = frame.input_buffer_owned().ok_or(gst::FlowError::Error)?;
        // The frame holds the stream lock; waits below release it.
        drop(frame);
        let mut st = lock(&self.state);
        if st.active.is_none() {
            // After a flush or an end of stream: a new session, same format.
            if let Err(msg) = self.open(&mut st) {
                self.post_error_message(msg);
                return Err(gst::FlowError::Error);
            }
        }
        // A forced keyframe goes through Session.RequestKeyframe, which applies to the
        // next frame the daemon reads; the per-frame flag is the fallback if the call fails.
        let force = force && !self.request_keyframe(&mut st, number);
        match self.send(&mut st, &buffer, number, force) {
            Ok(()) => Ok(gst::FlowSuccess::Ok),
            Err(SendError::Posted) => Err(st
                .active
                .as_ref()
                .and_then(|a| a.output.failed())
                .unwrap_or(gst::FlowError::Error)),
            Err(SendError::Layout) => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    [
                        "frame {} does not hold a frame of the negotiated format",
                        number
                    ]
                );
                Err(gst::FlowError::Error)
            }
            Err(SendError::Client(e)) => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Write,
                    ("sending a frame to vpud failed: {}", e)
                );
                Err(gst::FlowError::Error)
            }
        }
    }

    fn finish(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut st = lock(&self.state);
        self.drain(&mut st)
    }

    fn flush(&self) -> bool {
        let mut st = lock(&self.state);
        self.discard(&mut st);
        true
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        {
            let st = lock(&self.state);
            if let (Some(pool), Some(arena), Some(layout)) = (&st.pool, &st.arena, st.layout) {
                let (caps, _need_pool) = query.get_owned();
                let fits = caps.is_some_and(|caps| {
                    gst_video::VideoInfo::from_caps(&caps)
                        .is_ok_and(|info| info.format() == layout.format && layout.matches(&info))
                });
                if fits {
                    // First in the query, so a producer takes it; the base class then adds
                    // no pool of its own.
                    let slots = u32::try_from(arena.pool().slots()).unwrap_or(u32::MAX);
                    query.add_allocation_pool(
                        Some(pool.upcast_ref::<gst::BufferPool>()),
                        u32::try_from(layout.size()).unwrap_or(u32::MAX),
                        slots,
                        slots,
                    );
                    gst::debug!(gst::CAT_DEFAULT, imp = self, "proposed the session's pool");
                }
            }
        }
        self.parent_propose_allocation(query)
    }
}
