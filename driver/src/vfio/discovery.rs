//! PCI functions as sysfs shows them: which are bound to `vfio-pci`, their IDs and class,
//! and who else shares their IOMMU group.
//!
//! The sysfs root is injectable so that tests can lay out a tree of their own; the daemon
//! uses `/sys`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::VfioError;

/// The driver name VFIO-owned functions are bound to.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// One PCI function in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// `DDDD:BB:DD.F`.
    pub address: String,
    /// `<root>/bus/pci/devices/<address>`.
    pub sysfs_path: PathBuf,
    pub vendor_id: u16,
    pub device_id: u16,
    /// 24-bit class code (base, sub, programming interface).
    pub class_code: u32,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// The IOMMU group, if the function has one (no IOMMU: none).
    pub iommu_group: Option<u32>,
}

impl PciFunction {
    /// Whether the function is bound to `vfio-pci`.
    pub fn is_vfio_bound(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_PCI_DRIVER)
    }

    /// Whether the class code is NVMe (mass storage, non-volatile memory, NVMe interface).
    pub fn is_nvme(&self) -> bool {
        self.class_code == vpu_ffi::VPU_PCI_CLASS_NVME
    }

    /// Whether `(vendor, device)` is in `ids`.
    pub fn matches_id(&self, ids: &[(u16, u16)]) -> bool {
        ids.contains(&(self.vendor_id, self.device_id))
    }
}

impl fmt::Display for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:04x}:{:04x}] class {:06x} driver {}",
            self.address,
            self.vendor_id,
            self.device_id,
            self.class_code,
            self.driver.as_deref().unwrap_or("none")
        )
    }
}

/// A member of an IOMMU group and the driver it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub address: String,
    pub driver: Option<String>,
}

impl fmt::Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Some(d) => write!(f, "{} (bound to {d})", self.address),
            None => write!(f, "{} (no driver)", self.address),
        }
    }
}

/// Reads PCI functions from a sysfs tree.
#[derive(Debug, Clone)]
pub struct PciScanner {
    root: PathBuf,
}

impl Default for PciScanner {
    fn default() -> Self {
        Self::new()
    }
}

fn sysfs_err(path: &Path, source: std::io::Error) -> VfioError {
    VfioError::Sysfs {
        path: path.to_path_buf(),
        source,
    }
}

fn read_hex(path: &Path) -> Result<u32, VfioError> {
    let text = std::fs::read_to_string(path).map_err(|e| sysfs_err(path, e))?;
    let t = text.trim();
    u32::from_str_radix(t.trim_start_matches("0x"), 16).map_err(|_| VfioError::SysfsFormat {
        path: path.to_path_buf(),
        value: t.to_owned(),
    })
}

/// The last path component of a symlink's target (`driver` -> `../../bus/pci/drivers/nvme`).
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

impl PciScanner {
    /// A scanner of the live system (`/sys`).
    pub fn new() -> Self {
        Self::with_root("/sys")
    }

