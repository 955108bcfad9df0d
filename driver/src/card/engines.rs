//! What each of a card's engines does: the engine capability table of Identify's VPU
//! block (`struct vpu_engine_caps`), read without trusting the card.

use std::fmt;

use vpu_ffi::{
    vpu_engine_caps, vpu_identify_vpu, VPU_AV1_PROFILE_BIT_MAIN, VPU_CODEC_NONE,
    VPU_ENGINE_KIND_DECODE, VPU_ENGINE_KIND_ENCODE, VPU_ENGINE_KIND_SCALE,
    VPU_H264_PROFILE_BIT_CONSTRAINED_BASELINE, VPU_MAX_ENGINE_CAPS,
};

use super::error::CardError;
use super::types::Codec;

/// What an engine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Raw frames in, bitstream out.
    Encode,
    /// Bitstream in, frames out into card memory.
    Decode,
    /// Card frames in, resized card frames out.
    Scale,
}

impl EngineKind {
    /// Lowercase name, as logs and D-Bus use.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Encode => "encode",
            EngineKind::Decode => "decode",
            EngineKind::Scale => "scale",
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match u32::from(code) {
            VPU_ENGINE_KIND_ENCODE => Some(EngineKind::Encode),
            VPU_ENGINE_KIND_DECODE => Some(EngineKind::Decode),
            VPU_ENGINE_KIND_SCALE => Some(EngineKind::Scale),
            _ => None,
        }
    }

    /// The code `vpu.h` gives this kind.
    pub fn code(self) -> u8 {
        // The VPU_ENGINE_KIND_* values are 0..=2.
        match self {
            EngineKind::Encode => VPU_ENGINE_KIND_ENCODE as u8,
            EngineKind::Decode => VPU_ENGINE_KIND_DECODE as u8,
            EngineKind::Scale => VPU_ENGINE_KIND_SCALE as u8,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one engine does with one codec (or, for a scaler, at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineCaps {
    /// Index among the card's engines of this kind.
    pub engine: u8,
    pub kind: EngineKind,
    /// `None` for a scaler.
    pub codec: Option<Codec>,
    /// Highest level (H.264 `level_idc`, AV1 `seq_level_idx`); 0: any.
    pub max_level: u8,
    /// `VPU_<codec>_PROFILE_BIT_*` the engine takes.
    pub profiles: u32,
    pub max_width: u16,
    pub max_height: u16,
    /// Load units the engine provides (shared by all its codecs).
    pub capacity: u32,
    /// Luma samples per second the engine sustains with this codec.
    pub pixel_rate: u64,
}

impl EngineCaps {
    /// Whether a `width`×`height` picture fits the engine.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        width <= u32::from(self.max_width) && height <= u32::from(self.max_height)
    }

    /// The table entry for this capability.
    pub fn to_raw(&self) -> vpu_engine_caps {
        vpu_engine_caps {
            engine: self.engine,
            kind: self.kind.code(),
            // Codec codes are below VPU_CODEC_NONE (0xff).
            codec: self.codec.map_or(VPU_CODEC_NONE as u8, |c| c.code() as u8),
            max_level: self.max_level,
            profiles: self.profiles,
            max_width: self.max_width,
            max_height: self.max_height,
            capacity: self.capacity,
            pixel_rate: self.pixel_rate,
            ..Default::default()
        }
    }
}

/// The profile bits a card that names none is taken to support for `codec`.
pub fn baseline_profiles(codec: Codec) -> u32 {
    match codec {
        Codec::H264 => VPU_H264_PROFILE_BIT_CONSTRAINED_BASELINE,
        Codec::Av1 => VPU_AV1_PROFILE_BIT_MAIN,
        // No HEVC profile bits are defined yet.
        Codec::Hevc => 0,
    }
}

/// Reads the engine table of `vpu`; an empty table is synthesised from the legacy fields
/// (every encode engine encodes every codec in `codecs` at `pixel_rate_per_engine`).
pub(super) fn read_engines(
    device: &str,
    vpu: &vpu_identify_vpu,
    codecs: &[Codec],
) -> Result<Vec<EngineCaps>, CardError> {
    let count = usize::from(vpu.engine_caps_count);
    if count == 0 {
        return Ok(legacy_engines(vpu, codecs));
    }
    let bad = |why: String| CardError::BadIdentify {
        device: device.to_string(),
        why,
    };
    if count > VPU_MAX_ENGINE_CAPS as usize {
        return Err(bad(format!(
            "{count} engine capability entries, at most {VPU_MAX_ENGINE_CAPS}"
        )));
    }
    let table = vpu.engine_caps;
    let mut engines = Vec::with_capacity(count);
    for (i, raw) in table.iter().take(count).enumerate() {
        let kind = EngineKind::from_code(raw.kind)
            .ok_or_else(|| bad(format!("entry {i}: unknown engine kind {}", raw.kind)))?;
        let engines_of_kind = match kind {
            EngineKind::Encode => vpu.encode_engines,
            EngineKind::Decode => vpu.decode_engines,
            EngineKind::Scale => vpu.scale_engines,
        };
        if raw.engine >= engines_of_kind {
            return Err(bad(format!(
                "entry {i}: {kind} engine {} of {engines_of_kind}",
                raw.engine
            )));
        }
        let codec = if kind == EngineKind::Scale {
            None
        } else {
            match Codec::from_code(u32::from(raw.codec)) {
                Some(c) => Some(c),
                // A codec this driver does not know: the card may offer more than we use.
                None => continue,
            }
        };
        engines.push(EngineCaps {
            engine: raw.engine,
            kind,
            codec,
            max_level: raw.max_level,
            profiles: raw.profiles,
            max_width: raw.max_width,
            max_height: raw.max_height,
            capacity: raw.capacity,
            pixel_rate: raw.pixel_rate,
        });
    }
    Ok(engines)
}

fn legacy_engines(vpu: &vpu_identify_vpu, codecs: &[Codec]) -> Vec<EngineCaps> {
    (0..vpu.encode_engines)
        .flat_map(|engine| {
            codecs.iter().map(move |&codec| EngineCaps {
                engine,
                kind: EngineKind::Encode,
                codec: Some(codec),
                max_level: 0,
                profiles: baseline_profiles(codec),
                max_width: vpu.max_width,
                max_height: vpu.max_height,
                capacity: vpu.capacity_per_engine,
                pixel_rate: vpu.pixel_rate_per_engine,
            })
        })
        .collect()
}
