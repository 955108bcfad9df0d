//! Packets larger than one record: splitting on the daemon side, reassembly on the client
//! side.

use super::types::*;

/// Splits an encoded packet into `PACKET` records of at most [`MAX_RECORD_LEN`] bytes.
/// An empty packet (a skipped frame) is one record with an empty payload.
pub fn packet_chunks(packet: &WirePacket) -> impl Iterator<Item = DaemonRecord> + '_ {
    let total_len = packet.data.len().min(MAX_PACKET_LEN) as u32;
    let data = &packet.data[..total_len as usize];
    let n = data.len().div_ceil(MAX_PACKET_CHUNK).max(1);
    (0..n).map(move |i| {
        let start = i * MAX_PACKET_CHUNK;
        let end = (start + MAX_PACKET_CHUNK).min(data.len());
        let mut flags = if packet.keyframe { PACKET_KEYFRAME } else { 0 };
        if i + 1 < n {
            flags |= PACKET_CONTINUES;
        }
        DaemonRecord::Packet(PacketChunk {
            pts: packet.pts,
            rendition: packet.rendition,
            total_len,
            frame_type: packet.frame_type,
            flags,
            payload: data[start..end].to_vec(),
        })
    })
}

/// Reassembles chunked `PACKET` records on the client side.
#[derive(Debug, Default)]
pub struct PacketAssembler {
    partial: Option<WirePacket>,
    declared: u32,
}

impl PacketAssembler {
    pub fn new() -> PacketAssembler {
        PacketAssembler::default()
    }

    /// Adds one chunk; returns the packet once its last chunk has arrived.
    pub fn push(&mut self, chunk: PacketChunk) -> Result<Option<WirePacket>, ProtoError> {
        let mut packet = match self.partial.take() {
            Some(p) if p.pts != chunk.pts => {
                return Err(ProtoError::ChunkMismatch {
                    expected: p.pts,
                    got: chunk.pts,
                })
            }
            Some(p) if p.rendition != chunk.rendition => {
                return Err(ProtoError::RenditionMismatch {
                    expected: p.rendition,
                    got: chunk.rendition,
                })
            }
            Some(p) => p,
            None => {
                self.declared = chunk.total_len;
                WirePacket {
                    pts: chunk.pts,
                    rendition: chunk.rendition,
                    keyframe: chunk.flags & PACKET_KEYFRAME != 0,
                    frame_type: chunk.frame_type,
                    data: Vec::with_capacity(chunk.total_len as usize),
                }
            }
        };
        if packet.data.len() + chunk.payload.len() > self.declared as usize
            || chunk.total_len != self.declared
        {
            return Err(ProtoError::PacketLength {
                declared: self.declared,
                got: packet.data.len() + chunk.payload.len(),
            });
        }
        packet.data.extend_from_slice(&chunk.payload);
        if chunk.flags & PACKET_CONTINUES != 0 {
            self.partial = Some(packet);
            return Ok(None);
        }
        if packet.data.len() != self.declared as usize {
            return Err(ProtoError::PacketLength {
                declared: self.declared,
                got: packet.data.len(),
            });
        }
        Ok(Some(packet))
    }
}
