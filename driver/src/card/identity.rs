//! The card's identity, read from Identify Controller and its VPU block.

use vpu_ffi::{vpu_identify_controller, IDENTIFY_MAGIC, VPU_INTERFACE_VERSION};

use super::engines::{read_engines, EngineCaps, EngineKind};
use super::error::CardError;
use super::types::{Codec, PixelFormat};

/// What a card is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardIdentity {
    pub model: String,
    pub serial: String,
    pub firmware: String,
    /// PCI vendor id from Identify.
    pub vendor_id: u16,
    pub encode_engines: u8,
    pub decode_engines: u8,
    pub scale_engines: u8,
    /// Load units one encode engine provides (1,000,000 = one engine fully busy).
    pub capacity_per_engine: u32,
    /// Codecs some encode engine encodes.
    pub codecs: Vec<Codec>,
    pub max_width: u16,
    pub max_height: u16,
    pub max_sessions_per_engine: u16,
    pub max_frames_in_flight: u16,
    pub pixel_formats: Vec<PixelFormat>,
    /// H.264 luma samples per second one encode engine sustains.
    pub pixel_rate_per_engine: u64,
    /// Every engine and what it does, one entry per engine and codec.
    pub engines: Vec<EngineCaps>,
}

fn ascii(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches(['\0', ' '])
        .trim()
        .to_string()
}

impl CardIdentity {
    /// Total load units of the card's encode engines.
    pub fn capacity(&self) -> u64 {
        u64::from(self.encode_engines) * u64::from(self.capacity_per_engine)
    }

