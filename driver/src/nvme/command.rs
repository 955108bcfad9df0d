//! Submission entries, completion entries and their typed status.

use std::fmt;
use std::mem::offset_of;

use vpu_ffi::{
    vpu_cqe, vpu_sqe, VPU_CQE_DNR, VPU_CQE_SCT_MASK, VPU_CQE_SCT_SHIFT, VPU_CQE_SC_MASK,
    VPU_CQE_SC_SHIFT, VPU_CQE_SIZE, VPU_SCT_COMMAND_SPECIFIC, VPU_SCT_GENERIC, VPU_SCT_MEDIA,
    VPU_SCT_VENDOR, VPU_SC_BITSTREAM_ERROR, VPU_SC_ENGINE_FAULT, VPU_SC_FRAME_MISMATCH,
    VPU_SC_FRAME_NOT_FOUND, VPU_SC_INPUT_TOO_SMALL, VPU_SC_INVALID_PARAMS, VPU_SC_NO_CAPACITY,
    VPU_SC_NO_FRAME_MEMORY, VPU_SC_OUTPUT_TOO_SMALL, VPU_SC_SESSION_ABORTED,
    VPU_SC_SESSION_NOT_FOUND, VPU_SC_SUCCESS, VPU_SC_TOO_LARGE, VPU_SC_UNSUPPORTED_CODEC,
    VPU_SC_UNSUPPORTED_FORMAT, VPU_SQE_SIZE,
};

use crate::io::DmaBuffer;

/// Where a command's data lives: a range of a DMA buffer, or raw addresses given to the
/// device as they are.
#[derive(Debug, Clone)]
pub(crate) enum DataPointer {
    Buffer {
        buffer: DmaBuffer,
        offset: usize,
        len: usize,
    },
    Raw {
        prp1: u64,
        prp2: u64,
    },
}

/// One command to submit: an NVMe submission entry without its command id, which the
/// transport assigns. Data and metadata buffers are cloned handles of the caller's
/// buffers; the transport keeps them mapped until the device completes the command.
#[derive(Debug, Clone)]
pub struct Command {
    pub(crate) opcode: u8,
    pub(crate) nsid: u32,
    pub(crate) cdw: [u32; 6],
    pub(crate) data: Option<DataPointer>,
    pub(crate) metadata: Option<(DmaBuffer, usize)>,
}

impl Command {
    /// A command with `opcode` and every other field zero.
    pub fn new(opcode: u32) -> Self {
        Self {
            opcode: opcode as u8,
            nsid: 0,
            cdw: [0; 6],
            data: None,
            metadata: None,
        }
    }

    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// Namespace id.
    pub fn nsid(mut self, nsid: u32) -> Self {
        self.nsid = nsid;
        self
    }

    /// Command dword `n` (10 to 15).
    pub fn cdw(mut self, n: usize, value: u32) -> Self {
        if let Some(slot) = n.checked_sub(10).and_then(|i| self.cdw.get_mut(i)) {
            *slot = value;
        }
        self
    }

    pub fn cdw10(self, v: u32) -> Self {
        self.cdw(10, v)
    }
    pub fn cdw11(self, v: u32) -> Self {
        self.cdw(11, v)
    }
    pub fn cdw12(self, v: u32) -> Self {
        self.cdw(12, v)
    }
    pub fn cdw13(self, v: u32) -> Self {
        self.cdw(13, v)
    }
    pub fn cdw14(self, v: u32) -> Self {
        self.cdw(14, v)
    }
    pub fn cdw15(self, v: u32) -> Self {
        self.cdw(15, v)
    }

    /// The command's data: `len` bytes of `buffer` from `offset`. The transport builds
    /// PRP1/PRP2 or a PRP list for it.
    pub fn data(mut self, buffer: &DmaBuffer, offset: usize, len: usize) -> Self {
        self.data = Some(DataPointer::Buffer {
            buffer: buffer.clone(),
            offset,
            len,
        });
        self
    }

    /// PRP1/PRP2 given to the device exactly as they are, not backed by any buffer of
    /// this process. Only for exercising a device's DMA checks (an unmapped IOVA must
    /// fail with a data transfer error); the device may write wherever these point.
    pub fn raw_data_pointer(mut self, prp1: u64, prp2: u64) -> Self {
        self.data = Some(DataPointer::Raw { prp1, prp2 });
        self
    }

    /// MPTR: the IOVA of `buffer` at `offset`. The vendor Encode Frame command puts its
    /// output bitstream buffer here.
    pub fn metadata(mut self, buffer: &DmaBuffer, offset: usize) -> Self {
        self.metadata = Some((buffer.clone(), offset));
        self
    }
}

