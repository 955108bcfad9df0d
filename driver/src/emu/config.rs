//! Configuration of an emulated card: its identity, engines (the mix of H.264 and AV1
//! encoders) and declared capacity.

use vpu_ffi::{
    VPU_AV1_PROFILE_BIT_MAIN, VPU_H264_PROFILE_BIT_CONSTRAINED_BASELINE, VPU_H264_PROFILE_BIT_HIGH,
    VPU_H264_PROFILE_BIT_MAIN, VPU_LOAD_UNITS_PER_ENGINE,
};

use super::EmuError;
use crate::card::{Codec, EngineCaps, EngineKind};

/// The largest picture the `openh264` encoder accepts (it refuses anything over level 5.2).
pub(super) const ENCODER_MAX_LONG_SIDE: u16 = 3840;
pub(super) const ENCODER_MAX_SHORT_SIDE: u16 = 2160;

/// Luma samples per second an AV1 engine declares by default: 1280x720 at 24 frames/s,
/// an estimate for `rav1e` at the card's settings on one quiet core of the project's
/// hosts; a loaded host measured far less (`BENCHMARKS.md`, "AV1 engines").
pub const AV1_PIXEL_RATE: u64 = 1280 * 720 * 24;

/// The codec an encode engine of an emulated card encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCodec {
    /// `openh264`: Constrained Baseline H.264.
    H264,
    /// `rav1e`: AV1 Main profile, 8-bit 4:2:0.
    Av1,
}

/// What an emulated card looks like to the host.
#[derive(Debug, Clone)]
pub struct EmuConfig {
    /// Card index: name `emu{index}`, PCI address `0000:e0:{index:02x}.0`.
    pub index: u32,
    /// Encode engines, each a worker thread (1..=16).
    pub engines: u8,
    /// How many of the engines (the last ones) encode AV1 (with `rav1e`) instead of H.264
    /// (with `openh264`); 0..=`engines`.
    pub av1_engines: u8,
    /// Luma samples per second one AV1 engine sustains, as declared in Identify's AV1
    /// entries (and paced to with `pace`).
    pub av1_pixel_rate_per_engine: u64,
    /// Load units one engine provides (`VPU_LOAD_UNITS_PER_ENGINE` = one engine).
    pub capacity_per_engine: u32,
    /// Luma samples per second one H.264 engine sustains, as declared in Identify.
    pub pixel_rate_per_engine: u64,
    /// Throttle each engine to `pixel_rate_per_engine`, so that scheduling sees the
    /// declared throughput rather than the host CPU's.
    pub pace: bool,
    /// Widest picture accepted (luma samples); at most 3840, the software encoder's limit.
    pub max_width: u16,
    /// Tallest picture accepted; at most 2160 (3840 for portrait within 2160 wide).
    pub max_height: u16,
    /// Sessions one engine accepts (Create Session answers NO_CAPACITY beyond).
    pub max_sessions_per_engine: u16,
    /// Encode Frame commands one session should have queued, as declared in Identify.
    pub max_frames_in_flight: u16,
    /// Decode engines (H.264), each a worker thread (0..=16; 0: no transcoding).
    pub decode_engines: u8,
    /// Scaler engines, each a worker thread (0..=16; at least 1 with decode engines).
    pub scale_engines: u8,
    /// Luma samples per second one decode engine sustains, as declared in Identify.
    pub decode_pixel_rate: u64,
    /// Luma samples per second (of output) one scaler sustains, as declared in Identify.
    pub scale_pixel_rate: u64,
    /// Bytes of card frame memory for decoded and scaled pictures.
    pub frame_memory: usize,
    /// Identify strings (ASCII; truncated to 20, 40 and 8 bytes).
    pub serial: String,
    pub model: String,
    pub firmware: String,
}

impl Default for EmuConfig {
    fn default() -> Self {
        Self::with_index(0)
    }
}

impl EmuConfig {
    /// Defaults for card `index`, with identity strings derived from it.
    pub fn with_index(index: u32) -> Self {
        Self {
            index,
            engines: 2,
            capacity_per_engine: VPU_LOAD_UNITS_PER_ENGINE,
            pixel_rate_per_engine: 1280 * 720 * 240,
            av1_engines: 0,
            av1_pixel_rate_per_engine: AV1_PIXEL_RATE,
            pace: false,
            max_width: ENCODER_MAX_LONG_SIDE,
            max_height: ENCODER_MAX_SHORT_SIDE,
            max_sessions_per_engine: 16,
            max_frames_in_flight: 8,
            decode_engines: 1,
            scale_engines: 1,
            decode_pixel_rate: 1920 * 1080 * 240,
            scale_pixel_rate: 1920 * 1080 * 480,
            frame_memory: 256 << 20,
            serial: format!("EMU{index:08}"),
            model: "VPU emulated H.264 encoder".to_string(),
            firmware: "emu-1.0".to_string(),
        }
    }

    /// The card's name in logs and D-Bus: `emu{index}`.
    pub fn name(&self) -> String {
        format!("emu{}", self.index)
    }

