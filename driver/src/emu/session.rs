//! Encode sessions: the persistent encoder of each (`openh264` on H.264 engines, `rav1e`
//! on AV1 engines, see `av1` and `av1_jobs`), and Encode Frame.
//!
//! The input frame is read straight from the host's DMA memory: the planes are slices of
//! the mapped region, handed to the encoder as a `YUVSource` with the session's strides.
//! Only NV12 chroma (de-interleaved into I420 planes) and frames scattered over several
//! host regions are copied, into buffers the session keeps between frames.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use openh264::encoder::{Encoder, FrameType};
use openh264::formats::YUVSource;
use openh264::OpenH264API;
use vpu_ffi::*;

use super::av1::{Av1Encoder, Av1Input, Rate, TemporalUnit};
use super::av1_jobs::Held;
use super::config::EngineCodec;
use super::frames::CardFrame;
use super::lock;
pub(super) use super::params::SessionParams;
use super::prp::{HostSpan, Spans};
use super::queues::Status;

/// Per-session counters (the session log).
#[derive(Debug, Default)]
pub(super) struct SessionCounters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub keyframes: AtomicU64,
    pub errors: AtomicU64,
}

/// Changes asked for by Reconfigure Session, applied before the next frame.
#[derive(Debug, Default)]
struct Pending {
    force_idr: bool,
    bitrate: Option<u32>,
    fps: Option<(u32, u32)>,
}

/// Buffers an input frame is staged in when it cannot be read in place.
#[derive(Default)]
struct Staging {
    /// A frame gathered from several host regions.
    gather: Vec<u8>,
    /// NV12 chroma de-interleaved to U and V planes.
    chroma: Vec<u8>,
}

/// The encoder of an H.264 session.
struct Codec {
    encoder: Encoder,
    /// Whether the encoder has seen a frame (openh264 initialises on the first one).
    started: bool,
    /// Whether the VBR peak has been given to the encoder (possible once it started).
    peak_set: bool,
    bitrate: u32,
    fps: f32,
    /// The next frame must be an IDR (after a coded frame was lost: it could not be
    /// written, or was dropped from `kept`).
    idr_next: bool,
    /// Coded frames whose output buffer was too small, by pts, oldest first, kept for
    /// the retry of the same frame (at most [`KEPT_MAX`]).
    kept: VecDeque<(u64, Coded)>,
    staging: Staging,
    /// Lowest QP the rate control may choose; raised when a frame overflows the encoder.
    qp_floor: u8,
}

/// QP floors tried in turn when openh264 cannot hold a frame's bitstream: high-entropy
/// input (sensor noise, static) at a generous bitrate drives QP so low that an I frame
/// overflows the encoder's internal buffer, and openh264 fails the frame. A hardware
/// engine clamps QP instead of failing; so does this one, then re-codes the frame as an IDR.
const QP_FLOORS: [u8; 4] = [0, 24, 32, 40];

/// How many coded frames a session keeps for retries at once. Frames submitted behind
/// one whose output did not fit are coded before its retry comes; each may overflow too.
const KEPT_MAX: usize = 8;

/// One coded H.264 frame: its Annex-B bytes, frame type and whether it is a keyframe.
struct Coded {
    bytes: Vec<u8>,
    frame_type: u32,
    keyframe: bool,
}

/// A session's encoder, with the buffers its input is staged in.
enum Coder {
    // Both boxed: the encoders' states are kilobytes, of different sizes.
    H264(Box<Mutex<Codec>>),
    Av1(Box<Mutex<(Av1Encoder, Staging)>>),
}

/// One encode session, placed on one engine.
pub(super) struct Session {
    pub id: u32,
    pub engine: u8,
    pub params: SessionParams,
    pub counters: SessionCounters,
    /// Set when the session is destroyed; queued work completes SESSION_ABORTED.
    pub destroyed: AtomicBool,
    pending: Mutex<Pending>,
    codec: Coder,
    /// AV1 Encode Frame commands whose temporal units have not come out yet, oldest
    /// first, and a unit kept for the retry of a command whose buffer was too small.
    /// Locked after (never while waiting for) the controller state.
    pub held: Mutex<Held>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("engine", &self.engine)
            .finish()
    }
}

