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
