//! The video command set on top of the NVMe transport: identify, sessions, frames in,
//! packets out. This is the API the daemon uses.
//!
//! - `types`: codecs, pixel formats, session configuration, packets, statistics;
//! - `identity`: the card's identity from Identify Controller's VPU block;
//! - `engines`: the engine capability table in that block (what each engine does);
//! - `device`: [`Card`], its sessions and commands;
//! - `encode`: Encode Frame, output buffers, checks on the card's answer;
//! - `logs`: engine and session log pages;
//! - `params`: the Create Session parameter block;
//! - `pool`: reusable DMA buffers for copied frames and bitstream output;
//! - `transcode`: decoders, scaling and encoding from the card's frame memory.

mod device;
mod encode;
#[doc(hidden)]
pub mod encoded;
mod engines;
mod error;
mod identity;
mod logs;
mod params;
mod pool;
mod transcode;
mod types;

pub use crate::nvme::VendorStatus;
pub use device::{Card, CardMetrics, CardMetricsSnapshot};
pub use engines::{baseline_profiles, EngineCaps, EngineKind};
pub use error::CardError;
pub use identity::CardIdentity;
pub use transcode::{CardFrame, DecoderConfig, ScaleFilter, MAX_ACCESS_UNIT};
pub use types::{
    CardOptions, Codec, EngineStats, FrameInput, FrameType, Packet, PixelFormat, RateControl,
    Reconfigure, SessionConfig, SessionId, SessionStats,
};