/// Encodes a submission entry, little-endian, at the offsets `vpu.h` gives.
pub(crate) fn encode_sqe(
    cmd: &Command,
    cid: u16,
    prp1: u64,
    prp2: u64,
    mptr: u64,
) -> [u8; VPU_SQE_SIZE as usize] {
    let mut b = [0u8; VPU_SQE_SIZE as usize];
    fn put(b: &mut [u8], at: usize, v: &[u8]) {
        b[at..at + v.len()].copy_from_slice(v);
    }
    put(&mut b, offset_of!(vpu_sqe, opcode), &[cmd.opcode]);
    put(&mut b, offset_of!(vpu_sqe, cid), &cid.to_le_bytes());
    put(&mut b, offset_of!(vpu_sqe, nsid), &cmd.nsid.to_le_bytes());
    put(&mut b, offset_of!(vpu_sqe, mptr), &mptr.to_le_bytes());
    put(&mut b, offset_of!(vpu_sqe, prp1), &prp1.to_le_bytes());
    put(&mut b, offset_of!(vpu_sqe, prp2), &prp2.to_le_bytes());
    let cdw10 = offset_of!(vpu_sqe, cdw10);
    for (i, v) in cmd.cdw.iter().enumerate() {
        put(&mut b, cdw10 + 4 * i, &v.to_le_bytes());
    }
    b
}

/// A completion entry as read from the completion queue, not yet validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawCqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub status: u16,
}

impl RawCqe {
    pub fn decode(b: &[u8; VPU_CQE_SIZE as usize]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Self {
            dw0: u32_at(offset_of!(vpu_cqe, dw0)),
            dw1: u32_at(offset_of!(vpu_cqe, dw1)),
            sq_head: u16_at(offset_of!(vpu_cqe, sq_head)),
            sq_id: u16_at(offset_of!(vpu_cqe, sq_id)),
            cid: u16_at(offset_of!(vpu_cqe, cid)),
            status: u16_at(offset_of!(vpu_cqe, status)),
        }
    }
}

/// Status codes of the vendor video command set (status code type 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VendorStatus {
    SessionNotFound,
    OutputTooSmall,
    EngineFault,
    SessionAborted,
    UnsupportedCodec,
    UnsupportedFormat,
    TooLarge,
    NoCapacity,
    InvalidParams,
    InputTooSmall,
    /// Decode Frame: the input bitstream could not be decoded.
    BitstreamError,
    /// Card frame memory is full.
    NoFrameMemory,
    /// No card frame with that handle.
    FrameNotFound,
    /// A card frame's size differs from what the command needs.
    FrameMismatch,
    /// A vendor code this driver does not know.
    Unknown(u8),
}

impl VendorStatus {
    pub fn from_code(sc: u8) -> Self {
        match u32::from(sc) {
            VPU_SC_SESSION_NOT_FOUND => VendorStatus::SessionNotFound,
            VPU_SC_OUTPUT_TOO_SMALL => VendorStatus::OutputTooSmall,
            VPU_SC_ENGINE_FAULT => VendorStatus::EngineFault,
            VPU_SC_SESSION_ABORTED => VendorStatus::SessionAborted,
            VPU_SC_UNSUPPORTED_CODEC => VendorStatus::UnsupportedCodec,
            VPU_SC_UNSUPPORTED_FORMAT => VendorStatus::UnsupportedFormat,
            VPU_SC_TOO_LARGE => VendorStatus::TooLarge,
            VPU_SC_NO_CAPACITY => VendorStatus::NoCapacity,
            VPU_SC_INVALID_PARAMS => VendorStatus::InvalidParams,
            VPU_SC_INPUT_TOO_SMALL => VendorStatus::InputTooSmall,
            VPU_SC_BITSTREAM_ERROR => VendorStatus::BitstreamError,
            VPU_SC_NO_FRAME_MEMORY => VendorStatus::NoFrameMemory,
            VPU_SC_FRAME_NOT_FOUND => VendorStatus::FrameNotFound,
            VPU_SC_FRAME_MISMATCH => VendorStatus::FrameMismatch,
            _ => VendorStatus::Unknown(sc),
        }
    }

    /// Short lowercase name, as logs and D-Bus errors use.
    pub fn as_str(&self) -> &'static str {
        match self {
            VendorStatus::SessionNotFound => "session not found",
            VendorStatus::OutputTooSmall => "output buffer too small",
            VendorStatus::EngineFault => "engine fault",
            VendorStatus::SessionAborted => "session aborted",
            VendorStatus::UnsupportedCodec => "unsupported codec",
            VendorStatus::UnsupportedFormat => "unsupported format",
            VendorStatus::TooLarge => "too large",
            VendorStatus::NoCapacity => "no engine capacity",
            VendorStatus::InvalidParams => "invalid session parameters",
            VendorStatus::InputTooSmall => "input frame too small",
            VendorStatus::BitstreamError => "bitstream error",
            VendorStatus::NoFrameMemory => "card frame memory full",
            VendorStatus::FrameNotFound => "card frame not found",
            VendorStatus::FrameMismatch => "card frame size mismatch",
            VendorStatus::Unknown(_) => "unknown vendor status",
        }
    }
}

