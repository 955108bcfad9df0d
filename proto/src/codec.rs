//! Encoding and decoding of single records. Decoding never trusts a length field: each
//! record is checked against its exact size, reserved fields must be zero, unknown flags
//! are rejected.

use super::types::*;

fn header(out: &mut Vec<u8>, kind: u8, body_len: usize) {
    out.push(kind);
    out.push(VERSION);
    out.extend_from_slice(&0u16.to_le_bytes());
    // Bodies are bounded by MAX_RECORD_LEN (asserted by the encoders' callers via chunking),
    // so the length always fits in u32.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
}

impl ClientRecord {
    /// The record as one datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32);
        match self {
            ClientRecord::RegisterBuffer { buffer_id, size } => {
                header(&mut out, kind::REGISTER_BUFFER, 16);
                out.extend_from_slice(&buffer_id.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
            }
            ClientRecord::UnregisterBuffer { buffer_id } => {
                header(&mut out, kind::UNREGISTER_BUFFER, 8);
                out.extend_from_slice(&buffer_id.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            ClientRecord::Frame(f) | ClientRecord::AccessUnit(f) => {
                let k = match self {
                    ClientRecord::AccessUnit(_) => kind::ACCESS_UNIT,
                    _ => kind::FRAME,
                };
                header(&mut out, k, 32);
                out.extend_from_slice(&f.buffer_id.to_le_bytes());
                out.extend_from_slice(&f.flags.to_le_bytes());
                out.extend_from_slice(&f.offset.to_le_bytes());
                out.extend_from_slice(&f.length.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&f.pts.to_le_bytes());
            }
            ClientRecord::EndOfStream => header(&mut out, kind::END_OF_STREAM, 0),
        }
        out
    }

    /// Decodes one datagram sent by a client.
    pub fn decode(buf: &[u8]) -> Result<ClientRecord, ProtoError> {
        let (k, body) = split(buf)?;
        match k {
            kind::REGISTER_BUFFER => {
                let mut r = Reader::new("register-buffer", body, 16)?;
                let buffer_id = r.u32();
                r.reserved32("reserved")?;
                let size = r.u64();
                if buffer_id >= u32::from(MAX_BUFFERS) {
                    return Err(out_of_range(
                        "register-buffer",
                        "buffer_id",
                        buffer_id.into(),
                        "0..64",
                    ));
                }
                if size == 0 || size > MAX_BUFFER_LEN {
                    return Err(out_of_range("register-buffer", "size", size, "1..=2^30"));
                }
                Ok(ClientRecord::RegisterBuffer { buffer_id, size })
            }
            kind::UNREGISTER_BUFFER => {
                let mut r = Reader::new("unregister-buffer", body, 8)?;
                let buffer_id = r.u32();
                r.reserved32("reserved")?;
                Ok(ClientRecord::UnregisterBuffer { buffer_id })
            }
            kind::FRAME => {
                let mut r = Reader::new("frame", body, 32)?;
                let buffer_id = r.u32();
                let flags = r.u32();
                let offset = r.u64();
                let length = r.u32();
                r.reserved32("reserved")?;
                let pts = r.u64();
                if flags & !FRAME_FORCE_KEYFRAME != 0 {
                    return Err(ProtoError::UnknownFlags {
                        kind: "frame",
                        flags,
                        accepted: FRAME_FORCE_KEYFRAME,
                    });
                }
                if length == 0 {
                    return Err(out_of_range("frame", "length", 0, "non-zero"));
                }
                Ok(ClientRecord::Frame(FrameRef {
                    buffer_id,
                    flags,
                    offset,
                    length,
                    pts,
                }))
            }
            kind::ACCESS_UNIT => {
                let mut r = Reader::new("access-unit", body, 32)?;
                let buffer_id = r.u32();
                let flags = r.u32();
                let offset = r.u64();
                let length = r.u32();
                r.reserved32("reserved")?;
                let pts = r.u64();
                if flags != 0 {
                    return Err(ProtoError::UnknownFlags {
                        kind: "access-unit",
                        flags,
                        accepted: 0,
                    });
                }
                if length == 0 {
                    return Err(out_of_range("access-unit", "length", 0, "non-zero"));
                }
                Ok(ClientRecord::AccessUnit(FrameRef {
                    buffer_id,
                    flags,
                    offset,
                    length,
                    pts,
                }))
            }
            kind::END_OF_STREAM => {
                Reader::new("end-of-stream", body, 0)?;
                Ok(ClientRecord::EndOfStream)
            }
            other => Err(ProtoError::UnknownKind { kind: other }),
        }
    }
}

impl DaemonRecord {
    /// The record as one datagram. A `Packet` whose payload exceeds [`MAX_PACKET_CHUNK`] or
    /// an error message over [`MAX_ERROR_MESSAGE_LEN`] is cut to fit; use
    /// [`packet_chunks`] to split packets properly.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32);
        match self {
            DaemonRecord::Hello(h) => {
                header(&mut out, kind::HELLO, 32);
                out.extend_from_slice(&h.version.to_le_bytes());
                out.extend_from_slice(&h.window.to_le_bytes());
                out.extend_from_slice(&h.max_buffers.to_le_bytes());
                out.extend_from_slice(&0u16.to_le_bytes());
                out.extend_from_slice(&h.max_record_len.to_le_bytes());
                out.extend_from_slice(&h.frame_size.to_le_bytes());
                out.extend_from_slice(&h.width.to_le_bytes());
                out.extend_from_slice(&h.height.to_le_bytes());
                out.push(h.pixel_format);
                out.push(h.renditions);
                out.extend_from_slice(&[0u8; 2]);
                out.extend_from_slice(&h.session.to_le_bytes());
            }
            DaemonRecord::FrameDone { buffer_id, pts } => {
                header(&mut out, kind::FRAME_DONE, 16);
                out.extend_from_slice(&buffer_id.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&pts.to_le_bytes());
            }
            DaemonRecord::Packet(p) => {
                let payload = &p.payload[..p.payload.len().min(MAX_PACKET_CHUNK)];
                out.reserve(PACKET_FIXED_LEN + payload.len());
                header(&mut out, kind::PACKET, PACKET_FIXED_LEN + payload.len());
                out.extend_from_slice(&p.pts.to_le_bytes());
                out.extend_from_slice(&p.total_len.to_le_bytes());
                out.push(p.frame_type as u8);
                out.push(p.flags);
                out.extend_from_slice(&p.rendition.to_le_bytes());
                out.extend_from_slice(payload);
            }
            DaemonRecord::EndOfStreamAck {
                frames_in,
                frames_out,
            } => {
                header(&mut out, kind::END_OF_STREAM_ACK, 16);
                out.extend_from_slice(&frames_in.to_le_bytes());
                out.extend_from_slice(&frames_out.to_le_bytes());
            }
            DaemonRecord::BufferReleased { buffer_id } => {
                header(&mut out, kind::BUFFER_RELEASED, 8);
                out.extend_from_slice(&buffer_id.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            DaemonRecord::Error { code, message } => {
                let msg = truncate_utf8(message, MAX_ERROR_MESSAGE_LEN);
                header(&mut out, kind::ERROR, 8 + msg.len());
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(msg.as_bytes());
            }
        }
        out
    }

    /// Decodes one datagram sent by the daemon.
    pub fn decode(buf: &[u8]) -> Result<DaemonRecord, ProtoError> {
        let (k, body) = split(buf)?;
        match k {
            kind::HELLO => {
                let mut r = Reader::new("hello", body, 32)?;
                let version = r.u16();
                let window = r.u16();
                let max_buffers = r.u16();
                r.reserved16("reserved")?;
                let max_record_len = r.u32();
                let frame_size = r.u32();
                let width = r.u32();
                let height = r.u32();
                let pixel_format = r.u8();
                let renditions = r.u8();
                r.reserved_bytes("reserved2", 2)?;
                let session = r.u32();
                if window == 0 {
                    return Err(out_of_range("hello", "window", 0, "non-zero"));
                }
                Ok(DaemonRecord::Hello(Hello {
                    version,
                    window,
                    max_buffers,
                    max_record_len,
                    frame_size,
                    width,
                    height,
                    pixel_format,
                    session,
                    renditions,
                }))
            }
            kind::FRAME_DONE => {
                let mut r = Reader::new("frame-done", body, 16)?;
                let buffer_id = r.u32();
                r.reserved32("reserved")?;
                let pts = r.u64();
                Ok(DaemonRecord::FrameDone { buffer_id, pts })
            }
            kind::PACKET => {
                if body.len() < PACKET_FIXED_LEN {
                    return Err(ProtoError::BodyLength {
                        kind: "packet",
                        expected: PACKET_FIXED_LEN,
                        got: body.len(),
                    });
                }
                let (fixed, payload) = body.split_at(PACKET_FIXED_LEN);
                let mut r = Reader::new("packet", fixed, PACKET_FIXED_LEN)?;
                let pts = r.u64();
                let total_len = r.u32();
                let ft = r.u8();
                let flags = r.u8();
                let rendition = r.u16();
                let frame_type = WireFrameType::from_u8(ft)
                    .ok_or_else(|| out_of_range("packet", "frame_type", ft.into(), "0..=4"))?;
                let accepted = PACKET_KEYFRAME | PACKET_CONTINUES;
                if flags & !accepted != 0 {
                    return Err(ProtoError::UnknownFlags {
                        kind: "packet",
                        flags: flags.into(),
                        accepted: accepted.into(),
                    });
                }
                if total_len as usize > MAX_PACKET_LEN || payload.len() > total_len as usize {
                    return Err(ProtoError::PacketLength {
                        declared: total_len,
                        got: payload.len(),
                    });
                }
                Ok(DaemonRecord::Packet(PacketChunk {
                    pts,
                    rendition,
                    total_len,
                    frame_type,
                    flags,
                    payload: payload.to_vec(),
                }))
            }
            kind::END_OF_STREAM_ACK => {
                let mut r = Reader::new("end-of-stream-ack", body, 16)?;
                Ok(DaemonRecord::EndOfStreamAck {
                    frames_in: r.u64(),
                    frames_out: r.u64(),
                })
            }
            kind::BUFFER_RELEASED => {
                let mut r = Reader::new("buffer-released", body, 8)?;
                let buffer_id = r.u32();
                r.reserved32("reserved")?;
                Ok(DaemonRecord::BufferReleased { buffer_id })
            }
            kind::ERROR => {
                if body.len() < 8 {
                    return Err(ProtoError::BodyLength {
                        kind: "error",
                        expected: 8,
                        got: body.len(),
                    });
                }
                let (fixed, msg) = body.split_at(8);
                let mut r = Reader::new("error", fixed, 8)?;
                let code = r.u32();
                r.reserved32("reserved")?;
                if msg.len() > MAX_ERROR_MESSAGE_LEN {
                    return Err(ProtoError::MessageTooLong { len: msg.len() });
                }
                let message = std::str::from_utf8(msg)
                    .map_err(|_| ProtoError::MessageNotUtf8)?
                    .to_owned();
                Ok(DaemonRecord::Error { code, message })
            }
            other => Err(ProtoError::UnknownKind { kind: other }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding: header split, names, bounded reads

fn split(buf: &[u8]) -> Result<(u8, &[u8]), ProtoError> {
    if buf.len() < HEADER_LEN {
        return Err(ProtoError::ShortHeader { len: buf.len() });
    }
    if buf.len() > MAX_RECORD_LEN {
        return Err(ProtoError::RecordTooLong { len: buf.len() });
    }
    let k = buf[0];
    if buf[1] != VERSION {
        return Err(ProtoError::UnsupportedVersion { got: buf[1] });
    }
    let name = kind_name(k);
    if buf[2] != 0 || buf[3] != 0 {
        return Err(ProtoError::ReservedNonZero {
            kind: name,
            field: "header.reserved",
        });
    }
    let declared = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[HEADER_LEN..];
    if declared as usize != body.len() {
        return Err(ProtoError::LengthMismatch {
            kind: name,
            declared,
            actual: body.len(),
        });
    }
    Ok((k, body))
}

/// The name of a record kind, for messages.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::REGISTER_BUFFER => "register-buffer",
        kind::UNREGISTER_BUFFER => "unregister-buffer",
        kind::FRAME => "frame",
        kind::END_OF_STREAM => "end-of-stream",
        kind::ACCESS_UNIT => "access-unit",
        kind::HELLO => "hello",
        kind::FRAME_DONE => "frame-done",
        kind::PACKET => "packet",
        kind::END_OF_STREAM_ACK => "end-of-stream-ack",
        kind::BUFFER_RELEASED => "buffer-released",
        kind::ERROR => "error",
        _ => "unknown",
    }
}

fn out_of_range(
    kind: &'static str,
    field: &'static str,
    value: u64,
    accepted: &'static str,
) -> ProtoError {
    ProtoError::OutOfRange {
        kind,
        field,
        value,
        accepted,
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A cursor over a body whose exact length was checked on construction, so the fixed-size
/// reads below cannot run past its end.
struct Reader<'a> {
    kind: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(kind: &'static str, buf: &'a [u8], expected: usize) -> Result<Self, ProtoError> {
        if buf.len() != expected {
            return Err(ProtoError::BodyLength {
                kind,
                expected,
                got: buf.len(),
            });
        }
        Ok(Reader { kind, buf, pos: 0 })
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        // `get` keeps this total even if a caller reads past the checked length (it
        // would then yield zeros, never panic).
        if let Some(src) = self.buf.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn reserved16(&mut self, field: &'static str) -> Result<(), ProtoError> {
        self.reserved_bytes(field, 2)
    }
    fn reserved32(&mut self, field: &'static str) -> Result<(), ProtoError> {
        self.reserved_bytes(field, 4)
    }
    fn reserved_bytes(&mut self, field: &'static str, n: usize) -> Result<(), ProtoError> {
        let zero = self
            .buf
            .get(self.pos..self.pos + n)
            .is_some_and(|b| b.iter().all(|&x| x == 0));
        self.pos += n;
        if zero {
            Ok(())
        } else {
            Err(ProtoError::ReservedNonZero {
                kind: self.kind,
                field,
            })
        }
    }
}