/// What an Encode Frame produced.
#[derive(Debug, Clone, Copy)]
pub(super) struct Encoded {
    pub bytes: u32,
    pub frame_type: u32,
    pub keyframe: bool,
}

/// Where Encode Frame's picture is: host memory (PRPs) or card frame memory.
pub(super) enum EncodeInput {
    Host(Spans),
    /// A decoded or scaled picture of the session's size (`VPU_ENCODE_CARD_FRAME`).
    Card(std::sync::Arc<CardFrame>),
}

/// An input frame as the encoder sees it: planes in host memory, with strides.
struct Planes<'a> {
    width: usize,
    height: usize,
    y: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
    stride_y: usize,
    stride_uv: usize,
}

impl YUVSource for Planes<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (self.stride_y, self.stride_uv, self.stride_uv)
    }
    fn y(&self) -> &[u8] {
        self.y
    }
    fn u(&self) -> &[u8] {
        self.u
    }
    fn v(&self) -> &[u8] {
        self.v
    }
}

fn new_encoder(
    params: &SessionParams,
    bitrate: u32,
    fps: f32,
    qp_floor: u8,
) -> Result<Encoder, Status> {
    let mut encoder = Encoder::with_api_config(
        OpenH264API::from_source(),
        params.encoder_config(bitrate, fps, qp_floor),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "creating the encoder failed");
        Status::generic(VPU_SC_INTERNAL_ERROR)
    })?;
    route_log(&mut encoder);
    Ok(encoder)
}

/// Receives openh264's log messages (instead of its default, stderr).
unsafe extern "C" fn encoder_log(
    _ctx: *mut std::ffi::c_void,
    level: std::ffi::c_int,
    message: *const std::ffi::c_char,
) {
    if message.is_null() {
        return;
    }
    // SAFETY: openh264 passes a NUL-terminated message that lives for the call.
    let message = unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy();
    tracing::debug!(target: "openh264", level, "{}", message.trim_end());
}

/// Sends the encoder's log messages to `tracing` (the one at initialisation warns that
/// rate control is weaker without frame skipping, which the card turns off on purpose).
fn route_log(encoder: &mut Encoder) {
    let mut callback: openh264_sys2::WelsTraceCallback = Some(encoder_log);
    // SAFETY: only the trace callback is set, an option openh264 accepts before
    // initialisation; the wrapper relies on no logging behaviour.
    let api = unsafe { encoder.raw_api() };
    // SAFETY: SetOption copies the function pointer out of `callback`, which lives on
    // this stack frame for the call; `encoder_log` is valid for the program's lifetime.
    let rc = unsafe {
        api.set_option(
            openh264_sys2::ENCODER_OPTION_TRACE_CALLBACK,
            (&mut callback as *mut openh264_sys2::WelsTraceCallback).cast(),
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "routing openh264's log failed; it logs to stderr");
    }
}

impl Session {
    pub fn new(id: u32, engine: u8, params: SessionParams) -> Result<Self, Status> {
        let codec = match params.codec {
            EngineCodec::H264 => {
                let fps = params.fps();
                let encoder = new_encoder(&params, params.bitrate, fps, QP_FLOORS[0])?;
                Coder::H264(Box::new(Mutex::new(Codec {
                    encoder,
                    started: false,
                    peak_set: false,
                    bitrate: params.bitrate,
                    fps,
                    idr_next: false,
                    kept: VecDeque::new(),
                    staging: Staging::default(),
                    qp_floor: QP_FLOORS[0],
                })))
            }
            EngineCodec::Av1 => Coder::Av1(Box::new(Mutex::new((
                Av1Encoder::new(params.clone())?,
                Staging::default(),
            )))),
        };
        Ok(Self {
            id,
            engine,
            counters: SessionCounters::default(),
            destroyed: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            codec,
            held: Mutex::new(Held::default()),
            params,
        })
    }

