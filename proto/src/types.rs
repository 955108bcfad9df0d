//! Record kinds, flags, limits, error codes and the records themselves.

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
    /// One compressed access unit for a transcode session, by reference into a
    /// registered buffer.
    pub const ACCESS_UNIT: u8 = 0x05;
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
    #[error("packet record: chunk of rendition {got} while assembling rendition {expected}")]
    RenditionMismatch { expected: u16, got: u16 },
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
    /// A transcode session's input could not be decoded (corrupt, truncated, not of the
    /// announced codec, or over the decoder's limits).
    DecodeFailed = 8,
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
            8 => ErrorCode::DecodeFailed,
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
            ErrorCode::DecodeFailed => "decode-failed",
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
    /// The type for a wire value.
    pub fn from_u8(v: u8) -> Option<WireFrameType> {
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
    /// Transcode sessions: decode the access unit of `length` bytes at `offset` of buffer
    /// `buffer_id` (flags are 0).
    AccessUnit(FrameRef),
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
    /// Renditions of a transcode session; 0 for an encode session. On a transcode
    /// session `frame_size` is the largest access unit accepted and `width`/`height` are
    /// the input's (0 when not given).
    pub renditions: u8,
}

/// One `PACKET` record: a whole packet or one chunk of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketChunk {
    pub pts: u64,
    /// The rendition of a transcode session the packet belongs to; 0 for an encode session.
    pub rendition: u16,
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
    /// The rendition of a transcode session; 0 for an encode session.
    pub rendition: u16,
    pub keyframe: bool,
    pub frame_type: WireFrameType,
    pub data: Vec<u8>,
}
