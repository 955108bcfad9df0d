//! vpud: shares VPU encode cards between media services.
//!
//! The daemon finds cards (VFIO functions and emulated cards), schedules encode sessions
//! across them and serves the D-Bus API of `docs`/`dbus-api.md`; frames and bitstream
//! travel over a per-session data channel (`docs/data-channel.md`).
//!
//! - [`config`]: the TOML configuration;
//! - [`bus`]: a private `dbus-daemon` for machines without a bus, demos and tests;
//! - [`channel`]: the data channel's wire format and socket;
//! - [`service`]: the daemon itself, to run as a service or embedded in-process;
//! - [`client`]: the client library media services use (and `vpuctl`);
//! - [`ctl`]: `vpuctl`, the command line.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod channel;
pub mod client;
pub mod config;
pub mod ctl;
pub mod scheduler;
pub mod service;
