//! The per-session data channel: its wire format ([`proto`]) and its transport
//! ([`socket`]), with spare socket pairs made ahead of need ([`spare`]). See
//! `docs/data-channel.md`.

pub mod proto;
pub mod socket;
pub mod spare;