    /// A scanner of the sysfs tree at `root` (tests lay out their own).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The sysfs root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    /// Every PCI function, sorted by address. A function whose sysfs entry cannot be
    /// read (removed while scanning, unexpected contents) is left out with a warning.
    pub fn functions(&self) -> Result<Vec<PciFunction>, VfioError> {
        let dir = self.devices_dir();
        let entries = std::fs::read_dir(&dir).map_err(|e| sysfs_err(&dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| sysfs_err(&dir, e))?;
            let address = entry.file_name().to_string_lossy().into_owned();
            match self.function(&address) {
                Ok(f) => out.push(f),
                Err(error) => {
                    tracing::warn!(device = %address, %error, "skipping unreadable PCI function")
                }
            }
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    /// The functions bound to `vfio-pci`.
    pub fn vfio_functions(&self) -> Result<Vec<PciFunction>, VfioError> {
        Ok(self
            .functions()?
            .into_iter()
            .filter(PciFunction::is_vfio_bound)
            .collect())
    }

    /// One function by address (`0000:00:03.0`; a bare `00:03.0` means domain 0000).
    pub fn function(&self, address: &str) -> Result<PciFunction, VfioError> {
        let address = normalize_address(address)?;
        let path = self.devices_dir().join(&address);
        if !path.exists() {
            return Err(VfioError::NotFound {
                device: address,
                path,
            });
        }
        let vendor = read_hex(&path.join("vendor"))?;
        let device = read_hex(&path.join("device"))?;
        let class = read_hex(&path.join("class"))?;
        let iommu_group = link_name(&path.join("iommu_group")).and_then(|g| g.parse().ok());
        Ok(PciFunction {
            vendor_id: vendor as u16,
            device_id: device as u16,
            class_code: class & 0x00ff_ffff,
            driver: link_name(&path.join("driver")),
            iommu_group,
            address,
            sysfs_path: path,
        })
    }

    /// The members of IOMMU group `group` and their drivers, sorted by address.
    pub fn group_members(&self, group: u32) -> Result<Vec<GroupMember>, VfioError> {
        let dir = self
            .root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let entries = std::fs::read_dir(&dir).map_err(|e| sysfs_err(&dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| sysfs_err(&dir, e))?;
            out.push(GroupMember {
                address: entry.file_name().to_string_lossy().into_owned(),
                driver: link_name(&entry.path().join("driver")),
            });
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    /// The members of `group` that keep it from being viable: bound to a driver other than
    /// `vfio-pci` or `pci-stub`. (The kernel has the last word; this names the likely
    /// culprits for the operator.)
    pub fn group_blockers(&self, group: u32) -> Result<Vec<GroupMember>, VfioError> {
        Ok(self
            .group_members(group)?
            .into_iter()
            .filter(|m| {
                m.driver
                    .as_deref()
                    .is_some_and(|d| d != VFIO_PCI_DRIVER && d != "pci-stub")
            })
            .collect())
    }
}

/// Accepts `DDDD:BB:DD.F` or `BB:DD.F`, returns `DDDD:BB:DD.F` in lowercase.
pub fn normalize_address(address: &str) -> Result<String, VfioError> {
    let a = address.trim().to_ascii_lowercase();
    let full = if a.matches(':').count() == 1 {
        format!("0000:{a}")
    } else {
        a
    };
    let bad = || VfioError::BadAddress {
        address: address.to_owned(),
    };
    let (dom_bus, devfn) = full.rsplit_once(':').ok_or_else(bad)?;
    let (dom, bus) = dom_bus.split_once(':').ok_or_else(bad)?;
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    if !(hex(dom, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)) {
        return Err(bad());
    }
    Ok(full)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree in a fresh temporary directory, removed on drop.
    struct FakeSysfs(PathBuf);

    impl FakeSysfs {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "vpu-sysfs-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("bus/pci/devices")).unwrap();
            Self(dir)
        }

        fn add(&self, addr: &str, vendor: u16, device: u16, class: u32, driver: &str, group: u32) {
            let base = self.0.join("devices/pci0000:00").join(addr);
            std::fs::create_dir_all(&base).unwrap();
            std::fs::write(base.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
            std::fs::write(base.join("device"), format!("0x{device:04x}\n")).unwrap();
            std::fs::write(base.join("class"), format!("0x{class:06x}\n")).unwrap();
            if !driver.is_empty() {
                let d = self.0.join("bus/pci/drivers").join(driver);
                std::fs::create_dir_all(&d).unwrap();
                symlink(&d, base.join("driver")).unwrap();
            }
            let g = self.0.join("kernel/iommu_groups").join(group.to_string());
            std::fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, base.join("iommu_group")).unwrap();
            symlink(&base, g.join("devices").join(addr)).unwrap();
            symlink(&base, self.0.join("bus/pci/devices").join(addr)).unwrap();
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn lists_vfio_functions_with_ids_and_class() {
        let fs = FakeSysfs::new("list");
        fs.add("0000:00:03.0", 0x1b36, 0x0010, 0x010802, "vfio-pci", 3);
        fs.add("0000:00:04.0", 0x1b36, 0x0010, 0x010802, "nvme", 4);
        fs.add("0000:00:05.0", 0x1234, 0x11e8, 0x00ff00, "vfio-pci", 5);
        fs.add("0000:00:1f.0", 0x8086, 0x2918, 0x060100, "", 6);
        let scanner = PciScanner::with_root(&fs.0);
        assert_eq!(scanner.functions().unwrap().len(), 4);
        let vfio = scanner.vfio_functions().unwrap();
        let addrs: Vec<_> = vfio.iter().map(|f| f.address.as_str()).collect();
        assert_eq!(addrs, ["0000:00:03.0", "0000:00:05.0"]);
        assert!(vfio[0].is_nvme());
        assert!(!vfio[1].is_nvme());
        assert_eq!(vfio[1].iommu_group, Some(5));
        assert!(vfio[1].matches_id(&[(0x1234, 0x11e8)]));
        let plain = scanner.function("00:1f.0").unwrap();
        assert_eq!(plain.driver, None);
        assert_eq!(plain.class_code, 0x060100);
    }

    #[test]
    fn group_blockers_name_foreign_drivers() {
        let fs = FakeSysfs::new("group");
        fs.add("0000:01:00.0", 0x1ded, 0x5650, 0x010802, "vfio-pci", 7);
        fs.add("0000:01:00.1", 0x1ded, 0x5651, 0x0c0330, "xhci_hcd", 7);
        fs.add("0000:01:00.2", 0x1ded, 0x5652, 0x088000, "", 7);
        let scanner = PciScanner::with_root(&fs.0);
        assert_eq!(scanner.group_members(7).unwrap().len(), 3);
        let blockers = scanner.group_blockers(7).unwrap();
        assert_eq!(blockers.len(), 1);
        assert_eq!(blockers[0].to_string(), "0000:01:00.1 (bound to xhci_hcd)");
    }

    #[test]
    fn missing_function_and_bad_addresses_are_errors() {
        let fs = FakeSysfs::new("missing");
        let scanner = PciScanner::with_root(&fs.0);
        assert!(matches!(
            scanner.function("0000:00:09.0"),
            Err(VfioError::NotFound { .. })
        ));
        for bad in ["", "00:03", "0000:00:03.x", "0000:000:03.0", "../../etc"] {
            assert!(
                matches!(normalize_address(bad), Err(VfioError::BadAddress { .. })),
                "{bad}"
            );
        }
        assert_eq!(normalize_address("00:1F.0").unwrap(), "0000:00:1f.0");
    }

    #[test]
    fn garbage_in_sysfs_is_a_format_error() {
        let fs = FakeSysfs::new("garbage");
        fs.add("0000:00:03.0", 0x1b36, 0x0010, 0x010802, "vfio-pci", 3);
        fs.add("0000:00:04.0", 0x1b36, 0x0010, 0x010802, "vfio-pci", 4);
        std::fs::write(
            fs.0.join("devices/pci0000:00/0000:00:03.0/vendor"),
            "banana\n",
        )
        .unwrap();
        let scanner = PciScanner::with_root(&fs.0);
        assert!(matches!(
            scanner.function("0000:00:03.0"),
            Err(VfioError::SysfsFormat { .. })
        ));
        let listed = scanner.functions().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].address, "0000:00:04.0");
    }
}
