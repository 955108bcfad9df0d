//! Value types of the card API: codecs, formats, session configuration, packets, stats.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use vpu_ffi::{
    VPU_CODEC_AV1, VPU_CODEC_H264, VPU_CODEC_HEVC, VPU_ENGINE_ANY, VPU_PIXFMT_I420,
    VPU_PIXFMT_NV12, VPU_RC_CBR, VPU_RC_CQP, VPU_RC_VBR,
};

use crate::io::DmaBuffer;

use super::error::CardError;
use super::identity::CardIdentity;

/// How to open a card.
#[derive(Debug, Clone)]
pub struct CardOptions {
    /// I/O queue pairs wanted (the card may grant fewer).
    pub io_queues: u16,
    /// Entries per I/O queue.
    pub queue_depth: u16,
    /// Timeout of every command.
    pub command_timeout: Duration,
    /// Poll completions instead of waiting for interrupts.
    pub polling: bool,
}

impl Default for CardOptions {
    fn default() -> Self {
        Self {
            io_queues: 2,
            queue_depth: 64,
            command_timeout: Duration::from_secs(5),
            polling: false,
        }
    }
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal => $code:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// Lowercase name, as configuration and D-Bus use.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }

            /// The code `vpu.h` gives this value.
            pub fn code(self) -> u32 {
                match self { $($name::$var => $code),+ }
            }

            /// The value with `vpu.h` code `code`.
            pub fn from_code(code: u32) -> Option<Self> {
                $(if code == $code { return Some($name::$var); })+
                None
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = CardError;
            fn from_str(s: &str) -> Result<Self, CardError> {
                match s.to_ascii_lowercase().as_str() {
                    $($s => Ok($name::$var),)+
                    _ => Err(CardError::InvalidConfig(format!(
                        concat!("unknown ", stringify!($name), " {:?}"), s))),
                }
            }
        }
    };
}

named_enum!(
    /// Video codecs of the command set.
    Codec { H264 = "h264" => VPU_CODEC_H264, Hevc = "hevc" => VPU_CODEC_HEVC, Av1 = "av1" => VPU_CODEC_AV1 }
);
named_enum!(
    /// Raw frame layouts the card reads.
    PixelFormat { I420 = "i420" => VPU_PIXFMT_I420, Nv12 = "nv12" => VPU_PIXFMT_NV12 }
);
named_enum!(
    /// Rate control modes.
    RateControl { Cbr = "cbr" => VPU_RC_CBR, Vbr = "vbr" => VPU_RC_VBR, Cqp = "cqp" => VPU_RC_CQP }
);

impl PixelFormat {
    /// Bytes of one frame with tight strides (both formats are 4:2:0, 12 bits a pixel).
    pub fn frame_size(self, width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
    }

    /// Luma and chroma row strides with tight packing.
    pub fn strides(self, width: u32) -> (u32, u32) {
        match self {
            PixelFormat::I420 => (width, width.div_ceil(2)),
            PixelFormat::Nv12 => (width, 2 * width.div_ceil(2)),
        }
    }
}

/// What an encode session produces and from what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps_num: u32,
    pub fps_den: u32,
    pub pixel_format: PixelFormat,
    pub rate_control: RateControl,
    /// Target bit/s (CBR, VBR).
    pub bitrate: u32,
    /// Peak bit/s (VBR); 0: same as `bitrate`.
    pub max_bitrate: u32,
    /// Quantiser (CQP), 0–51.
    pub qp: u8,
    /// Frames between IDRs; 0: only the first.
    pub gop: u32,
    pub low_latency: bool,
    /// Engine to place the session on; `None`: the card chooses.
    pub engine_hint: Option<u16>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            codec: Codec::H264,
            width: 1280,
            height: 720,
            fps_num: 30,
            fps_den: 1,
            pixel_format: PixelFormat::I420,
            rate_control: RateControl::Cbr,
            bitrate: 4_000_000,
            max_bitrate: 0,
            qp: 26,
            gop: 60,
            low_latency: false,
            engine_hint: None,
        }
    }
}

impl SessionConfig {
    /// Bytes of one input frame.
    pub fn frame_size(&self) -> usize {
        self.pixel_format.frame_size(self.width, self.height)
    }

