//! The per-session data channel: its wire format ([`proto`]) and its transport
//! ([`socket`]). See `docs/data-channel.md`.

pub mod proto;
pub mod socket;
