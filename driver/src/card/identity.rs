//! The card's identity, read from Identify Controller and its VPU block.

use vpu_ffi::{vpu_identify_controller, IDENTIFY_MAGIC, VPU_INTERFACE_VERSION};

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
    /// Load units one engine provides (1,000,000 = one engine fully busy).
    pub capacity_per_engine: u32,
    pub codecs: Vec<Codec>,
    pub max_width: u16,
    pub max_height: u16,
    pub max_sessions_per_engine: u16,
    pub max_frames_in_flight: u16,
    pub pixel_formats: Vec<PixelFormat>,
    /// Luma samples per second one engine sustains.
    pub pixel_rate_per_engine: u64,
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
        Ok(Self {
            model: ascii(&id.mn.map(|c| c as u8)),
            serial: ascii(&id.sn.map(|c| c as u8)),
            firmware: ascii(&id.fr.map(|c| c as u8)),
            vendor_id: id.vid,
            encode_engines: vpu.encode_engines,
            decode_engines: vpu.decode_engines,
            capacity_per_engine: vpu.capacity_per_engine,
            codecs: Codec::ALL
                .iter()
                .copied()
                .filter(|c| c.code() < 32 && codecs_mask & (1 << c.code()) != 0)
                .collect(),
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
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nvme::read_struct;
    use std::mem::offset_of;
    use vpu_ffi::{vpu_identify_vpu, VPU_IDENTIFY_SIZE};

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

        b[at(offset_of!(vpu_identify_vpu, version))] = 9;
        assert!(matches!(
            CardIdentity::from_identify("emu0", &identify(&b)),
            Err(CardError::UnsupportedVersion { version: 9, .. })
        ));
    }
}