    /// Records a Reconfigure Session; it takes effect at the next frame.
    pub fn reconfigure(&self, force_idr: bool, bitrate: Option<u32>, fps: Option<(u32, u32)>) {
        let mut p = lock(&self.pending);
        p.force_idr |= force_idr;
        if bitrate.is_some() {
            p.bitrate = bitrate;
        }
        if fps.is_some() {
            p.fps = fps;
        }
    }

    fn apply_pending(&self, codec: &mut Codec) -> Result<bool, Status> {
        let p = std::mem::take(&mut *lock(&self.pending));
        let bitrate = p.bitrate.unwrap_or(codec.bitrate);
        let fps = p.fps.map(|(n, d)| n as f32 / d as f32).unwrap_or(codec.fps);
        let new_bitrate = (bitrate != codec.bitrate).then_some(bitrate);
        let new_fps = (fps != codec.fps).then_some(fps);
        if new_bitrate.is_some() || new_fps.is_some() {
            if !codec.started {
                codec.encoder = new_encoder(&self.params, bitrate, fps, codec.qp_floor)?;
            } else {
                let peak = self.params.max_bitrate.map_or(bitrate, |p| p.max(bitrate));
                let raising = bitrate > codec.bitrate;
                set_rate(&mut codec.encoder, new_bitrate, peak, raising, new_fps)?;
            }
            codec.bitrate = bitrate;
            codec.fps = fps;
        }
        if codec.started && !codec.peak_set {
            if let Some(peak) = self.params.max_bitrate {
                set_option_int(
                    &mut codec.encoder,
                    openh264_sys2::ENCODER_OPTION_MAX_BITRATE,
                    peak.max(codec.bitrate),
                )?;
            }
            codec.peak_set = true;
        }
        Ok(p.force_idr)
    }

    /// Codes one frame of an AV1 session. Returns the temporal units that came out, in
    /// order (of earlier frames, and of this one when the encoder's lookahead allows),
    /// and whether this frame went in: units drained before a failure are still
    /// returned.
    pub fn encode_av1(
        &self,
        input: &EncodeInput,
        force_idr: bool,
    ) -> (Vec<TemporalUnit>, Result<(), Status>) {
        let mut out = Vec::new();
        let Coder::Av1(av1) = &self.codec else {
            return (out, Err(Status::vendor(VPU_SC_ENGINE_FAULT)));
        };
        let mut guard = lock(av1);
        let (enc, staging) = &mut *guard;
        let planes = match stage(&self.params, input, staging) {
            Ok(p) => p,
            Err(s) => return (out, Err(s)),
        };
        let pending = std::mem::take(&mut *lock(&self.pending));
        let now = enc.rate();
        let (fps_num, fps_den) = pending.fps.unwrap_or((now.fps_num, now.fps_den));
        let rate = Rate {
            bitrate: pending.bitrate.unwrap_or(now.bitrate),
            fps_num,
            fps_den,
        };
        if let Err(s) = enc.set_rate(rate, &mut out) {
            return (out, Err(s));
        }
        let frame = Av1Input {
            y: planes.y,
            u: planes.u,
            v: planes.v,
            stride_y: planes.stride_y,
            stride_uv: planes.stride_uv,
            force_key: force_idr || pending.force_idr,
        };
        let r = enc.encode(&frame, &mut out);
        (out, r)
    }

    /// Drains an AV1 session's encoder: the temporal units of every frame given so far.
    pub fn drain_av1(&self) -> (Vec<TemporalUnit>, Result<(), Status>) {
        let mut out = Vec::new();
        let Coder::Av1(av1) = &self.codec else {
            return (out, Ok(()));
        };
        let r = lock(av1).0.drain(&mut out);
        (out, r)
    }

    /// Whether the session encodes AV1 (its Encode Frame commands may be held).
    pub fn is_av1(&self) -> bool {
        matches!(self.codec, Coder::Av1(_))
    }

