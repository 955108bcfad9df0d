//! What an operator gets wrong, and what the backend says: a function not bound to
//! vfio-pci, an IOMMU group shared with a kernel driver, a locked-memory limit below the
//! DMA pool. Plus the sysfs scan that finds functions in the first place.

use std::sync::Arc;

use anyhow::{bail, ensure};
use vpu_driver::io::{DeviceIo, DeviceIoExt, IoError};
use vpu_driver::vfio::{PciScanner, VfioDevice, VfioError, VfioOptions};

use crate::util::{memlock, set_ipc_lock_effective, set_memlock};
use crate::{Layout, Reporter};

fn memlock_checks(layout: &Layout) -> anyhow::Result<String> {
    let small = 1u64 << 20;
    let opts = VfioOptions {
        dma_pool_bytes: 64 << 20,
        dma_address_bits: 28,
        ..VfioOptions::default()
    };
    let at_open = match VfioDevice::open(&layout.edu, &opts) {
        Err(e @ VfioError::MemlockLimit { limit, .. }) if limit == small => e.to_string(),
        Err(e) => bail!("open with a 64 MiB pool under a 1 MiB limit: {e}"),
        Ok(_) => bail!("open with a 64 MiB pool under a 1 MiB limit succeeded"),
    };
    ensure!(
        at_open.contains("RLIMIT_MEMLOCK"),
        "message does not name the limit: {at_open}"
    );
    // A pool within the limit opens; mapping beyond it fails naming the limit.
    let d = VfioDevice::open(
        &layout.edu,
        &VfioOptions {
            dma_pool_bytes: small / 2,
            ..opts
        },
    )?;
    let io: Arc<dyn DeviceIo> = d;
    let fits = io.alloc_dma(64 << 10)?;
    let at_map = match io.alloc_dma(4 << 20) {
        Err(e @ IoError::DmaMemlock { limit, .. }) if limit == small => e.to_string(),
        Err(e) => bail!("map of 4 MiB under a 1 MiB limit: {e}"),
        Ok(_) => bail!("map of 4 MiB under a 1 MiB limit succeeded"),
    };
    drop(fits);
    Ok(format!("open: {at_open}; map: {at_map}"))
}

pub fn run(r: &Reporter, layout: &Layout) {
    r.check("vfio_not_bound", || {
        match VfioDevice::open(&layout.kernel_nvme, &VfioOptions::default()) {
            Err(e @ VfioError::NotBoundToVfio { .. }) => {
                ensure!(e.to_string().contains("bound to nvme"), "{e}");
                Ok(e.to_string())
            }
            Err(e) => bail!("unexpected error: {e}"),
            Ok(_) => bail!("opened a function the kernel's nvme driver owns"),
        }
    });

    r.check("vfio_group_not_viable", || {
        match VfioDevice::open(&layout.edu_shared, &VfioOptions::default()) {
            Err(e @ VfioError::GroupNotViable { .. }) => {
                let VfioError::GroupNotViable { blockers, .. } = &e else {
                    unreachable!()
                };
                ensure!(
                    blockers.iter().any(|b| b.driver.as_deref() == Some("nvme")),
                    "blockers {blockers:?} do not name the nvme-bound function"
                );
                Ok(e.to_string())
            }
            Err(e) => bail!("unexpected error: {e}"),
            Ok(_) => bail!("opened a function whose group is not viable"),
        }
    });

    r.check("vfio_memlock_limit", || {
        let (soft, hard) = memlock()?;
        set_ipc_lock_effective(false)?;
        set_memlock(1 << 20, hard)?;
        let result = memlock_checks(layout);
        set_memlock(soft, hard)?;
        set_ipc_lock_effective(true)?;
        result
    });

    r.check("vfio_discovery_scan", || {
        let scanner = PciScanner::new();
        let vfio = scanner.vfio_functions()?;
        let find = |a: &str| vfio.iter().find(|f| f.address == a);
        let nvme = find(&layout.nvme);
        ensure!(
            nvme.is_some_and(|f| f.is_nvme()),
            "vfio-bound NVMe not listed: {vfio:?}"
        );
        ensure!(
            find(&layout.edu).is_some_and(|f| !f.is_nvme()),
            "edu not listed"
        );
        ensure!(
            find(&layout.kernel_nvme).is_none(),
            "kernel-owned NVMe listed as vfio-bound"
        );
        let all = scanner.functions()?;
        ensure!(
            all.iter()
                .any(|f| f.address == layout.kernel_nvme && f.driver.as_deref() == Some("nvme")),
            "kernel NVMe missing from the full scan"
        );
        Ok(vfio
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    });
}
