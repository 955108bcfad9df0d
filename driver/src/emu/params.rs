//! Create Session's parameters: validation against the card, and the encoder
//! configuration they give.

use openh264::encoder::{
    BitRate, EncoderConfig, FrameRate, IntraFramePeriod, Level, Profile, QpRange, RateControlMode,
    UsageType,
};
use vpu_ffi::*;

use super::config::{EmuConfig, EngineCodec, ENCODER_MAX_LONG_SIDE, ENCODER_MAX_SHORT_SIDE};
use super::queues::Status;

/// Maximum data transfer size (Identify MDTS): 2^13 pages of 4 KiB, 32 MiB.
pub(super) const MDTS: u8 = 13;
/// The largest transfer a command may describe, in bytes.
pub(super) const MAX_TRANSFER: usize = 4096 << MDTS;

/// Validated session parameters.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    pub codec: EngineCodec,
    pub nv12: bool,
    pub width: usize,
    pub height: usize,
    pub fps_num: u32,
    pub fps_den: u32,
    pub stride_y: usize,
    pub stride_uv: usize,
    pub rate_control: u8,
    pub qp: u8,
    pub bitrate: u32,
    /// VBR peak (bit/s) above `bitrate`, if any.
    pub max_bitrate: Option<u32>,
    pub gop: u32,
    /// H.264 level (`None`: automatic).
    pub level: Option<Level>,
    /// AV1 `seq_level_idx` (`None`: automatic).
    pub av1_level: Option<u8>,
}

/// AV1's `seq_level_idx` for a level given as major × 10 + minor (e.g. 51 = 5.1), as the
/// session parameters carry it; `Some(None)` for 0 (automatic), `None` when no such level.
fn av1_level(level: u8) -> Option<Option<u8>> {
    if level == 0 {
        return Some(None);
    }
    let (major, minor) = (level / 10, level % 10);
    if !(2..=7).contains(&major) || minor > 3 {
        return None;
    }
    Some(Some((major - 2) * 4 + minor))
}

fn level(idc: u8) -> Option<Option<Level>> {
    Some(Some(match idc {
        0 => return Some(None),
        10 => Level::Level_1_0,
        11 => Level::Level_1_1,
        12 => Level::Level_1_2,
        13 => Level::Level_1_3,
        20 => Level::Level_2_0,
        21 => Level::Level_2_1,
        22 => Level::Level_2_2,
        30 => Level::Level_3_0,
        31 => Level::Level_3_1,
        32 => Level::Level_3_2,
        40 => Level::Level_4_0,
        41 => Level::Level_4_1,
        42 => Level::Level_4_2,
        50 => Level::Level_5_0,
        51 => Level::Level_5_1,
        52 => Level::Level_5_2,
        _ => return None,
    }))
}