    /// Encodes one frame of an H.264 session (presentation timestamp `pts`) from `input`
    /// into `output`. When the coded frame does not fit, nothing is written and the card
    /// keeps it: the retry of the same frame (same `pts`) gets it without coding it
    /// again, so the frames coded behind it meanwhile keep their references and the
    /// stream stays whole in submission order. The bitstream is written only while
    /// `may_write` grants it.
    pub fn encode<G>(
        &self,
        input: &EncodeInput,
        output: &HostSpan,
        force_idr: bool,
        pts: u64,
        may_write: impl FnOnce() -> Option<G>,
    ) -> Result<Encoded, Status> {
        let Coder::H264(codec) = &self.codec else {
            return Err(Status::vendor(VPU_SC_ENGINE_FAULT));
        };
        let mut guard = lock(codec);
        let kept = guard.kept.iter().position(|(p, _)| *p == pts);
        let coded = match kept.and_then(|i| guard.kept.remove(i)) {
            Some((_, coded)) => coded,
            None => self.code(&mut guard, input, force_idr)?,
        };
        let dma = Status::generic(VPU_SC_DATA_TRANSFER_ERROR);
        if coded.bytes.len() > output.len {
            if guard.kept.len() >= KEPT_MAX {
                // The oldest is given up: frames that refer to it cannot be decoded, so
                // the next frame starts afresh.
                guard.kept.pop_front();
                guard.idr_next = true;
            }
            guard.kept.push_back((pts, coded));
            return Err(Status::vendor(VPU_SC_OUTPUT_TOO_SMALL));
        }
        // The device may still write host memory (no reset, removal or BME clear since the
        // command was fetched); held while writing so a reset cannot interleave.
        let written = match may_write() {
            Some(_permit) => output.region.write(output.offset, &coded.bytes),
            None => false,
        };
        if !written {
            guard.idr_next = true;
            return Err(dma);
        }
        Ok(Encoded {
            bytes: coded.bytes.len() as u32,
            frame_type: coded.frame_type,
            keyframe: coded.keyframe,
        })
    }

    /// Codes one frame with the session's openh264 encoder (as an IDR when asked, or
    /// when the previous coded frame was lost).
    fn code(
        &self,
        guard: &mut Codec,
        input: &EncodeInput,
        force_idr: bool,
    ) -> Result<Coded, Status> {
        let forced = self.apply_pending(guard)?;
        let p = &self.params;
        let Codec {
            encoder,
            started,
            idr_next,
            staging,
            qp_floor,
            bitrate,
            fps,
            ..
        } = guard;
        let planes = stage(p, input, staging)?;
        if force_idr || forced || *idr_next {
            encoder.force_intra_frame();
        }
        // A failed frame leaves no state behind in openh264 (nothing refers to it), so
        // coding it again with a raised QP floor keeps the stream whole.
        let mut retry = false;
        let bitstream = loop {
            if retry {
                let next = QP_FLOORS.iter().copied().find(|&q| q > *qp_floor);
                let Some(next) = next.filter(|_| p.rate_control != VPU_RC_CQP as u8) else {
                    tracing::error!(session = self.id, qp_floor = *qp_floor, "encoder failed");
                    return Err(Status::vendor(VPU_SC_ENGINE_FAULT));
                };
                tracing::warn!(
                    session = self.id,
                    qp_floor = next,
                    "frame overflowed the encoder; raising the QP floor, coding it as an IDR"
                );
                *qp_floor = next;
                *encoder = new_encoder(p, *bitrate, *fps, next)?;
                encoder.force_intra_frame();
            }
            match encoder.encode(&planes) {
                Ok(bitstream) => break bitstream,
                Err(e) => {
                    tracing::debug!(session = self.id, error = %e, "encoder failed a frame");
                    retry = true;
                }
            }
        };
        *started = true;
        *idr_next = false;
        let (frame_type, keyframe) = match bitstream.frame_type() {
            FrameType::IDR => (VPU_FRAME_TYPE_IDR, true),
            FrameType::I => (VPU_FRAME_TYPE_I, false),
            FrameType::P | FrameType::IPMixed => (VPU_FRAME_TYPE_P, false),
            FrameType::Skip => (VPU_FRAME_TYPE_SKIPPED, false),
            FrameType::Invalid => return Err(Status::vendor(VPU_SC_ENGINE_FAULT)),
        };
        let mut bytes = Vec::new();
        for l in 0..bitstream.num_layers() {
            if let Some(layer) = bitstream.layer(l) {
                for n in 0..layer.nal_count() {
                    bytes.extend_from_slice(layer.nal_unit(n).unwrap_or_default());
                }
            }
        }
        Ok(Coded {
            bytes,
            frame_type,
            keyframe,
        })
    }
}

