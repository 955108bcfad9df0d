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

use std::fmt;

/// Protocol version carried in every record header and in [`Hello`].
pub const VERSION: u8 = 1;
/// Size of the record header.
pub const HEADER_LEN: usize = 8;
/// Largest record either side may send (header included). Receivers use a buffer of this
/// size; a datagram that fills it completely may have been truncated and is rejected.
pub const MAX_RECORD_LEN: usize = 64 * 1024;
/// Largest error message, in bytes of UTF-8.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Largest encoded packet (all chunks together).
pub const MAX_PACKET_LEN: usize = 64 * 1024 * 1024;
/// Largest number of buffers a client may have registered at once.
pub const MAX_BUFFERS: u16 = 64;
/// Largest registered buffer.
pub const MAX_BUFFER_LEN: u64 = 1 << 30;
/// Fixed part of a `PACKET` body, before the payload.
pub const PACKET_FIXED_LEN: usize = 16;
/// Largest payload one `PACKET` record carries.
pub const MAX_PACKET_CHUNK: usize = MAX_RECORD_LEN - HEADER_LEN - PACKET_FIXED_LEN;

/// Record kinds sent by the client.
pub mod kind {
    /// Register a memfd (passed with `SCM_RIGHTS`) as a frame buffer.
    pub const REGISTER_BUFFER: u8 = 0x01;
    /// Unregister a buffer; answered with `BUFFER_RELEASED`.
    pub const UNREGISTER_BUFFER: u8 = 0x02;
    /// One raw frame, by reference into a registered buffer.
    pub const FRAME: u8 = 0x03;
    /// No more frames; answered with `END_OF_STREAM_ACK` after the last packet.
    pub const END_OF_STREAM: u8 = 0x04;
    /// The session's parameters and limits; the first record the daemon sends.
    pub const HELLO: u8 = 0x81;
    /// The card has finished reading a frame; its window slot and memory are free again.
    pub const FRAME_DONE: u8 = 0x82;
    /// Encoded bitstream for one frame (possibly one chunk of it).
    pub const PACKET: u8 = 0x83;
    /// Every frame has been encoded and sent; the session ends.
    pub const END_OF_STREAM_ACK: u8 = 0x84;
    /// A buffer was unmapped by the daemon and the card.
    pub const BUFFER_RELEASED: u8 = 0x85;
    /// The session failed; the daemon closes the channel after it.
    pub const ERROR: u8 = 0xff;
}

/// `FRAME` flag: encode this frame as a keyframe (IDR).
pub const FRAME_FORCE_KEYFRAME: u32 = 1 << 0;
/// `PACKET` flag: the packet is a random-access point (IDR).
pub const PACKET_KEYFRAME: u8 = 1 << 0;
/// `PACKET` flag: more chunks of the same packet follow.
pub const PACKET_CONTINUES: u8 = 1 << 1;

/// Errors decoding or assembling records. Each names the record kind and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("record of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("record of {len} bytes exceeds the maximum of {MAX_RECORD_LEN}")]
    RecordTooLong { len: usize },
    #[error("record version {got} is not supported (this side speaks version {VERSION})")]
    UnsupportedVersion { got: u8 },
    #[error("record kind {kind:#04x} is unknown in this direction")]
    UnknownKind { kind: u8 },
    #[error("{kind} record: body length field says {declared} bytes, datagram carries {actual}")]
    LengthMismatch {
        kind: &'static str,
        declared: u32,
        actual: usize,
    },
    #[error("{kind} record: body of {got} bytes, expected {expected}")]
    BodyLength {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{kind} record: reserved field {field} must be zero")]
    ReservedNonZero {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} record: unknown flags {flags:#x} (accepted: {accepted:#x})")]
    UnknownFlags {
        kind: &'static str,
        flags: u32,
        accepted: u32,
    },
    #[error("{kind} record: {field} = {value} is out of range ({accepted})")]
    OutOfRange {
        kind: &'static str,
        field: &'static str,
        value: u64,
        accepted: &'static str,
    },
    #[error("error record: message of {len} bytes exceeds {MAX_ERROR_MESSAGE_LEN}")]
    MessageTooLong { len: usize },
    #[error("error record: message is not UTF-8")]
    MessageNotUtf8,
    #[error("packet record: chunk for pts {got} while assembling pts {expected}")]
    ChunkMismatch { expected: u64, got: u64 },
    #[error("packet record: chunks add up to {got} bytes, header declared {declared}")]
    PacketLength { declared: u32, got: usize },
}

/// What goes wrong on a channel, as carried by an `ERROR` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// A record could not be decoded.
    MalformedRecord = 1,
    /// A well-formed record broke the protocol (window exceeded, unknown buffer, frame out
    /// of bounds, record after end of stream, missing fd…).
    ProtocolViolation = 2,
    /// The card rejected a frame or failed to encode it.
    EncodeFailed = 3,
    /// The card failed and the session could not be moved elsewhere.
    CardFailed = 4,
    /// The session was closed through D-Bus (`Session.Close`, or its owner left the bus).
    SessionClosed = 5,
    /// The daemon is shutting down.
    Shutdown = 6,
    /// The daemon ran out of a resource (mapping a buffer, memory).
    Resource = 7,
}