    /// Checks the configuration against what the card says it supports.
    pub fn validate(&self, id: &CardIdentity) -> Result<(), CardError> {
        let bad = |m: String| Err(CardError::InvalidConfig(m));
        if !id.codecs.contains(&self.codec) {
            return bad(format!(
                "codec {} not supported by {}",
                self.codec, id.model
            ));
        }
        if !id.pixel_formats.contains(&self.pixel_format) {
            return bad(format!("pixel format {} not supported", self.pixel_format));
        }
        if self.width == 0 || self.height == 0 || self.width % 2 != 0 || self.height % 2 != 0 {
            return bad(format!(
                "size {}x{} must be even and non-zero",
                self.width, self.height
            ));
        }
        if self.width > u32::from(id.max_width) || self.height > u32::from(id.max_height) {
            return bad(format!(
                "size {}x{} over the card's maximum {}x{}",
                self.width, self.height, id.max_width, id.max_height
            ));
        }
        if self.fps_num == 0 || self.fps_den == 0 {
            return bad(format!(
                "frame rate {}/{} must be positive",
                self.fps_num, self.fps_den
            ));
        }
        if self.rate_control != RateControl::Cqp && self.bitrate == 0 {
            return bad(format!("{} needs a bitrate", self.rate_control));
        }
        if self.rate_control == RateControl::Cqp && self.qp > 51 {
            return bad(format!("qp {} over 51", self.qp));
        }
        if self.max_bitrate != 0 && self.max_bitrate < self.bitrate {
            return bad(format!(
                "max bitrate {} below bitrate {}",
                self.max_bitrate, self.bitrate
            ));
        }
        if let Some(e) = self.engine_hint {
            if e >= u16::from(id.encode_engines) {
                return bad(format!(
                    "engine {e} does not exist ({} engines)",
                    id.encode_engines
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn engine_code(&self) -> u16 {
        self.engine_hint.unwrap_or(VPU_ENGINE_ANY as u16)
    }
}

/// A session on one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One raw frame to encode.
#[derive(Debug)]
pub enum FrameInput<'a> {
    /// Host bytes, copied into a pooled DMA buffer.
    Bytes(&'a [u8]),
    /// A range of memory already mapped for the card (see `Card::map_frames`): zero copy.
    Dma {
        buffer: &'a DmaBuffer,
        offset: usize,
        len: usize,
    },
}

/// Picture types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// No picture was produced for this input.
    Skipped,
    Idr,
    I,
    P,
    B,
}

impl FrameType {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::Skipped => "skipped",
            FrameType::Idr => "idr",
            FrameType::I => "i",
            FrameType::P => "p",
            FrameType::B => "b",
        }
    }
}

/// Encoded output of one Encode Frame command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Annex-B bitstream; empty when the frame was skipped.
    pub data: Vec<u8>,
    /// Presentation timestamp of the input this output belongs to.
    pub pts: u64,
    pub keyframe: bool,
    pub frame_type: FrameType,
    /// How many inputs before this command's own the output belongs to.
    pub input_lag: u16,
}

/// Changes to a running session, applied from the next frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigure {
    pub bitrate: Option<u32>,
    pub framerate: Option<(u32, u32)>,
    pub force_keyframe: bool,
}

/// One engine's figures from the engine log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub load: u32,
    pub sessions: u32,
    pub frames: u64,
    pub bytes: u64,
    pub errors: u64,
    pub busy_ns: u64,
    /// Kelvin; 0: not reported.
    pub temperature: u16,
    pub state: u8,
}

/// One session's figures from the session log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    pub engine: u16,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub keyframes: u64,
    pub errors: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Codec::ALL {
            assert_eq!(c.as_str().parse::<Codec>().unwrap(), *c);
        }
        assert_eq!("NV12".parse::<PixelFormat>().unwrap(), PixelFormat::Nv12);
        assert!("vp9".parse::<Codec>().is_err());
        assert_eq!(RateControl::from_code(VPU_RC_CQP), Some(RateControl::Cqp));
    }

    #[test]
    fn frame_sizes_are_tight() {
        assert_eq!(PixelFormat::I420.frame_size(1280, 720), 1280 * 720 * 3 / 2);
        assert_eq!(
            PixelFormat::Nv12.frame_size(1920, 1080),
            1920 * 1080 * 3 / 2
        );
        assert_eq!(PixelFormat::I420.strides(1280), (1280, 640));
        assert_eq!(PixelFormat::Nv12.strides(1280), (1280, 1280));
    }
}
