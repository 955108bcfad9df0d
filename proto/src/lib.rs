//! vpud's data channel: the wire format of its records and the socket they travel on
//! (`docs/data-channel.md`). The daemon and every client (the `vpud-client` library, or a
//! media service's own code) share this crate, and nothing else of the daemon.
//!
//! Every record is one datagram on a `SOCK_SEQPACKET` Unix socket: an 8-byte header
//! (`kind`, `version`, reserved, body length) followed by a body whose layout depends on the
//! kind. All integers are little-endian. Both sides use this module: the daemon decodes
//! [`ClientRecord`]s and encodes [`DaemonRecord`]s, a client does the reverse.
//!
//! Decoding never panics and never trusts a length field: every record is checked against
//! its exact size, reserved fields must be zero, unknown flags are rejected, and every
//! variable-length part is bounded ([`MAX_RECORD_LEN`], [`MAX_ERROR_MESSAGE_LEN`],
//! [`MAX_PACKET_LEN`]).
//!
//! Layout: `types` (kinds, limits, records, errors), `codec` (encode and decode),
//! `chunks` (packet splitting and reassembly), [`socket`] (the `SOCK_SEQPACKET` pair, with
//! file descriptors passed alongside records).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod chunks;
mod codec;
mod types;

pub mod socket;

pub use chunks::{packet_chunks, PacketAssembler};
pub use codec::kind_name;
pub use types::*;

#[cfg(test)]
mod tests;