/// The planes of the input frame: in place in host memory when the frame is one
/// contiguous span in I420 (or in card frame memory), otherwise staged in the session's
/// buffers.
fn stage<'a>(
    p: &SessionParams,
    input: &'a EncodeInput,
    staging: &'a mut Staging,
) -> Result<Planes<'a>, Status> {
    let frame_len = p.frame_len();
    let Staging { gather, chroma } = staging;
    let frame: &[u8] = match input {
        EncodeInput::Card(f) => &f.data,
        EncodeInput::Host(Spans::One(s)) => {
            if s.len < frame_len
                || s.offset
                    .checked_add(frame_len)
                    .is_none_or(|e| e > s.region.len())
            {
                return Err(Status::vendor(VPU_SC_INPUT_TOO_SMALL));
            }
            // SAFETY: `offset + frame_len <= region.len()` (checked above), so the
            // pointer stays inside the mapping.
            let base = unsafe { s.region.as_ptr().add(s.offset) };
            // SAFETY: `base..base + frame_len` lies inside the region, which the job's
            // `Arc` keeps mapped until the command completes. The host owns the
            // buffer's contents while the command is in flight and does not write them
            // (the NVMe data-buffer rule); the encoder only reads.
            unsafe { std::slice::from_raw_parts(base, frame_len) }
        }
        EncodeInput::Host(Spans::Many(spans)) => {
            gather.resize(frame_len, 0);
            let mut pos = 0;
            for s in spans {
                if pos == frame_len {
                    break;
                }
                let n = s.len.min(frame_len - pos);
                if !s.region.read(s.offset, &mut gather[pos..pos + n]) {
                    return Err(Status::generic(VPU_SC_DATA_TRANSFER_ERROR));
                }
                pos += n;
            }
            if pos < frame_len {
                return Err(Status::vendor(VPU_SC_INPUT_TOO_SMALL));
            }
            &gather[..]
        }
    };
    let (w, h) = (p.width, p.height);
    let card = matches!(input, EncodeInput::Card(_));
    // Card frames are I420 with tight strides, whatever the session's host layout.
    let (stride_y, stride_uv) = if card {
        (w, w / 2)
    } else {
        (p.stride_y, p.stride_uv)
    };
    let luma_len = stride_y * h;
    let chroma_len = stride_uv * (h / 2);
    if card && frame.len() < luma_len + 2 * chroma_len {
        return Err(Status::vendor(VPU_SC_INPUT_TOO_SMALL));
    }
    let y = &frame[..luma_len];
    Ok(if p.nv12 && !card {
        let cw = w / 2;
        let plane = cw * (h / 2);
        chroma.resize(plane * 2, 0);
        let (u, v) = chroma.split_at_mut(plane);
        let uv = &frame[luma_len..luma_len + chroma_len];
        for ((row, urow), vrow) in uv
            .chunks(p.stride_uv)
            .zip(u.chunks_exact_mut(cw))
            .zip(v.chunks_exact_mut(cw))
        {
            for ((pair, ub), vb) in row[..w].chunks_exact(2).zip(urow).zip(vrow) {
                *ub = pair[0];
                *vb = pair[1];
            }
        }
        Planes {
            width: w,
            height: h,
            y,
            u: &chroma[..plane],
            v: &chroma[plane..],
            stride_y: p.stride_y,
            stride_uv: cw,
        }
    } else {
        Planes {
            width: w,
            height: h,
            y,
            u: &frame[luma_len..luma_len + chroma_len],
            v: &frame[luma_len + chroma_len..luma_len + 2 * chroma_len],
            stride_y,
            stride_uv,
        }
    })
}

