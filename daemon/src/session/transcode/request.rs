//! What a client asks of a transcode session, once validated (`dbus::params` parses the
//! `a{sv}` input and `aa{sv}` outputs of `CreateTranscode` into this, and only there).

use vpu_driver::card::{
    Codec, DecoderConfig, PixelFormat, RateControl, ScaleFilter, SessionConfig,
};

use crate::scheduler::{Demand, LadderDemand, Priority};

/// Renditions a ladder may have.
pub const MAX_RENDITIONS: usize = 8;
/// Frame rate assumed when the input's is not given.
pub const DEFAULT_FPS: (u32, u32) = (30, 1);

/// The compressed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub codec: Codec,
    /// The input's size when the client knows it.
    pub size: Option<(u32, u32)>,
    pub fps_num: u32,
    pub fps_den: u32,
}

/// One rendition, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionSpec {
    pub width: u32,
    pub height: u32,
    pub rate_control: RateControl,
    /// Bits per second; 0 with constant QP.
    pub bitrate: u32,
    pub max_bitrate: u32,
    pub qp: u8,
    /// Input frames between keyframes (0: only the first).
    pub gop: u32,
    pub filter: ScaleFilter,
}

/// A new transcode session's parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeRequest {
    pub input: InputSpec,
    pub outputs: Vec<RenditionSpec>,
    pub priority: Priority,
    /// A card's object path, when the client pins the ladder to it.
    pub card: Option<String>,
    pub reservation: Option<u64>,
}

impl TranscodeRequest {
    /// The size the cost model and the decoder assume for the input: the given one, or
    /// the largest rendition's.
    pub fn input_size(&self) -> (u32, u32) {
        self.input.size.unwrap_or_else(|| {
            self.outputs
                .iter()
                .fold((0, 0), |(w, h), o| (w.max(o.width), h.max(o.height)))
        })
    }

    fn demand(&self, (width, height): (u32, u32)) -> Demand {
        Demand {
            codec: Codec::H264,
            width,
            height,
            fps_num: self.input.fps_num,
            fps_den: self.input.fps_den,
            priority: self.priority,
            reservation: self.reservation,
        }
    }

    /// What the ladder asks of a card.
    pub fn ladder_demand(&self) -> LadderDemand {
        let mut input = self.demand(self.input_size());
        input.codec = self.input.codec;
        LadderDemand {
            input,
            outputs: self
                .outputs
                .iter()
                .map(|o| self.demand((o.width, o.height)))
                .collect(),
            priority: self.priority,
            reservation: self.reservation,
        }
    }

    /// The card decoder's configuration: the given input size is its maximum.
    pub fn decoder_config(&self) -> DecoderConfig {
        let (max_width, max_height) = self.input.size.unwrap_or((0, 0));
        DecoderConfig {
            codec: self.input.codec,
            max_width,
            max_height,
            fps_num: self.input.fps_num,
            fps_den: self.input.fps_den,
        }
    }

    /// The encode session of each rendition. Keyframes are forced by the daemon on the
    /// same input frames for every rendition, so the encoders' own GOP is off.
    pub fn encoder_configs(&self) -> Vec<SessionConfig> {
        self.outputs
            .iter()
            .map(|o| SessionConfig {
                codec: Codec::H264,
                width: o.width,
                height: o.height,
                fps_num: self.input.fps_num,
                fps_den: self.input.fps_den,
                pixel_format: PixelFormat::I420,
                rate_control: o.rate_control,
                bitrate: o.bitrate,
                max_bitrate: o.max_bitrate,
                qp: o.qp,
                gop: 0,
                low_latency: false,
                engine_hint: None,
            })
            .collect()
    }
}
