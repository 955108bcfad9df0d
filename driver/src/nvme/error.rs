//! Errors of the NVMe transport.

use std::fmt;
use std::time::Duration;

use crate::io::IoError;

use super::command::Status;

/// What a completion entry got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// The command id names no command in flight on the queue.
    UnknownCid { cid: u16 },
    /// The entry names a submission queue other than the one paired with this CQ.
    SqIdMismatch { cid: u16, expected: u16, got: u16 },
    /// The submission queue head is outside the queue.
    SqHeadOutOfRange { cid: u16, sq_head: u16, depth: u16 },
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProtocolViolation::UnknownCid { cid } => {
                write!(f, "completion for command id {cid:#06x}, which is not in flight")
            }
            ProtocolViolation::SqIdMismatch { cid, expected, got } => write!(
                f,
                "completion for command id {cid:#06x} names sq {got}, expected sq {expected}"
            ),
            ProtocolViolation::SqHeadOutOfRange {
                cid,
                sq_head,
                depth,
            } => write!(
                f,
                "completion for command id {cid:#06x} reports sq head {sq_head} in a queue of {depth}"
            ),
        }
    }
}

/// Errors of the NVMe transport, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("{device}: register access failed")]
    Register {
        device: String,
        #[source]
        source: IoError,
    },
    #[error("{device}: setting bus master enable in config space failed")]
    BusMaster {
        device: String,
        #[source]
        source: IoError,
    },
    #[error("{device}: allocating DMA memory for {what} failed")]
    DmaAlloc {
        device: String,
        what: &'static str,
        #[source]
        source: IoError,
    },
    #[error("{device}: enabling interrupts failed")]
    Interrupts {
        device: String,
        #[source]
        source: IoError,
    },
    #[error("{device}: controller is not supported: {reason}")]
    Unsupported { device: String, reason: String },
    #[error("{device}: controller did not reach ready={ready} within {timeout:?}")]
    ReadyTimeout {
        device: String,
        ready: bool,
        timeout: Duration,
    },
    #[error("{device}: shutdown did not complete within {timeout:?}")]
    ShutdownTimeout { device: String, timeout: Duration },
    #[error("{device}: controller fatal status (CSTS.CFS)")]
    Fatal { device: String },
    #[error("{device}: the device is gone (registers read all-ones)")]
    Removed { device: String },
    #[error("{device}: queue {queue}: command {opcode:#04x} timed out after {timeout:?}")]
    Timeout {
        device: String,
        queue: u16,
        opcode: u8,
        timeout: Duration,
    },
    #[error("{device}: queue {queue}: device protocol error: {violation}")]
    DeviceProtocol {
        device: String,
        queue: u16,
        violation: ProtocolViolation,
    },
    #[error("{device}: queue {queue}: {what} (opcode {opcode:#04x}) failed with {status}")]
    CommandFailed {
        device: String,
        queue: u16,
        opcode: u8,
        what: &'static str,
        status: Status,
    },
    #[error("{device}: no I/O queue {queue} (the controller has {count})")]
    NoSuchQueue {
        device: String,
        queue: usize,
        count: usize,
    },
    #[error("{device}: data range {offset}+{len} does not fit a buffer of {buffer_len} bytes")]
    DataRange {
        device: String,
        offset: usize,
        len: usize,
        buffer_len: usize,
    },
    #[error("{device}: a transfer of {len} bytes is over the controller's limit of {limit}")]
    TransferTooLarge {
        device: String,
        len: usize,
        limit: usize,
    },
    #[error("{device}: data pointer {iova:#x} is not dword aligned")]
    DataAlignment { device: String, iova: u64 },
    #[error(
        "{device}: queue {queue}: the controller was reset or shut down with the command in flight"
    )]
    Reset { device: String, queue: u16 },
    #[error("{device}: the controller is not enabled")]
    NotEnabled { device: String },
}

impl NvmeError {
    /// True for failures that say the controller itself is unhealthy (timeouts, fatal
    /// status, protocol errors, removal, register failures) rather than that one command
    /// was refused.
    pub fn is_device_fault(&self) -> bool {
        !matches!(
            self,
            NvmeError::CommandFailed { .. }
                | NvmeError::NoSuchQueue { .. }
                | NvmeError::DataRange { .. }
                | NvmeError::DataAlignment { .. }
                | NvmeError::TransferTooLarge { .. }
        )
    }
}
