//! vpud: shares VPU encode cards between media services.
//!
//! The daemon finds cards (VFIO functions and emulated cards), schedules encode sessions
//! across them and serves the D-Bus API of `dbus-api.md` (shipped as
//! `daemon/dist/org.vpud.Vpud1.xml`); frames and bitstream travel over a per-session data
//! channel (`docs/data-channel.md`).
//!
//! - [`config`]: the TOML configuration;
//! - [`discovery`]: finding, resetting and bringing up cards;
//! - [`scheduler`]: the cost model, admission, placement policies and quotas;
//! - [`session`]: sessions and the tasks serving their data channels;
//! - [`channel`]: the data channel's wire format and socket;
//! - [`dbus`]: the D-Bus objects, a thin layer over the above: it parses and validates
//!   arguments, checks the caller, delegates, and announces what `service::changes`
//!   recorded. Only the runner in [`service`] (which puts the daemon on the bus) knows it;
//!   the core never calls up into it;
//! - [`service`]: the daemon itself, run as a service or embedded in-process: its state,
//!   health and recovery, card administration, and the record of changes to announce;
//! - [`bus`]: a private `dbus-daemon` for machines without a bus, demos and tests;
//! - [`notify`]: systemd readiness and watchdog; [`metrics`]: counters.
//!
//! The client library media services use is the `vpud-client` crate, the data channel's
//! wire format `vpud-proto`, and the command line `vpuctl`: none of them needs this crate
//! (`vpuctl` embeds it only for `--emulate` and the demo).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod channel;
pub mod config;
pub mod dbus;
pub mod discovery;
pub mod metrics;
pub mod notify;
pub mod scheduler;
pub mod service;
pub mod session;
