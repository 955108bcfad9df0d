//! Errors of opening and discovering VFIO devices. Once a device is open, its operations
//! report `io::IoError` like every backend's.

use std::path::PathBuf;

use super::discovery::GroupMember;
use crate::io::IoError;

fn list(members: &[GroupMember]) -> String {
    members
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn driver_name(driver: &Option<String>) -> &str {
    driver.as_deref().unwrap_or("no driver")
}

/// What went wrong finding or opening a PCI function through VFIO.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("{address:?} is not a PCI address (expected DDDD:BB:DD.F)")]
    BadAddress { address: String },

    #[error("{device}: no such PCI function ({path} does not exist)")]
    NotFound { device: String, path: PathBuf },

    #[error("reading {path} failed")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unexpected contents {value:?} in {path}")]
    SysfsFormat { path: PathBuf, value: String },

    #[error(
        "{device} is bound to {}, not vfio-pci: bind it with \
         `echo vfio-pci > /sys/bus/pci/devices/{device}/driver_override` and drivers_probe \
         (docs/vfio.md)",
        driver_name(driver)
    )]
    NotBoundToVfio {
        device: String,
        driver: Option<String>,
    },

    #[error(
        "{device} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on \
         the kernel command line, VT-d/AMD-Vi in firmware)"
    )]
    NoIommuGroup { device: String },

    #[error(
        "IOMMU group {group} of {device} is not viable: every device in it must be bound to \
         vfio-pci or to no driver; bind these: {}",
        list(blockers)
    )]
    GroupNotViable {
        device: String,
        group: u32,
        blockers: Vec<GroupMember>,
    },

    #[error(
        "opening the VFIO container /dev/vfio/vfio failed: is the vfio-pci module loaded, \
         and may this user open it?"
    )]
    OpenContainer(#[source] std::io::Error),

    #[error(
        "opening /dev/vfio/{group} for {device} failed: the group file must be readable and \
         writable by this user (udev rules give it to the `vpu` group) and no other process \
         may hold it"
    )]
    OpenGroup {
        device: String,
        group: u32,
        #[source]
        source: std::io::Error,
    },

    #[error("opening {device} through VFIO failed")]
    Open {
        device: String,
        #[source]
        source: vfio_ioctls::VfioError,
    },

    #[error("{device}: querying the VFIO device failed")]
    DeviceInfo {
        device: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{device}: querying the IOMMU failed")]
    IommuInfo {
        device: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{device}: the DMA pool of {pool} bytes exceeds the locked-memory limit \
         RLIMIT_MEMLOCK of {limit} bytes; raise it (LimitMEMLOCK= in the systemd unit, \
         `ulimit -l`) or grant CAP_IPC_LOCK"
    )]
    MemlockLimit {
        device: String,
        pool: u64,
        limit: u64,
    },

    #[error("{device}: reading the locked-memory limit failed")]
    Rlimit {
        device: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{device}: configuration space access failed")]
    Config {
        device: String,
        #[source]
        source: IoError,
    },
}
