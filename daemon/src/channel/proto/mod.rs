//! The data channel's wire format: records and their codec (`docs/data-channel.md`).
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
//! `chunks` (packet splitting and reassembly).

mod chunks;
mod codec;
mod types;

pub use chunks::{packet_chunks, PacketAssembler};
pub use codec::kind_name;
pub use types::*;

#[cfg(test)]
mod tests;
