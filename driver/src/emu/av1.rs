//! The AV1 encoder of the emulated card's AV1 engines: `rav1e` with realtime settings.
//!
//! Settings (measured on the project's 2-core hosts, `BENCHMARKS.md` "AV1"): low-latency
//! mode (no frame reordering, so each input yields exactly one temporal unit, in order),
//! speed preset [`SPEED`], scene-cut detection off (keyframes exactly every GOP and where
//! asked), a minimal RDO lookahead, tiles so that a picture splits across the encoder's
//! threads, one thread per engine (an engine is one core, as for H.264).
//!
//! Even in low-latency mode rav1e codes a frame only once a few later frames have gone in
//! (its keyframe and RDO lookahead). The card hides that lag from the host: an Encode
//! Frame command is held, with its output buffer, until its own frame's temporal unit
//! comes out, and commands complete in order, each with its own frame (input lag 0).
//! A Flush drains the encoder, as does a session left idle for [`IDLE_DRAIN`]; after a
//! drain, or a change of bitrate or frame rate (rav1e cannot change them in flight), the
//! next frame starts a new coded video sequence with a keyframe.
//!
//! Rate control: CBR is rav1e's bitrate mode with a one-second reservoir (the tightest
//! it allows at 12 frames or more) and the whole quantizer range open to it, VBR the same
//! with a reservoir of `max_bitrate / bitrate` seconds (2 s when no peak is given), CQP a
//! fixed quantizer index, the API's 0–51 scaled to AV1's 0–255.

use std::time::Duration;

use rav1e::config::SpeedSettings;
use rav1e::prelude::{
    ChromaSampling, Config, Context, EncoderConfig, EncoderStatus, FrameParameters, FrameType,
    FrameTypeOverride, Rational, SceneDetectionSpeed,
};
use vpu_ffi::*;

use super::params::SessionParams;
use super::queues::Status;

/// rav1e's speed preset (0 slowest, 10 fastest): the fastest, the only one near realtime
/// at 720p on one core of the measured hosts (`BENCHMARKS.md`).
pub const SPEED: u8 = 10;
/// Tiles per picture: with threads, tiles are coded in parallel; on one thread they cost
/// a little compression and nothing in speed (`BENCHMARKS.md`).
pub const TILES: usize = 4;
/// Threads of one session's encoder.
pub const THREADS: usize = 1;
/// Frames of RDO lookahead (rav1e's minimum is 1).
pub const RDO_LOOKAHEAD: usize = 1;
/// A session whose held frames have waited this long for later input is drained: a live
/// source that pauses gets its last frames without waiting for the next one.
pub(super) const IDLE_DRAIN: Duration = Duration::from_millis(250);

/// What one Encode Frame asks of the encoder.
pub(super) struct Av1Input<'a> {
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub stride_y: usize,
    pub stride_uv: usize,
    pub force_key: bool,
}

/// One temporal unit out of the encoder.
#[derive(Debug)]
pub(super) struct TemporalUnit {
    /// OBUs of the unit: temporal delimiter, sequence header on keyframes, frame.
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// VPU_FRAME_TYPE_*.
    pub frame_type: u32,
}

/// The rate settings a coded video sequence is started with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate {
    pub bitrate: u32,
    pub fps_num: u32,
    pub fps_den: u32,
}

/// A session's AV1 encoder: one rav1e context per coded video sequence.
pub(super) struct Av1Encoder {
    params: SessionParams,
    ctx: Option<Context<u8>>,
    /// The rate the current (or next) sequence uses.
    rate: Rate,
    /// The next frame must be a keyframe.
    key_next: bool,
}

impl std::fmt::Debug for Av1Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Av1Encoder")
            .field("rate", &self.rate)
            .field("open", &self.ctx.is_some())
            .finish()
    }
}

/// The quantiser index (0–255) for the API's QP (0–51).
pub(super) fn qindex(qp: u8) -> usize {
    (usize::from(qp.min(51)) * 255 + 25) / 51
}