    /// The engine capability table the card reports in Identify: each engine encodes
    /// one codec, Constrained Baseline H.264 or Main profile AV1 (what the software
    /// encoders produce), at its own pixel rate.
    pub fn engine_caps(&self) -> Vec<EngineCaps> {
        let encode = (0..self.engines).map(|engine| {
            let (codec, profiles) = match self.engine_codec(usize::from(engine)) {
                EngineCodec::H264 => (Codec::H264, VPU_H264_PROFILE_BIT_CONSTRAINED_BASELINE),
                EngineCodec::Av1 => (Codec::Av1, VPU_AV1_PROFILE_BIT_MAIN),
            };
            EngineCaps {
                engine,
                kind: EngineKind::Encode,
                codec: Some(codec),
                max_level: 0,
                profiles,
                max_width: self.max_width,
                max_height: self.max_height,
                capacity: self.capacity_per_engine,
                pixel_rate: self.engine_pixel_rate(usize::from(engine)),
            }
        });
        // openh264's decoder takes Constrained Baseline, Main and High streams.
        let decode = (0..self.decode_engines).map(|engine| EngineCaps {
            engine,
            kind: EngineKind::Decode,
            codec: Some(Codec::H264),
            max_level: 0,
            profiles: VPU_H264_PROFILE_BIT_CONSTRAINED_BASELINE
                | VPU_H264_PROFILE_BIT_MAIN
                | VPU_H264_PROFILE_BIT_HIGH,
            max_width: self.max_width,
            max_height: self.max_height,
            capacity: self.capacity_per_engine,
            pixel_rate: self.decode_pixel_rate,
        });
        let scale = (0..self.scale_engines).map(|engine| EngineCaps {
            engine,
            kind: EngineKind::Scale,
            codec: None,
            max_level: 0,
            profiles: 0,
            max_width: self.max_width,
            max_height: self.max_height,
            capacity: self.capacity_per_engine,
            pixel_rate: self.scale_pixel_rate,
        });
        encode.chain(decode).chain(scale).collect()
    }

    /// The synthetic PCI address the card reports.
    pub fn pci_address(&self) -> String {
        format!("0000:e0:{:02x}.0", self.index)
    }

    /// What engine `index` encodes.
    pub fn engine_codec(&self, index: usize) -> EngineCodec {
        if index + usize::from(self.av1_engines) >= usize::from(self.engines) {
            EngineCodec::Av1
        } else {
            EngineCodec::H264
        }
    }

    /// Luma samples per second engine `index` declares.
    pub fn engine_pixel_rate(&self, index: usize) -> u64 {
        match self.engine_codec(index) {
            EngineCodec::H264 => self.pixel_rate_per_engine,
            EngineCodec::Av1 => self.av1_pixel_rate_per_engine,
        }
    }

    pub(super) fn validate(&self) -> Result<(), EmuError> {
        let bad = |reason: String| {
            Err(EmuError::InvalidConfig {
                card: self.name(),
                reason,
            })
        };
        if self.engines == 0 || u32::from(self.engines) > vpu_ffi::VPU_MAX_ENGINES {
            return bad(format!(
                "engines must be 1..={}, got {}",
                vpu_ffi::VPU_MAX_ENGINES,
                self.engines
            ));
        }
        if self.av1_engines > self.engines {
            return bad(format!(
                "av1_engines ({}) must not exceed engines ({})",
                self.av1_engines, self.engines
            ));
        }
        if self.av1_engines > 0 && self.av1_pixel_rate_per_engine == 0 {
            return bad("av1_pixel_rate_per_engine must be non-zero".into());
        }
        if self.capacity_per_engine == 0 {
            return bad("capacity_per_engine must be non-zero".into());
        }
        if self.pixel_rate_per_engine == 0 {
            return bad("pixel_rate_per_engine must be non-zero".into());
        }
        if self.max_width < 16 || self.max_height < 16 {
            return bad(format!(
                "maximum picture {}x{} is too small",
                self.max_width, self.max_height
            ));
        }
        if self.max_width > ENCODER_MAX_LONG_SIDE
            || self.max_height > ENCODER_MAX_LONG_SIDE
            || self.max_width.min(self.max_height) > ENCODER_MAX_SHORT_SIDE
        {
            return bad(format!(
                "maximum picture {}x{} exceeds what the encoder supports ({}x{})",
                self.max_width, self.max_height, ENCODER_MAX_LONG_SIDE, ENCODER_MAX_SHORT_SIDE
            ));
        }
        let max = vpu_ffi::VPU_MAX_ENGINES as u8;
        if self.decode_engines > max || self.scale_engines > max {
            return bad(format!(
                "decode and scale engines must be 0..={max}, got {} and {}",
                self.decode_engines, self.scale_engines
            ));
        }
        if self.decode_engines > 0
            && (self.scale_engines == 0
                || self.decode_pixel_rate == 0
                || self.scale_pixel_rate == 0
                || self.frame_memory < 64 << 20)
        {
            return bad(
                "a card with decode engines needs a scaler, non-zero decode and scale \
                pixel rates and at least 64 MiB of frame memory"
                    .into(),
            );
        }
        let caps = self.engine_caps().len();
        if caps > vpu_ffi::VPU_MAX_ENGINE_CAPS as usize {
            return bad(format!(
                "{caps} engine capability entries, Identify holds at most {}",
                vpu_ffi::VPU_MAX_ENGINE_CAPS
            ));
        }
        if self.max_sessions_per_engine == 0 || self.max_frames_in_flight == 0 {
            return bad("max_sessions_per_engine and max_frames_in_flight must be non-zero".into());
        }
        for (what, s) in [
            ("serial", &self.serial),
            ("model", &self.model),
            ("firmware", &self.firmware),
        ] {
            if !s.is_ascii() {
                return bad(format!("{what} must be ASCII"));
            }
        }
        Ok(())
    }
}
