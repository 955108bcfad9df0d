//! `VfioDevice`: a PCI function bound to vfio-pci, driven through `DeviceIo`.
//!
//! Each device gets its own VFIO container (its own IOMMU address space). Opening checks
//! what operators get wrong most — the driver binding, the IOMMU group, `/dev/vfio`
//! permissions, the locked-memory limit — and says which it was. Teardown runs in the
//! order that keeps the device from touching memory that is being given back: interrupts
//! off, Bus Master Enable off, DMA unmapped, BARs unmapped, descriptors closed.

use std::collections::BTreeMap;
use std::fmt;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};
use vfio_ioctls::{VfioContainer, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use super::bar::Bar;
use super::discovery::{PciFunction, PciScanner};
use super::iova::IovaAllocator;
use super::pci::{
    PCI_CLASS_REVISION, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_DEVICE_ID, PCI_STD_NUM_BARS,
    PCI_VENDOR_ID,
};
use super::sys;
use super::VfioError;
use crate::io::{BackendKind, DeviceInfo, DeviceIo, HostRegion, IoError};

/// How a device is opened.
#[derive(Debug, Clone)]
pub struct VfioOptions {
    /// Bytes of DMA memory the driver expects to have mapped at once (queues, PRP lists,
    /// frame and bitstream buffers). Checked against `RLIMIT_MEMLOCK` when the process
    /// lacks `CAP_IPC_LOCK`, since VFIO pins every mapped page.
    pub dma_pool_bytes: u64,
    /// Width of the addresses the device can generate; IOVAs stay below `1 << bits`.
    pub dma_address_bits: u8,
    /// Set Bus Master Enable at open (DMA and MSI need it).
    pub bus_master: bool,
    /// mmap BARs where vfio-pci allows it; when false every access uses pread/pwrite.
    pub mmap_bars: bool,
}

impl Default for VfioOptions {
    fn default() -> Self {
        Self {
            dma_pool_bytes: 64 << 20,
            dma_address_bits: 64,
            bus_master: true,
            mmap_bars: true,
        }
    }
}

/// Which interrupt mechanism vectors are delivered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    Msix,
    Msi,
}

impl InterruptKind {
    pub(super) fn index(self) -> u32 {
        match self {
            InterruptKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
            InterruptKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        }
    }
}

pub(super) struct Mapping {
    /// The region's length, as the caller knows it.
    pub(super) len: usize,
    /// The length mapped in the IOMMU: `len` rounded up to the IOMMU page size.
    pub(super) mapped: usize,
    /// Kept alive while the device may reach it.
    pub(super) _region: Arc<HostRegion>,
}

pub(super) struct DmaState {
    pub(super) iova: IovaAllocator,
    pub(super) maps: BTreeMap<u64, Mapping>,
}

#[derive(Default)]
pub(super) struct IrqState {
    pub(super) active: Option<InterruptKind>,
    pub(super) fds: Vec<Arc<EventFd>>,
}

/// A PCI function owned through VFIO.
pub struct VfioDevice {
    pub(super) info: DeviceInfo,
    pub(super) bars: Vec<Option<Bar>>,
    pub(super) config_offset: u64,
    pub(super) config_size: u64,
    pub(super) msix_vectors: u32,
    pub(super) msi_vectors: u32,
    pub(super) reset_supported: bool,
    pub(super) iova_ranges: Option<Vec<(u64, u64)>>,
    pub(super) dma: Mutex<DmaState>,
    pub(super) irqs: Mutex<IrqState>,
    // Dropped after the BAR mappings above are gone: closing the device descriptor while
    // an mmap of it exists would keep the group busy. Dropped by hand (see `Drop`).
    pub(super) device: ManuallyDrop<vfio_ioctls::VfioDevice>,
    pub(super) container: Arc<VfioContainer>,
}

