//! Host side of the VFIO test tier: find QEMU, a Debian kernel with its vfio modules and a
//! static busybox; pack the guest program (the test build's own `vfio-guest`, with the
//! shared objects it loads) into an initramfs; boot a q35 VM with a virtual IOMMU, two
//! NVMe controllers and `edu` devices; collect what the guest reports.
//!
//! The guest prints `RESULT <name> ok|fail <detail>` and `BENCH <name> <value> <unit>`
//! lines on its second serial port; the kernel console goes to the first.
//!
//! - [`host`]: prerequisites and the guest program's shared objects;
//! - [`initramfs`]: the cpio archive the guest boots from;
//! - [`qemu`]: the VM's command line, its run, and the results.

mod host;
mod initramfs;
mod qemu;

pub use host::{shared_libraries, Prerequisites, HOW_TO_ENABLE};
pub use initramfs::build_initramfs;
pub use qemu::{boot, parse_results, show, GuestResult, VmConfig, VmRun};
