//! The per-session data channel: its wire format ([`proto`]) and its transport
//! ([`socket`]), both from the `vpud-proto` crate that clients share, with spare socket
//! pairs made ahead of need ([`spare`]). See `docs/data-channel.md`.

pub use vpud_proto as proto;
pub use vpud_proto::socket;

pub mod spare;