/// rav1e's configuration for a session at `rate`.
pub(super) fn encoder_config(p: &SessionParams, rate: Rate) -> EncoderConfig {
    let mut e = EncoderConfig::with_speed_preset(SPEED);
    e.width = p.width;
    e.height = p.height;
    e.time_base = Rational::new(u64::from(rate.fps_den), u64::from(rate.fps_num));
    e.bit_depth = 8;
    e.chroma_sampling = ChromaSampling::Cs420;
    e.low_latency = true;
    e.level_idx = p.av1_level;
    if p.gop == 0 {
        e.set_key_frame_interval(0, 0);
    } else {
        e.set_key_frame_interval(u64::from(p.gop), u64::from(p.gop));
    }
    e.tiles = TILES;
    let mut s: SpeedSettings = e.speed_settings;
    s.scene_detection_mode = SceneDetectionSpeed::None;
    s.rdo_lookahead_frames = RDO_LOOKAHEAD;
    e.speed_settings = s;
    let fps_whole = rate.fps_num.div_ceil(rate.fps_den.max(1)).max(1);
    match u32::from(p.rate_control) {
        VPU_RC_CQP => {
            e.bitrate = 0;
            e.quantizer = qindex(p.qp);
            e.min_quantizer = 0;
        }
        rc => {
            e.bitrate = i32::try_from(rate.bitrate).unwrap_or(i32::MAX);
            // In bitrate mode `quantizer` is the highest quantizer index rate control may
            // use; rav1e's default (100) keeps it from reaching low targets (4x over at
            // 300 kb/s 320x180 testsrc2, BENCHMARKS.md).
            e.quantizer = 255;
            let seconds = if rc == VPU_RC_VBR {
                p.max_bitrate
                    .map_or(2, |peak| peak.div_ceil(rate.bitrate.max(1)).clamp(1, 8))
            } else {
                1
            };
            let frames = (fps_whole * seconds).clamp(12, 131_072);
            e.reservoir_frame_delay = Some(frames as i32);
        }
    }
    e
}

/// rav1e's configuration for a CBR session of the card's AV1 engines, I420 with tight
/// strides: what benchmarks give rav1e when they compare the card with it called directly
/// (with [`THREADS`] threads).
pub fn cbr_config(width: usize, height: usize, fps: u32, bitrate: u32, gop: u32) -> EncoderConfig {
    let p = SessionParams {
        codec: super::config::EngineCodec::Av1,
        nv12: false,
        width,
        height,
        fps_num: fps,
        fps_den: 1,
        stride_y: width,
        stride_uv: width / 2,
        rate_control: VPU_RC_CBR as u8,
        qp: 0,
        bitrate,
        max_bitrate: None,
        gop,
        level: None,
        av1_level: None,
    };
    encoder_config(
        &p,
        Rate {
            bitrate,
            fps_num: fps,
            fps_den: 1,
        },
    )
}

fn status_fault(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what}");
    Status::vendor(VPU_SC_ENGINE_FAULT)
}

impl Av1Encoder {
    /// An encoder for `params`; the rav1e context is opened on the first frame.
    pub fn new(params: SessionParams) -> Result<Self, Status> {
        let rate = Rate {
            bitrate: params.bitrate,
            fps_num: params.fps_num,
            fps_den: params.fps_den,
        };
        // Checked now, so that Create Session refuses what rav1e would.
        Config::new()
            .with_encoder_config(encoder_config(&params, rate))
            .validate()
            .map_err(|e| {
                tracing::info!(error = %e, "rav1e refuses the session's parameters");
                Status::vendor(VPU_SC_INVALID_PARAMS)
            })?;
        Ok(Self {
            params,
            ctx: None,
            rate,
            key_next: true,
        })
    }