impl fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioDevice")
            .field("info", &self.info)
            .field("bars", &self.bars)
            .field("msix_vectors", &self.msix_vectors)
            .field("msi_vectors", &self.msi_vectors)
            .field("reset_supported", &self.reset_supported)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bookkeeping behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VfioDevice {
    /// Opens the function at a PCI address (`0000:03:00.0`) or sysfs path
    /// (`/sys/bus/pci/devices/0000:03:00.0`).
    pub fn open(device: &str, opts: &VfioOptions) -> Result<Arc<Self>, VfioError> {
        let address = Path::new(device)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scanner = PciScanner::new();
        let function = scanner.function(&address)?;
        Self::open_function(&scanner, &function, opts)
    }

    /// Opens a function found by `scanner`.
    pub fn open_function(
        scanner: &PciScanner,
        function: &PciFunction,
        opts: &VfioOptions,
    ) -> Result<Arc<Self>, VfioError> {
        let name = function.address.clone();
        if !function.is_vfio_bound() {
            return Err(VfioError::NotBoundToVfio {
                device: name,
                driver: function.driver.clone(),
            });
        }
        let group = function
            .iommu_group
            .ok_or_else(|| VfioError::NoIommuGroup {
                device: name.clone(),
            })?;
        check_memlock(&name, opts.dma_pool_bytes)?;

        let container = Arc::new(VfioContainer::new(None).map_err(|e| match e {
            vfio_ioctls::VfioError::OpenContainer(source) => VfioError::OpenContainer(source),
            source => VfioError::Open {
                device: name.clone(),
                source,
            },
        })?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = vfio_ioctls::VfioDevice::new(&function.sysfs_path, ops, false).map_err(
            |e| match e {
                vfio_ioctls::VfioError::GroupViable => VfioError::GroupNotViable {
                    device: name.clone(),
                    group,
                    blockers: scanner.group_blockers(group).unwrap_or_default(),
                },
                vfio_ioctls::VfioError::OpenGroup(source, _) => VfioError::OpenGroup {
                    device: name.clone(),
                    group,
                    source,
                },
                source => VfioError::Open {
                    device: name.clone(),
                    source,
                },
            },
        )?;

        let iommu = sys::iommu_info(sys::container_fd(&container)).map_err(|source| {
            VfioError::IommuInfo {
                device: name.clone(),
                source,
            }
        })?;
        let granule = 1u64 << iommu.page_sizes.trailing_zeros().min(63);
        let limit = match opts.dma_address_bits {
            0 | 64.. => u64::MAX,
            bits => 1u64 << bits,
        };
        let iova = IovaAllocator::new(iommu.iova_ranges.as_deref(), limit, granule);

        let bars = (0..PCI_STD_NUM_BARS)
            .map(|i| Bar::open(&device, i, &name, opts.mmap_bars))
            .collect();
        let irq_count = |index| device.get_irq_info(index).map_or(0, |i| i.count);
        let reset_supported =
            sys::device_supports_reset(sys::device_fd(&device)).map_err(|source| {
                VfioError::DeviceInfo {
                    device: name.clone(),
                    source,
                }
            })?;

        let mut dev = Self {
            info: DeviceInfo {
                name: name.clone(),
                backend: BackendKind::Vfio,
                pci_address: name.clone(),
                vendor_id: function.vendor_id,
                device_id: function.device_id,
                class_code: function.class_code,
            },
            bars,
            config_offset: device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX),
            config_size: device.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX),
            msix_vectors: irq_count(VFIO_PCI_MSIX_IRQ_INDEX),
            msi_vectors: irq_count(VFIO_PCI_MSI_IRQ_INDEX),
            reset_supported,
            iova_ranges: iommu.iova_ranges,
            dma: Mutex::new(DmaState {
                iova,
                maps: BTreeMap::new(),
            }),
            irqs: Mutex::new(IrqState::default()),
            device: ManuallyDrop::new(device),
            container,
        };
        let config_err = |source| VfioError::Config {
            device: name.clone(),
            source,
        };
        // The IDs as the device reports them (sysfs may show an override).
        dev.info.vendor_id = dev.config_read16(PCI_VENDOR_ID).map_err(config_err)?;
        dev.info.device_id = dev.config_read16(PCI_DEVICE_ID).map_err(config_err)?;
        dev.info.class_code = dev.config_read32(PCI_CLASS_REVISION).map_err(config_err)? >> 8;
        if opts.bus_master {
            dev.set_bus_master(true).map_err(config_err)?;
        }
        tracing::info!(
            device = %name,
            group,
            vendor = format_args!("{:04x}", dev.info.vendor_id),
            device_id = format_args!("{:04x}", dev.info.device_id),
            msix = dev.msix_vectors,
            msi = dev.msi_vectors,
            reset = dev.reset_supported,
            iova_ranges = ?dev.iova_ranges,
            "opened PCI function through VFIO"
        );
        Ok(Arc::new(dev))
    }

    /// Sets or clears Bus Master Enable in the command register. Without it, DMA and
    /// MSI/MSI-X messages from the function are dropped.
    pub fn set_bus_master(&self, enable: bool) -> Result<(), IoError> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        let new = if enable {
            cmd | PCI_COMMAND_MASTER
        } else {
            cmd & !PCI_COMMAND_MASTER
        };
        if new != cmd {
            self.config_write(PCI_COMMAND, &new.to_le_bytes())?;
        }
        Ok(())
    }

    /// Whether Bus Master Enable is set.
    pub fn bus_master(&self) -> Result<bool, IoError> {
        Ok(self.config_read16(PCI_COMMAND)? & PCI_COMMAND_MASTER != 0)
    }

    /// Reads a 16-bit little-endian config register.
    pub fn config_read16(&self, offset: u32) -> Result<u16, IoError> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a 32-bit little-endian config register.
    pub fn config_read32(&self, offset: u32) -> Result<u32, IoError> {
        let mut b = [0u8; 4];
        self.config_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Size of BAR `bar` in bytes (0 when absent).
    pub fn bar_size(&self, bar: u32) -> u64 {
        self.bar(bar).map_or(0, Bar::size)
    }

    /// Bytes of BAR `bar` reached by mmap rather than pread/pwrite.
    pub fn bar_mapped_bytes(&self, bar: u32) -> u64 {
        self.bar(bar).map_or(0, Bar::mapped_bytes)
    }

    /// MSI-X and MSI vector counts.
    pub fn vector_counts(&self) -> (u32, u32) {
        (self.msix_vectors, self.msi_vectors)
    }

    /// The interrupt mechanism in use, if any.
    pub fn interrupt_kind(&self) -> Option<InterruptKind> {
        lock(&self.irqs).active
    }

    /// Whether vfio-pci offers a reset for this function.
    pub fn reset_supported(&self) -> bool {
        self.reset_supported
    }

    /// The IOMMU's valid IOVA ranges (inclusive), when the kernel reports them.
    pub fn iova_ranges(&self) -> Option<&[(u64, u64)]> {
        self.iova_ranges.as_deref()
    }

    /// Number of live DMA mappings.
    pub fn dma_mappings(&self) -> usize {
        lock(&self.dma).maps.len()
    }

    fn bar(&self, bar: u32) -> Option<&Bar> {
        self.bars.get(bar as usize).and_then(Option::as_ref)
    }

    pub(super) fn bar_or_err(&self, bar: u32, offset: u64) -> Result<&Bar, IoError> {
        self.bar(bar).ok_or(IoError::RegisterOutOfRange {
            bar,
            offset,
            width: 4,
        })
    }

    pub(super) fn config_range(&self, offset: u32, len: usize) -> Result<u64, IoError> {
        let end = u64::from(offset) + len as u64;
        if end > self.config_size {
            return Err(IoError::ConfigAccess {
                offset,
                len,
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        Ok(self.config_offset + u64::from(offset))
    }

    pub(super) fn disable_irqs_locked(&self, irqs: &mut IrqState) -> Result<(), IoError> {
        if let Some(kind) = irqs.active {
            sys::set_irq_eventfds(sys::device_fd(&self.device), kind.index(), &[]).map_err(
                |source| IoError::Interrupts {
                    requested: 0,
                    supported: self.max_interrupts(),
                    source: Some(source),
                },
            )?;
            irqs.active = None;
        }
        irqs.fds.clear();
        Ok(())
    }
}

/// Refuses a DMA pool the locked-memory limit cannot hold.
fn check_memlock(device: &str, pool: u64) -> Result<(), VfioError> {
    if pool == 0 || sys::has_ipc_lock() {
        return Ok(());
    }
    let limit = sys::memlock_limit().map_err(|source| VfioError::Rlimit {
        device: device.to_owned(),
        source,
    })?;
    match limit {
        Some(limit) if limit < pool => Err(VfioError::MemlockLimit {
            device: device.to_owned(),
            pool,
            limit,
        }),
        _ => Ok(()),
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        let name = self.info.name.clone();
        // 1. No more interrupts.
        let mut irqs = std::mem::take(&mut *lock(&self.irqs));
        if let Err(error) = self.disable_irqs_locked(&mut irqs) {
            tracing::warn!(device = %name, %error, "disabling interrupts at close failed");
        }
        // 2. Quiesce: no more DMA from the function.
        if let Err(error) = self.set_bus_master(false) {
            tracing::warn!(device = %name, %error, "clearing bus master at close failed");
        }
        // 3. Unmap what is still mapped, then let the memory go.
        let maps = std::mem::take(&mut lock(&self.dma).maps);
        let container = sys::container_fd(&self.container);
        for (iova, m) in maps {
            if let Err(error) = sys::unmap_dma(container, iova, m.mapped) {
                tracing::error!(device = %name, iova, %error, "DMA unmap at close failed; leaking");
                std::mem::forget(m);
            }
        }
        // 4. munmap the BARs, then close the device descriptor. vfio-ioctls looks the
        // group up in sysfs while closing and panics if the function is gone from there
        // (surprise removal); that must not take the process down.
        self.bars.clear();
        let device = &mut self.device;
        let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `device` is dropped exactly once, here, and not used afterwards:
            // this is the owner's `Drop` and no other field refers to it.
            unsafe { ManuallyDrop::drop(device) }
        }));
        if closed.is_err() {
            tracing::error!(device = %name, "releasing the VFIO group failed (function removed?)");
        }
        // 5. The container (and any group still in it) closes when its field drops.
        tracing::info!(device = %name, "closed");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn function(driver: Option<&str>, group: Option<u32>) -> PciFunction {
        PciFunction {
            address: "0000:03:00.0".into(),
            sysfs_path: PathBuf::from("/nonexistent/0000:03:00.0"),
            vendor_id: 0x1ded,
            device_id: 0x5650,
            class_code: vpu_ffi::VPU_PCI_CLASS_NVME,
            driver: driver.map(str::to_owned),
            iommu_group: group,
        }
    }

    #[test]
    fn a_function_not_bound_to_vfio_pci_is_refused_with_instructions() {
        let scanner = PciScanner::with_root("/nonexistent");
        for driver in [Some("nvme"), None] {
            let err = VfioDevice::open_function(
                &scanner,
                &function(driver, Some(3)),
                &VfioOptions::default(),
            )
            .unwrap_err();
            assert!(matches!(err, VfioError::NotBoundToVfio { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("driver_override"), "{msg}");
            assert!(msg.contains(driver.unwrap_or("no driver")), "{msg}");
        }
    }

    #[test]
    fn a_function_without_iommu_group_names_the_iommu() {
        let scanner = PciScanner::with_root("/nonexistent");
        let err = VfioDevice::open_function(
            &scanner,
            &function(Some("vfio-pci"), None),
            &VfioOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, VfioError::NoIommuGroup { .. }), "{err}");
        assert!(err.to_string().contains("intel_iommu=on"));
    }

    #[test]
    fn open_by_address_of_a_missing_function_is_not_found() {
        let err = VfioDevice::open("0000:ff:1f.7", &VfioOptions::default()).unwrap_err();
        assert!(matches!(err, VfioError::NotFound { .. }), "{err}");
        let err = VfioDevice::open(
            "/sys/bus/pci/devices/not-an-address",
            &VfioOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, VfioError::BadAddress { .. }), "{err}");
    }
}