impl SessionParams {
    /// Checks Create Session's parameters against the card; the error is the status the
    /// command completes with.
    pub fn validate(p: &vpu_session_params, cfg: &EmuConfig) -> Result<Self, Status> {
        let invalid = Status::vendor(VPU_SC_INVALID_PARAMS);
        let unsupported = Status::vendor(VPU_SC_UNSUPPORTED_FORMAT);
        let codec = match u32::from(p.codec) {
            VPU_CODEC_H264 if cfg.av1_engines < cfg.engines => EngineCodec::H264,
            VPU_CODEC_AV1 if cfg.av1_engines > 0 => EngineCodec::Av1,
            _ => return Err(Status::vendor(VPU_SC_UNSUPPORTED_CODEC)),
        };
        let nv12 = match u32::from(p.pixel_format) {
            VPU_PIXFMT_I420 => false,
            VPU_PIXFMT_NV12 => true,
            _ => return Err(unsupported),
        };
        let profile_ok = match codec {
            EngineCodec::H264 => matches!(
                u32::from(p.profile),
                0 | VPU_PROFILE_H264_CONSTRAINED_BASELINE
            ),
            EngineCodec::Av1 => matches!(u32::from(p.profile), 0 | VPU_PROFILE_AV1_MAIN),
        };
        if !profile_ok {
            return Err(unsupported);
        }
        let (level, av1_level) = match codec {
            EngineCodec::H264 => (level(p.level).ok_or(invalid)?, None),
            EngineCodec::Av1 => (None, av1_level(p.level).ok_or(invalid)?),
        };
        if p.bframes != 0 {
            return Err(unsupported);
        }
        let (w, h) = (p.width, p.height);
        if w < 16 || h < 16 || w % 2 != 0 || h % 2 != 0 {
            return Err(invalid);
        }
        if w > cfg.max_width
            || h > cfg.max_height
            || w.max(h) > ENCODER_MAX_LONG_SIDE
            || w.min(h) > ENCODER_MAX_SHORT_SIDE
        {
            return Err(Status::vendor(VPU_SC_TOO_LARGE));
        }
        let (fps_num, fps_den) = (p.fps_num, p.fps_den);
        if fps_num == 0 || fps_den == 0 || fps_num / fps_den > 240 {
            return Err(invalid);
        }
        let (stride_y, stride_uv) = (p.stride_y as usize, p.stride_uv as usize);
        let chroma_row = if nv12 {
            usize::from(w)
        } else {
            usize::from(w) / 2
        };
        if stride_y < usize::from(w)
            || stride_uv < chroma_row
            || stride_y > 1 << 16
            || stride_uv > 1 << 16
        {
            return Err(invalid);
        }
        let chroma_planes = if nv12 { 1 } else { 2 };
        let frame_len = stride_y * usize::from(h) + chroma_planes * stride_uv * usize::from(h / 2);
        if frame_len > MAX_TRANSFER {
            return Err(invalid);
        }
        let (bitrate, max_bitrate, qp) = (p.bitrate, p.max_bitrate, p.qp);
        match u32::from(p.rate_control) {
            VPU_RC_CBR | VPU_RC_VBR => {
                // openh264 takes the bitrate as a C int, rav1e as an i32.
                if bitrate < 1000 || bitrate > i32::MAX as u32 {
                    return Err(invalid);
                }
                if max_bitrate != 0 && max_bitrate < bitrate {
                    return Err(invalid);
                }
            }
            VPU_RC_CQP => {
                if qp > 51 {
                    return Err(invalid);
                }
            }
            _ => return Err(unsupported),
        }
        Ok(Self {
            codec,
            nv12,
            width: usize::from(w),
            height: usize::from(h),
            fps_num,
            fps_den,
            stride_y,
            stride_uv,
            rate_control: p.rate_control,
            qp,
            bitrate,
            max_bitrate: (u32::from(p.rate_control) == VPU_RC_VBR && max_bitrate > bitrate)
                .then_some(max_bitrate),
            gop: p.gop,
            level,
            av1_level,
        })
    }

    /// Bytes an input frame occupies with the session's strides.
    pub fn frame_len(&self) -> usize {
        let chroma_planes = if self.nv12 { 1 } else { 2 };
        self.stride_y * self.height + chroma_planes * self.stride_uv * (self.height / 2)
    }

    /// Luma samples per frame.
    pub fn luma(&self) -> u64 {
        (self.width * self.height) as u64
    }

    /// Luma samples per second the session asks for.
    pub fn pixel_rate(&self) -> u64 {
        self.luma() * u64::from(self.fps_num) / u64::from(self.fps_den)
    }

    pub fn fps(&self) -> f32 {
        self.fps_num as f32 / self.fps_den as f32
    }

    /// The encoder's settings; `qp_floor` is the lowest QP bitrate control may use.
    pub fn encoder_config(&self, bitrate: u32, fps: f32, qp_floor: u8) -> EncoderConfig {
        let c = EncoderConfig::new()
            .skip_frames(false)
            .usage_type(UsageType::CameraVideoRealTime)
            .max_frame_rate(FrameRate::from_hz(fps))
            .intra_frame_period(IntraFramePeriod::from_num_frames(self.gop))
            .num_threads(1)
            .profile(Profile::Baseline);
        let c = match self.level {
            Some(l) => c.level(l),
            None => c,
        };
        if u32::from(self.rate_control) == VPU_RC_CQP {
            // `validate` keeps qp <= 51, so QpRange::new cannot panic.
            c.rate_control_mode(RateControlMode::Quality)
                .qp(QpRange::new(self.qp, self.qp))
        } else {
            // QP_FLOORS keeps the floor <= 51, so QpRange::new cannot panic.
            c.rate_control_mode(RateControlMode::Bitrate)
                .bitrate(BitRate::from_bps(bitrate))
                .qp(QpRange::new(qp_floor.min(51), 51))
        }
    }
}
