//! The VFIO backend of `DeviceIo`: a real PCI function bound to vfio-pci.
//!
//! - [`discovery`]: PCI functions in sysfs (IDs, class, driver, IOMMU group);
//! - [`VfioDevice`]: open a function, BARs (mmapped, pread/pwrite elsewhere), config
//!   space, Bus Master Enable, MSI-X/MSI vectors on eventfds, DMA through the
//!   [`IovaAllocator`], function reset;
//! - `sys`: the raw ioctls, mmaps and limits underneath.

mod bar;
mod device;
mod device_io;
pub mod discovery;
mod error;
mod iova;
pub mod pci;
mod sys;

pub use device::{InterruptKind, VfioDevice, VfioOptions};
pub use discovery::{GroupMember, PciFunction, PciScanner};
pub use error::VfioError;
pub use iova::{IovaAllocator, IOVA_FLOOR, MSI_WINDOW};
