//! `DeviceIo`: the one seam between the driver and hardware.
//!
//! Everything above this trait (NVMe queues, the video command set, sessions) is the same
//! code for every backend: the `vfio` backend drives a real PCI function through the
//! kernel's VFIO interface, the `emu` backend is an in-process card model. Primitives are
//! required methods; conveniences (`alloc_dma`, `map_dma`, 64-bit register access) are
//! built on them.

mod memory;

pub use memory::{DmaBuffer, DmaDirection, HostRegion, PAGE_SIZE};

use std::fmt;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Which kind of backend a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// A PCI function owned through VFIO.
    Vfio,
    /// The in-process emulated card.
    Emulated,
}

impl BackendKind {
    /// The name the D-Bus API uses (`Card.Backend`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vfio => "vfio",
            BackendKind::Emulated => "emulated",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend knows about its device before any command has been sent.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Short name for logs: the PCI address for VFIO, `emu0`… for emulated cards.
    pub name: String,
    pub backend: BackendKind,
    /// `DDDD:BB:DD.F` for PCI functions; emulated cards report a synthetic one.
    pub pci_address: String,
    pub vendor_id: u16,
    pub device_id: u16,
    /// 24-bit class code (base, sub, interface).
    pub class_code: u32,
}

/// Errors of the hardware seam, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("register access out of range: bar {bar} offset {offset:#x} width {width}")]
    RegisterOutOfRange { bar: u32, offset: u64, width: u32 },
    #[error("bar {bar} access at {offset:#x} failed")]
    RegisterAccess {
        bar: u32,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("config space access at {offset:#x} ({len} bytes) failed")]
    ConfigAccess {
        offset: u32,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("allocating {len} bytes of DMA memory failed")]
    DmaAlloc {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {len} bytes for DMA failed")]
    DmaMap {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "mapping {len} bytes for DMA exceeds the locked-memory limit RLIMIT_MEMLOCK of \
         {limit} bytes ({locked} bytes locked already)"
    )]
    DmaMemlock { len: usize, limit: u64, locked: u64 },
    #[error("IOVA space exhausted: no free range of {len} bytes")]
    IovaExhausted { len: usize },
    #[error("unmapping DMA at iova {iova:#x} ({len} bytes) failed")]
    DmaUnmap {
        iova: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("enabling {requested} interrupt vectors failed (device supports {supported})")]
    Interrupts {
        requested: u32,
        supported: u32,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("device reset is not supported by {device}")]
    ResetUnsupported { device: String },
    #[error("device reset failed")]
    Reset(#[source] std::io::Error),
    #[error("the device is gone (surprise removal)")]
    Removed,
}

/// The hardware seam. Implementations must be usable from many threads at once: the
/// transport writes doorbells from every queue's submitter while completions are read
/// on the runtime.
pub trait DeviceIo: Send + Sync + fmt::Debug {
    /// Identity known without talking to the device's firmware.
    fn info(&self) -> &DeviceInfo;

    /// 32-bit read of BAR `bar` at `offset`.
    fn read32(&self, bar: u32, offset: u64) -> Result<u32, IoError>;

    /// 32-bit write of BAR `bar` at `offset`.
    fn write32(&self, bar: u32, offset: u64, value: u32) -> Result<(), IoError>;

    /// Reads `buf.len()` bytes of PCI configuration space at `offset`.
    fn config_read(&self, offset: u32, buf: &mut [u8]) -> Result<(), IoError>;

    /// Writes `buf` to PCI configuration space at `offset`.
    fn config_write(&self, offset: u32, buf: &[u8]) -> Result<(), IoError>;

    /// Makes `region` reachable by the device and returns its IOVA. The backend keeps
    /// `region` alive until `dma_unmap` of that IOVA returns.
    fn dma_map(&self, region: &Arc<HostRegion>, direction: DmaDirection) -> Result<u64, IoError>;

    /// Removes a mapping made by `dma_map`. After it returns the device can no longer
    /// reach the memory.
    fn dma_unmap(&self, iova: u64, len: usize) -> Result<(), IoError>;

    /// Number of interrupt vectors the device offers (MSI-X table size).
    fn max_interrupts(&self) -> u32;

    /// Enables `count` interrupt vectors, each signalling its own eventfd; vector `i` of
    /// the device is element `i`. Replaces any earlier set.
    fn enable_interrupts(&self, count: u32) -> Result<Vec<Arc<EventFd>>, IoError>;

    /// Disables every interrupt vector.
    fn disable_interrupts(&self) -> Result<(), IoError>;

    /// Function-level reset of the device. `IoError::ResetUnsupported` when the device has
    /// no reset method; never a silent no-op.
    fn reset(&self) -> Result<(), IoError>;

    /// 64-bit read as two 32-bit reads, low half first (NVMe permits this for CAP, ASQ, ACQ).
    fn read64(&self, bar: u32, offset: u64) -> Result<u64, IoError> {
        let lo = self.read32(bar, offset)?;
        let hi = self.read32(bar, offset + 4)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// 64-bit write as two 32-bit writes, low half first.
    fn write64(&self, bar: u32, offset: u64, value: u64) -> Result<(), IoError> {
        self.write32(bar, offset, value as u32)?;
        self.write32(bar, offset + 4, (value >> 32) as u32)
    }
}

/// Conveniences over any `DeviceIo` held in an `Arc`.
pub trait DeviceIoExt {
    /// Allocates zeroed, page-aligned host memory of at least `len` bytes and maps it for
    /// the device in both directions.
    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, IoError>;

    /// Maps memory the caller already has (a client's memfd, say) for the device.
    fn map_dma(
        &self,
        region: Arc<HostRegion>,
        direction: DmaDirection,
    ) -> Result<DmaBuffer, IoError>;
}

impl DeviceIoExt for Arc<dyn DeviceIo> {
    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, IoError> {
        let region = Arc::new(HostRegion::anonymous(len)?);
        self.map_dma(region, DmaDirection::Bidirectional)
    }

    fn map_dma(
        &self,
        region: Arc<HostRegion>,
        direction: DmaDirection,
    ) -> Result<DmaBuffer, IoError> {
        let iova = self.dma_map(&region, direction)?;
        Ok(DmaBuffer::new(Arc::clone(self), region, iova))
    }
}
