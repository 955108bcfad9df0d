//! Errors of the card API.

use crate::io::IoError;
use crate::nvme::{NvmeError, Status, VendorStatus};

/// Errors of the card API, named for what failed, with the card and session.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    #[error("{device}: not a VPU card (no \"VPU1\" block in Identify Controller)")]
    NotVpu { device: String },
    #[error("{device}: Identify's VPU block is inconsistent: {why}")]
    BadIdentify { device: String, why: String },
    #[error("{device}: VPU interface version {version} is not supported")]
    UnsupportedVersion { device: String, version: u16 },
    #[error("{device}: {what} rejected: {status}")]
    Rejected {
        device: String,
        status: VendorStatus,
        what: String,
    },
    #[error("{device}: {what} failed with {status}")]
    CommandFailed {
        device: String,
        status: Status,
        what: String,
    },
    #[error("{device}: session {session}: output still too small at {size} bytes")]
    OutputTooSmall {
        device: String,
        session: u32,
        size: usize,
    },
    #[error("{device}: session {session}: the device reported {written} bytes written into a {capacity} byte buffer")]
    BadByteCount {
        device: String,
        session: u32,
        written: u32,
        capacity: usize,
    },
    #[error("{device}: session {session}: bad completion: {reason}")]
    BadCompletion {
        device: String,
        session: u32,
        reason: String,
    },
    #[error("invalid session configuration: {0}")]
    InvalidConfig(String),
    #[error("{device}: session {session}: invalid frame: {reason}")]
    InvalidFrame {
        device: String,
        session: u32,
        reason: String,
    },
    #[error("{device}: DMA memory: {source}")]
    Io {
        device: String,
        #[source]
        source: IoError,
    },
}

impl CardError {
    /// True when the card itself is unhealthy (timeout, fatal status, protocol error,
    /// removal): the daemon resets it or moves its sessions. False for a rejection of one
    /// request or session.
    pub fn is_device_fault(&self) -> bool {
        match self {
            CardError::Nvme(e) => e.is_device_fault(),
            CardError::BadByteCount { .. } | CardError::BadCompletion { .. } => true,
            _ => false,
        }
    }

    /// The vendor status of a rejection, if this is one.
    pub fn vendor_status(&self) -> Option<VendorStatus> {
        match self {
            CardError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}