impl fmt::Display for VendorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VendorStatus::Unknown(sc) => write!(f, "unknown vendor status {sc:#04x}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The status field of a completion, by status code type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    /// Generic command status (type 0), other than success.
    Generic(u8),
    /// Command specific status (type 1).
    CommandSpecific(u8),
    /// Media and data integrity errors (type 2).
    Media(u8),
    /// The vendor video command set (type 7).
    Vendor(VendorStatus),
    /// Any other status code type.
    Other {
        sct: u8,
        sc: u8,
    },
}

impl Status {
    /// Decodes the 15-bit status field (the phase tag is bit 0 of `raw`, ignored).
    pub fn from_raw(raw: u16) -> Self {
        let raw = u32::from(raw);
        let sc = ((raw >> VPU_CQE_SC_SHIFT) & VPU_CQE_SC_MASK) as u8;
        let sct = (raw >> VPU_CQE_SCT_SHIFT) & VPU_CQE_SCT_MASK;
        match sct {
            VPU_SCT_GENERIC if u32::from(sc) == VPU_SC_SUCCESS => Status::Success,
            VPU_SCT_GENERIC => Status::Generic(sc),
            VPU_SCT_COMMAND_SPECIFIC => Status::CommandSpecific(sc),
            VPU_SCT_MEDIA => Status::Media(sc),
            VPU_SCT_VENDOR => Status::Vendor(VendorStatus::from_code(sc)),
            _ => Status::Other { sct: sct as u8, sc },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Status::Success)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Success => f.write_str("success"),
            Status::Generic(sc) => write!(f, "generic status {sc:#04x}"),
            Status::CommandSpecific(sc) => write!(f, "command specific status {sc:#04x}"),
            Status::Media(sc) => write!(f, "media error {sc:#04x}"),
            Status::Vendor(v) => write!(f, "vendor status: {v}"),
            Status::Other { sct, sc } => write!(f, "status type {sct} code {sc:#04x}"),
        }
    }
}

/// A validated completion of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    pub status: Status,
    /// Do Not Retry was set.
    pub dnr: bool,
}

impl Completion {
    pub(crate) fn from_raw(cqe: &RawCqe) -> Self {
        Self {
            dw0: cqe.dw0,
            dw1: cqe.dw1,
            status: Status::from_raw(cqe.status),
            dnr: u32::from(cqe.status) & VPU_CQE_DNR != 0,
        }
    }
}

pub(crate) use vpu_ffi::read_struct;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vpu_ffi::{VPU_SCT_VENDOR, VPU_SC_DATA_TRANSFER_ERROR};

    #[test]
    fn sqe_fields_land_at_header_offsets() {
        let cmd = Command::new(0x80)
            .nsid(7)
            .cdw10(0x1111_1111)
            .cdw15(0xffff_0000);
        let b = encode_sqe(&cmd, 0xabcd, 0x1000, 0x2000, 0x3000);
        assert_eq!(b[0], 0x80);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0xabcd);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0x3000);
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 0x1000);
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 0x2000);
        assert_eq!(
            u32::from_le_bytes(b[40..44].try_into().unwrap()),
            0x1111_1111
        );
        assert_eq!(
            u32::from_le_bytes(b[60..64].try_into().unwrap()),
            0xffff_0000
        );
    }

    #[test]
    fn status_decodes_by_type() {
        let raw = |sct: u32, sc: u32, phase: u32| {
            ((sct << VPU_CQE_SCT_SHIFT) | (sc << VPU_CQE_SC_SHIFT) | phase) as u16
        };
        assert_eq!(Status::from_raw(raw(0, 0, 1)), Status::Success);
        assert_eq!(
            Status::from_raw(raw(0, VPU_SC_DATA_TRANSFER_ERROR, 0)),
            Status::Generic(VPU_SC_DATA_TRANSFER_ERROR as u8)
        );
        assert_eq!(
            Status::from_raw(raw(VPU_SCT_VENDOR, VPU_SC_OUTPUT_TOO_SMALL, 1)),
            Status::Vendor(VendorStatus::OutputTooSmall)
        );
        assert_eq!(
            Status::from_raw(raw(VPU_SCT_VENDOR, 0xee, 1)),
            Status::Vendor(VendorStatus::Unknown(0xee))
        );
        assert_eq!(
            Status::from_raw(raw(3, 5, 0)),
            Status::Other { sct: 3, sc: 5 }
        );
    }
}