    /// The rate of the running (or next) sequence.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn open(&self) -> Result<Context<u8>, Status> {
        Config::new()
            .with_encoder_config(encoder_config(&self.params, self.rate))
            .with_threads(THREADS)
            .new_context()
            .map_err(|e| status_fault("opening the AV1 encoder failed", e))
    }

    /// Sets the rate of the next sequence. When it differs, the running sequence is
    /// drained into `out` first, so that the next frame starts a new one.
    pub fn set_rate(&mut self, rate: Rate, out: &mut Vec<TemporalUnit>) -> Result<(), Status> {
        if rate != self.rate {
            self.drain(out)?;
            self.rate = rate;
        }
        Ok(())
    }

    /// Codes one frame; the temporal units that became ready (of this frame or of
    /// earlier ones, in order) are appended to `out`.
    pub fn encode(&mut self, f: &Av1Input<'_>, out: &mut Vec<TemporalUnit>) -> Result<(), Status> {
        if self.ctx.is_none() {
            self.ctx = Some(self.open()?);
            self.key_next = true;
        }
        let key = f.force_key || self.key_next;
        let (w, h) = (self.params.width, self.params.height);
        let result = {
            let Some(ctx) = self.ctx.as_mut() else {
                return Err(Status::vendor(VPU_SC_ENGINE_FAULT));
            };
            let mut frame = ctx.new_frame();
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            for (plane, (src, stride, pw, ph)) in frame.planes.iter_mut().zip([
                (f.y, f.stride_y, w, h),
                (f.u, f.stride_uv, cw, ch),
                (f.v, f.stride_uv, cw, ch),
            ]) {
                copy_plane(plane, src, stride, pw, ph);
            }
            let params = FrameParameters {
                frame_type_override: if key {
                    FrameTypeOverride::Key
                } else {
                    FrameTypeOverride::No
                },
                ..Default::default()
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.send_frame((frame, params))
            }))
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.ctx = None;
                return Err(status_fault("the AV1 encoder refused a frame", e));
            }
            Err(_) => {
                self.ctx = None;
                return Err(status_fault("the AV1 encoder panicked", "panic"));
            }
        }
        self.key_next = false;
        self.receive(out, false)
    }

    /// Ends the running sequence: every frame given so far comes out into `out`. The
    /// next frame opens a new sequence (with a keyframe).
    pub fn drain(&mut self, out: &mut Vec<TemporalUnit>) -> Result<(), Status> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Ok(());
        };
        if let Err(e) = ctx.send_frame(None) {
            self.ctx = None;
            return Err(status_fault("draining the AV1 encoder failed", e));
        }
        let r = self.receive(out, true);
        self.ctx = None;
        r
    }

    /// Collects ready temporal units; until the limit when `to_end`.
    fn receive(&mut self, out: &mut Vec<TemporalUnit>, to_end: bool) -> Result<(), Status> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Ok(());
        };
        loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.receive_packet()));
            match r {
                Ok(Ok(p)) => {
                    let keyframe = p.frame_type == FrameType::KEY;
                    let frame_type = match p.frame_type {
                        FrameType::KEY => VPU_FRAME_TYPE_IDR,
                        FrameType::INTRA_ONLY => VPU_FRAME_TYPE_I,
                        FrameType::INTER | FrameType::SWITCH => VPU_FRAME_TYPE_P,
                    };
                    out.push(TemporalUnit {
                        data: p.data,
                        keyframe,
                        frame_type,
                    });
                }
                Ok(Err(EncoderStatus::Encoded)) => continue,
                Ok(Err(EncoderStatus::NeedMoreData)) if !to_end => return Ok(()),
                Ok(Err(EncoderStatus::LimitReached)) => return Ok(()),
                Ok(Err(e)) => {
                    self.ctx = None;
                    return Err(status_fault("the AV1 encoder failed", e));
                }
                Err(_) => {
                    self.ctx = None;
                    return Err(status_fault("the AV1 encoder panicked", "panic"));
                }
            }
        }
    }
}

/// Copies a `width`×`height` plane with row stride `stride` into rav1e's plane.
fn copy_plane(
    plane: &mut rav1e::prelude::Plane<u8>,
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
) {
    let dst_stride = plane.cfg.stride;
    let data = plane.data_origin_mut();
    for row in 0..height {
        let Some(s) = src.get(row * stride..row * stride + width) else {
            break;
        };
        let at = row * dst_stride;
        if let Some(d) = data.get_mut(at..at + width) {
            d.copy_from_slice(s);
        }
    }
}