/// Changes the target bitrate and/or frame rate of a running encoder. openh264 refuses a
/// target above the layer's peak (`iMaxSpatialBitrate`, which starts equal to the initial
/// target), so the peak moves with the target to `peak`: first when `raising`, after the
/// target otherwise, so that peak >= target holds at every step.
fn set_rate(
    encoder: &mut Encoder,
    bitrate: Option<u32>,
    peak: u32,
    raising: bool,
    fps: Option<f32>,
) -> Result<(), Status> {
    // SAFETY: only used to set the rate options below, which the encoder accepts at any
    // time after initialisation; no parameter the wrapper relies on is touched.
    let api = unsafe { encoder.raw_api() };
    let mut rc = 0;
    if let Some(bitrate) = bitrate {
        // The peak is a per-layer setting: through SPATIAL_LAYER_ALL openh264 would only
        // record it for the next initialisation.
        let set_peak = |api: &mut openh264::encoder::EncoderRawAPI| {
            set_bitrate_option(
                api,
                openh264_sys2::ENCODER_OPTION_MAX_BITRATE,
                openh264_sys2::SPATIAL_LAYER_0,
                peak,
            )
        };
        if raising {
            rc |= set_peak(api)?;
        }
        rc |= set_bitrate_option(
            api,
            openh264_sys2::ENCODER_OPTION_BITRATE,
            openh264_sys2::SPATIAL_LAYER_ALL,
            bitrate,
        )?;
        if !raising {
            rc |= set_peak(api)?;
        }
    }
    if let Some(mut rate) = fps {
        // SAFETY: as above, with a float frame rate.
        rc |= unsafe {
            api.set_option(
                openh264_sys2::ENCODER_OPTION_FRAME_RATE,
                (&mut rate as *mut f32).cast(),
            )
        };
    }
    if rc != 0 {
        tracing::error!(?bitrate, ?fps, rc, "changing the encoder's rate failed");
        return Err(Status::vendor(VPU_SC_ENGINE_FAULT));
    }
    Ok(())
}

/// Sets a bitrate option (target or peak) of an initialised encoder for `layer`; the C
/// return code.
fn set_bitrate_option(
    api: &mut openh264::encoder::EncoderRawAPI,
    option: openh264_sys2::ENCODER_OPTION,
    layer: openh264_sys2::LAYER_NUM,
    bitrate: u32,
) -> Result<i32, Status> {
    let mut info = openh264_sys2::SBitrateInfo {
        iLayer: layer,
        iBitrate: i32::try_from(bitrate).map_err(|_| Status::vendor(VPU_SC_INVALID_PARAMS))?,
    };
    // SAFETY: the encoder is initialised (it has encoded a frame); SetOption copies the
    // option structure, which lives on this stack frame for the call.
    Ok(unsafe {
        api.set_option(
            option,
            (&mut info as *mut openh264_sys2::SBitrateInfo).cast(),
        )
    })
}

/// Sets the VBR peak bitrate of an initialised encoder.
fn set_option_int(
    encoder: &mut Encoder,
    option: openh264_sys2::ENCODER_OPTION,
    bitrate: u32,
) -> Result<(), Status> {
    // SAFETY: only used to set a rate option, which the encoder accepts at any time after
    // initialisation; no parameter the wrapper relies on is touched.
    let api = unsafe { encoder.raw_api() };
    if set_bitrate_option(api, option, openh264_sys2::SPATIAL_LAYER_0, bitrate)? != 0 {
        tracing::error!(bitrate, "setting the encoder's peak bitrate failed");
        return Err(Status::vendor(VPU_SC_ENGINE_FAULT));
    }
    Ok(())
}

/// Counts an encode outcome in the session's counters.
pub(super) fn count(session: &Session, result: &Result<Encoded, Status>) {
    let c = &session.counters;
    match result {
        Ok(e) => {
            if e.frame_type != VPU_FRAME_TYPE_SKIPPED {
                c.frames_out.fetch_add(1, Ordering::Relaxed);
            }
            c.bytes_out.fetch_add(u64::from(e.bytes), Ordering::Relaxed);
            if e.keyframe {
                c.keyframes.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(_) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