    /// The entries of the encode engines that encode `codec`.
    pub fn encoders(&self, codec: Codec) -> impl Iterator<Item = &EngineCaps> + '_ {
        self.engines
            .iter()
            .filter(move |e| e.kind == EngineKind::Encode && e.codec == Some(codec))
    }

    /// The entries of engines of `kind`.
    pub fn engines_of(&self, kind: EngineKind) -> impl Iterator<Item = &EngineCaps> + '_ {
        self.engines.iter().filter(move |e| e.kind == kind)
    }

    /// Reads the identity; `NotVpu` when the VPU block's magic is missing.
    pub fn from_identify(device: &str, id: &vpu_identify_controller) -> Result<Self, CardError> {
        let vpu = id.vpu;
        if vpu.magic != IDENTIFY_MAGIC {
            return Err(CardError::NotVpu {
                device: device.to_string(),
            });
        }
        let version = vpu.version;
        if u32::from(version) != VPU_INTERFACE_VERSION {
            return Err(CardError::UnsupportedVersion {
                device: device.to_string(),
                version,
            });
        }
        let codecs_mask = vpu.codecs;
        let formats_mask = vpu.pixel_formats;
        let legacy_codecs: Vec<Codec> = Codec::ALL
            .iter()
            .copied()
            .filter(|c| c.code() < 32 && codecs_mask & (1 << c.code()) != 0)
            .collect();
        let engines = read_engines(device, &vpu, &legacy_codecs)?;
        // With a table, what the engines say is what the card encodes.
        let codecs = Codec::ALL
            .iter()
            .copied()
            .filter(|&c| {
                engines
                    .iter()
                    .any(|e| e.kind == EngineKind::Encode && e.codec == Some(c))
            })
            .collect();
        Ok(Self {
            model: ascii(&id.mn.map(|c| c as u8)),
            serial: ascii(&id.sn.map(|c| c as u8)),
            firmware: ascii(&id.fr.map(|c| c as u8)),
            vendor_id: id.vid,
            encode_engines: vpu.encode_engines,
            decode_engines: vpu.decode_engines,
            scale_engines: vpu.scale_engines,
            capacity_per_engine: vpu.capacity_per_engine,
            codecs,
            max_width: vpu.max_width,
            max_height: vpu.max_height,
            max_sessions_per_engine: vpu.max_sessions_per_engine,
            max_frames_in_flight: vpu.max_frames_in_flight,
            pixel_formats: PixelFormat::ALL
                .iter()
                .copied()
                .filter(|f| f.code() < 32 && formats_mask & (1 << f.code()) != 0)
                .collect(),
            pixel_rate_per_engine: vpu.pixel_rate_per_engine,
            engines,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nvme::read_struct;
    use std::mem::offset_of;
    use vpu_ffi::{
        vpu_engine_caps, vpu_identify_vpu, VPU_CODEC_AV1, VPU_CODEC_H264, VPU_CODEC_NONE,
        VPU_ENGINE_KIND_DECODE, VPU_ENGINE_KIND_ENCODE, VPU_ENGINE_KIND_SCALE, VPU_IDENTIFY_SIZE,
    };

    fn identify(bytes: &[u8]) -> vpu_identify_controller {
        read_struct(bytes).unwrap()
    }

    #[test]
    fn a_plain_nvme_controller_is_not_a_vpu() {
        let bytes = vec![0u8; VPU_IDENTIFY_SIZE as usize];
        assert!(matches!(
            CardIdentity::from_identify("nvme0", &identify(&bytes)),
            Err(CardError::NotVpu { device }) if device == "nvme0"
        ));
    }

    #[test]
    fn the_vpu_block_is_read() {
        let mut b = vec![b' '; VPU_IDENTIFY_SIZE as usize];
        let vpu = offset_of!(vpu_identify_controller, vpu);
        b[vpu..].fill(0);
        b[0..2].copy_from_slice(&0x1dedu16.to_le_bytes());
        b[4..8].copy_from_slice(b"S123");
        b[24..32].copy_from_slice(b"VPU-EMU ");
        let at = |f: usize| vpu + f;
        b[at(offset_of!(vpu_identify_vpu, magic))..][..4].copy_from_slice(&IDENTIFY_MAGIC);
        b[at(offset_of!(vpu_identify_vpu, version))] = 1;
        b[at(offset_of!(vpu_identify_vpu, encode_engines))] = 2;
        b[at(offset_of!(vpu_identify_vpu, capacity_per_engine))..][..4]
            .copy_from_slice(&1_000_000u32.to_le_bytes());
        b[at(offset_of!(vpu_identify_vpu, codecs))] = 0b101;
        b[at(offset_of!(vpu_identify_vpu, pixel_formats))] = 0b11;
        let id = CardIdentity::from_identify("emu0", &identify(&b)).unwrap();
        assert_eq!(id.serial, "S123");
        assert_eq!(id.model, "VPU-EMU");
        assert_eq!(id.vendor_id, 0x1ded);
        assert_eq!(id.codecs, vec![Codec::H264, Codec::Av1]);
        assert_eq!(id.pixel_formats, vec![PixelFormat::I420, PixelFormat::Nv12]);
        assert_eq!(id.capacity(), 2_000_000);
        // No engine table: each encode engine encodes each codec of the legacy mask.
        assert_eq!(id.engines.len(), 4);
        assert_eq!(id.encoders(Codec::Av1).count(), 2);
        assert!(id.engines_of(EngineKind::Decode).next().is_none());

        b[at(offset_of!(vpu_identify_vpu, version))] = 9;
        assert!(matches!(
            CardIdentity::from_identify("emu0", &identify(&b)),
            Err(CardError::UnsupportedVersion { version: 9, .. })
        ));
    }

    fn card_with_table(entries: &[vpu_engine_caps]) -> vpu_identify_controller {
        let mut id = vpu_identify_controller::default();
        id.vpu.magic = IDENTIFY_MAGIC;
        id.vpu.version = VPU_INTERFACE_VERSION as u16;
        id.vpu.encode_engines = 2;
        id.vpu.decode_engines = 1;
        id.vpu.scale_engines = 1;
        id.vpu.codecs = 1 << VPU_CODEC_H264;
        id.vpu.engine_caps_count = entries.len() as u8;
        id.vpu.engine_caps[..entries.len()].copy_from_slice(entries);
        id
    }

    fn entry(engine: u8, kind: u32, codec: u32, pixel_rate: u64) -> vpu_engine_caps {
        vpu_engine_caps {
            engine,
            kind: kind as u8,
            codec: codec as u8,
            max_width: 1920,
            max_height: 1080,
            capacity: 1_000_000,
            pixel_rate,
            ..Default::default()
        }
    }

    #[test]
    fn the_engine_table_says_what_each_engine_does() {
        let id = card_with_table(&[
            entry(0, VPU_ENGINE_KIND_ENCODE, VPU_CODEC_H264, 300_000_000),
            entry(1, VPU_ENGINE_KIND_ENCODE, VPU_CODEC_H264, 300_000_000),
            entry(1, VPU_ENGINE_KIND_ENCODE, VPU_CODEC_AV1, 30_000_000),
            entry(0, VPU_ENGINE_KIND_DECODE, VPU_CODEC_H264, 500_000_000),
            entry(0, VPU_ENGINE_KIND_SCALE, VPU_CODEC_NONE, 900_000_000),
            // A codec this driver does not know is skipped, not an error.
            entry(0, VPU_ENGINE_KIND_ENCODE, 9, 1),
        ]);
        let id = CardIdentity::from_identify("emu0", &id).unwrap();
        assert_eq!(id.engines.len(), 5);
        // The table, not the legacy mask, says which codecs the card encodes.
        assert_eq!(id.codecs, vec![Codec::H264, Codec::Av1]);
        let av1: Vec<_> = id.encoders(Codec::Av1).collect();
        assert_eq!(
            (av1.len(), av1[0].engine, av1[0].pixel_rate),
            (1, 1, 30_000_000)
        );
        assert!(av1[0].fits(1920, 1080) && !av1[0].fits(1922, 1080));
        let scaler = id.engines_of(EngineKind::Scale).next().unwrap();
        assert_eq!(
            (scaler.codec, scaler.to_raw().codec),
            (None, VPU_CODEC_NONE as u8)
        );
        assert_eq!(id.engines_of(EngineKind::Decode).count(), 1);
    }

    #[test]
    fn an_inconsistent_engine_table_is_refused() {
        for bad in [
            entry(2, VPU_ENGINE_KIND_ENCODE, VPU_CODEC_H264, 1), // only 2 encode engines
            entry(1, VPU_ENGINE_KIND_DECODE, VPU_CODEC_H264, 1), // only 1 decoder
            entry(0, 7, VPU_CODEC_H264, 1),                      // no such kind
        ] {
            let id = card_with_table(&[bad]);
            assert!(matches!(
                CardIdentity::from_identify("emu0", &id),
                Err(CardError::BadIdentify { .. })
            ));
        }
        let mut id = card_with_table(&[]);
        id.vpu.engine_caps_count = 25;
        assert!(matches!(
            CardIdentity::from_identify("emu0", &id),
            Err(CardError::BadIdentify { why, .. }) if why.contains("at most 24")
        ));
    }
}
