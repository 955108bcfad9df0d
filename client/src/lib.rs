//! The client library of vpud, for media services and `vpuctl`.
//!
//! A media service depends on this crate (and, through it, on `vpud-proto`, the data
//! channel's wire format) and on nothing of the daemon.
//!
//! [`Client::connect`] finds the daemon (`--bus`, then `VPUD_BUS_ADDRESS`, then the system
//! bus); [`Client::create_session`] opens an encode session whose frames and packets
//! travel over the session's data channel ([`Session`]), not over D-Bus. Errors the daemon
//! replies with are typed ([`ClientError`]).

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

pub use channel::{DataChannel, FrameSlot, Packet, SessionCounters};
pub use connect::{BusTarget, BUS_ENV};
pub use error::{ClientError, Result, ERROR_PREFIX};
pub use manager::{CardInfo, Client, FaultOptions, ManagerInfo, SessionInfo};
pub use params::{reservation_from_env, SessionParams, RESERVATION_ENV};
pub use pool::FramePool;
pub use session::Session;
pub use split::{ChannelEvent, FrameSender, PacketReceiver, SenderSlot};
