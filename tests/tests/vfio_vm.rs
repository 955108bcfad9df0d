//! The VFIO tier: the real VFIO path against independent PCI device implementations
//! (QEMU's NVMe controller and `edu`) behind a virtual IOMMU, in a VM under TCG.
//!
//! Skips with instructions when QEMU, a Debian kernel with the vfio modules, or a static
//! busybox is missing; with `VPU_REQUIRE_VM=1` a missing prerequisite fails instead.
//! `VPU_VM_LOG=debug` turns on the guest program's tracing.

use std::path::{Path, PathBuf};

use vpu_tests::vm::{self, Prerequisites, VmConfig};

/// Every check the guest must report, and report ok.
const EXPECTED: &[&str] = &[
    "edu_open",
    "edu_bar_mmap",
    "edu_msi",
    "edu_dma",
    "edu_bus_master",
    "edu_reset_unsupported",
    "edu_disable_interrupts",
    "edu_pread_fallback",
    "vfio_not_bound",
    "vfio_group_not_viable",
    "vfio_memlock_limit",
    "vfio_discovery_scan",
    "nvme_open",
    "nvme_function_reset",
    "nvme_enable_msix",
    "nvme_identify",
    "nvme_set_features",
    "nvme_data_64mib",
    "nvme_unmapped_iova",
    "nvme_controller_reset",
    "nvme_shutdown",
    "nvme_teardown",
    "vpud_discovery_skips_plain_nvme",
    "bench_4k_read",
];

#[test]
fn vfio_vm() {
    let require = std::env::var("VPU_REQUIRE_VM").is_ok_and(|v| v == "1");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let work = tmp.join("vfio-vm");
    std::fs::create_dir_all(&work).expect("creating the VM work directory");
    let pre = match Prerequisites::find(&work) {
        Ok(p) => p,
        Err(how) if require => panic!("VPU_REQUIRE_VM=1 and the VM tier cannot run: {how}"),
        Err(how) => {
            vm::show(&format!("vfio_vm: SKIPPED: {how}"));
            return;
        }
    };
    vm::show(&format!(
        "vfio_vm: qemu {}, kernel {}, modules {}",
        pre.qemu.display(),
        pre.kernel.display(),
        pre.modules.display()
    ));

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The guest program is this package's own binary, built with the tests.
    let guest = Path::new(env!("CARGO_BIN_EXE_vfio-guest"));
    let libs = vm::shared_libraries(guest).expect("listing the guest program's libraries");
    let initramfs = work.join("initramfs.cpio");
    vm::build_initramfs(&pre, &manifest.join("vm/init"), guest, &libs, &initramfs)
        .expect("building the initramfs");

    let mut cfg = VmConfig::default();
    if let Ok(level) = std::env::var("VPU_VM_LOG") {
        cfg.extra_append = format!("VPU_LOG={level}");
    }
    let run = vm::boot(&pre, &initramfs, &work, &cfg).expect("booting the VM");

    let mut report = format!("vfio_vm: VM ran {:.1} s\n", run.elapsed.as_secs_f64());
    for r in &run.results {
        let status = if r.ok { "ok  " } else { "FAIL" };
        report.push_str(&format!("  {status} {}: {}\n", r.name, r.detail));
    }
    for (name, value, unit) in &run.bench {
        report.push_str(&format!("  BENCH {name}: {value:.2} {unit}\n"));
    }
    // init reports failed module loads and bindings on the console.
    let init_errors: Vec<&str> = run
        .console
        .lines()
        .filter(|l| l.starts_with("VM-ERROR"))
        .collect();
    for line in run
        .other
        .iter()
        .map(String::as_str)
        .chain(init_errors.iter().copied())
    {
        report.push_str(&format!("  {line}\n"));
    }
    vm::show(&report);

    let failed: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|name| !run.result(name).is_some_and(|r| r.ok))
        .collect();
    if !failed.is_empty() || !run.done {
        vm::show(&format!("---- guest console ----\n{}", run.console));
    }
    assert!(
        init_errors.is_empty(),
        "the VM's init failed: {init_errors:?}"
    );
    assert!(run.done, "the guest program did not finish");
    assert!(failed.is_empty(), "checks failed or missing: {failed:?}");
    let unexpected: Vec<_> = run
        .results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.name.as_str())
        .collect();
    assert!(unexpected.is_empty(), "failed checks: {unexpected:?}");
}