impl ErrorCode {
    /// The code for a wire value; unknown values are kept by [`DaemonRecord::Error`] as raw.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::MalformedRecord,
            2 => ErrorCode::ProtocolViolation,
            3 => ErrorCode::EncodeFailed,
            4 => ErrorCode::CardFailed,
            5 => ErrorCode::SessionClosed,
            6 => ErrorCode::Shutdown,
            7 => ErrorCode::Resource,
            _ => return None,
        })
    }

    /// A short name for logs and client errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRecord => "malformed-record",
            ErrorCode::ProtocolViolation => "protocol-violation",
            ErrorCode::EncodeFailed => "encode-failed",
            ErrorCode::CardFailed => "card-failed",
            ErrorCode::SessionClosed => "session-closed",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Resource => "resource",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frame types in `PACKET` records (the same values as the card's `VPU_FRAME_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WireFrameType {
    /// No picture was produced for this input; the payload is empty.
    Skipped = 0,
    Idr = 1,
    I = 2,
    P = 3,
    B = 4,
}

impl WireFrameType {
    fn from_u8(v: u8) -> Option<WireFrameType> {
        Some(match v {
            0 => WireFrameType::Skipped,
            1 => WireFrameType::Idr,
            2 => WireFrameType::I,
            3 => WireFrameType::P,
            4 => WireFrameType::B,
            _ => return None,
        })
    }
}

/// Records a client sends to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRecord {
    /// Register the memfd passed alongside (exactly one fd, `SCM_RIGHTS`) as buffer
    /// `buffer_id` of `size` bytes. The daemon maps it read-only, once.
    RegisterBuffer { buffer_id: u32, size: u64 },
    /// Forget a buffer; no frame of it may be in flight.
    UnregisterBuffer { buffer_id: u32 },
    /// Encode `length` bytes at `offset` of buffer `buffer_id`.
    Frame(FrameRef),
    /// No more frames will come.
    EndOfStream,
}

/// A frame by reference into a registered buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub buffer_id: u32,
    /// `FRAME_FORCE_KEYFRAME` or 0.
    pub flags: u32,
    pub offset: u64,
    pub length: u32,
    pub pts: u64,
}

impl FrameRef {
    /// Whether the client asked for a keyframe.
    pub fn force_keyframe(&self) -> bool {
        self.flags & FRAME_FORCE_KEYFRAME != 0
    }
}

/// The first record on every channel: what the session expects and allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the daemon speaks ([`VERSION`]).
    pub version: u16,
    /// Frames the client may have in flight (sent, `FRAME_DONE` not yet received).
    pub window: u16,
    /// Buffers the client may have registered at once.
    pub max_buffers: u16,
    /// Largest record the daemon accepts or sends.
    pub max_record_len: u32,
    /// Bytes of one frame in the session's pixel format (tight strides); `FRAME.length`
    /// must equal it.
    pub frame_size: u32,
    pub width: u32,
    pub height: u32,
    /// 0: I420, 1: NV12.
    pub pixel_format: u8,
    /// The session's number (the `N` in `/org/vpud/Vpud1/session/N`).
    pub session: u32,
}

/// One `PACKET` record: a whole packet or one chunk of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketChunk {
    pub pts: u64,
    /// Size of the whole packet (all chunks).
    pub total_len: u32,
    pub frame_type: WireFrameType,
    /// `PACKET_KEYFRAME`, `PACKET_CONTINUES`.
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// Records the daemon sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonRecord {
    Hello(Hello),
    /// The card is done reading frame `pts` of buffer `buffer_id`.
    FrameDone {
        buffer_id: u32,
        pts: u64,
    },
    Packet(PacketChunk),
    /// After the last packet of a stream.
    EndOfStreamAck {
        frames_in: u64,
        frames_out: u64,
    },
    /// Buffer `buffer_id` is unmapped; its id may be registered again.
    BufferReleased {
        buffer_id: u32,
    },
    /// The session failed; nothing follows. `code` is kept raw so that newer daemons'
    /// codes reach older clients (see [`ErrorCode::from_u32`]).
    Error {
        code: u32,
        message: String,
    },
}

/// A complete encoded packet, reassembled from its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WirePacket {
    pub pts: u64,
    pub keyframe: bool,
    pub frame_type: WireFrameType,
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------------------------------
// Encoding

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
            ClientRecord::Frame(f) => {
                header(&mut out, kind::FRAME, 32);
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
                out.extend_from_slice(&[0u8; 3]);
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
                out.extend_from_slice(&0u16.to_le_bytes());
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
                r.reserved_bytes("reserved2", 3)?;
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
                r.reserved16("reserved")?;
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
            Some(p) => p,
            None => {
                self.declared = chunk.total_len;
                WirePacket {
                    pts: chunk.pts,
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

// ---------------------------------------------------------------------------------------
// Decoding helpers

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

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
