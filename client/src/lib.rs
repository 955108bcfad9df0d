//! The client library of vpud, for media services and `vpuctl`.
//!
//! A media service depends on this crate (and, through it, on `vpud-proto`, the data
//! channel's wire format) and on nothing of the daemon.
//!
//! [`Client::connect`] finds the daemon (`--bus`, then `VPUD_BUS_ADDRESS`, then the system
//! bus); [`Client::create_session`] opens an encode session whose frames and packets
//! travel over the session's data channel ([`Session`]), not over D-Bus. Errors the daemon
//! replies with are typed ([`ClientError`]). [`Client::create_transcode`] opens a
//! transcode session ([`Transcode`]): compressed access units in, a ladder of renditions
//! out, decoded, scaled and encoded on one card.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod annexb;
mod channel;
mod connect;
mod error;
mod manager;
mod params;
mod pool;
pub mod proxy;
mod session;
mod split;
mod transcode;
mod transcode_params;

pub use channel::{DataChannel, FrameSlot, Packet, SessionCounters};
pub use connect::{BusTarget, BUS_ENV};
pub use error::{ClientError, Result, ERROR_PREFIX};
pub use manager::{CardInfo, Client, FaultOptions, ManagerInfo, SessionInfo};
pub use params::{reservation_from_env, SessionParams, RESERVATION_ENV};
pub use pool::FramePool;
pub use session::Session;
pub use split::{ChannelEvent, ChannelMonitor, FrameSender, PacketReceiver, SenderSlot};
pub use transcode::{RenditionPacket, Transcode, TranscodeCounters};
pub use transcode_params::{RenditionParams, TranscodeInput, TranscodeParams};
