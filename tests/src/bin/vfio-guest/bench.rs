//! Benchmark: 4 KiB random reads per second through the userspace driver (VFIO + the
//! driver's NVMe transport, interrupts on) against the guest kernel's nvme driver on an
//! identical controller (O_DIRECT), at the same queue depth, in the same VM run. Under
//! TCG the absolute figures mean little; the ratio is the point.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use vpu_driver::io::{DeviceIo, DeviceIoExt, HostRegion};
use vpu_driver::nvme::{Controller, ControllerOptions, NvmeError};
use vpu_driver::vfio::{VfioDevice, VfioOptions};

use crate::{Layout, Reporter};

/// Commands in flight at once, on both sides.
pub const QUEUE_DEPTH: usize = 16;
/// Reads timed per side, after `WARMUP` untimed ones.
const READS: u64 = 20_000;
const WARMUP: u64 = 1_000;
const BLOCK: usize = 4096;
/// The reads land in [64 MiB, 80 MiB): blocks neither side has written.
const REGION_START: u64 = 64 << 20;
const REGION_BLOCKS: u64 = (16 << 20) / BLOCK as u64;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Byte offset of read number `i` (the same sequence on both sides).
fn offset(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    REGION_START + (x % REGION_BLOCKS) * BLOCK as u64
}

/// Reads per second through vfio and the driver's transport.
fn userspace(layout: &Layout, rt: &tokio::runtime::Runtime) -> anyhow::Result<f64> {
    let dev = VfioDevice::open(&layout.nvme, &VfioOptions::default())?;
    let io: Arc<dyn DeviceIo> = dev;
    let opts = ControllerOptions {
        io_queues: 2,
        queue_depth: 64,
        ..ControllerOptions::default()
    };
    let ctrl = rt.block_on(Controller::enable(io.clone(), opts))?;
    let ns = rt.block_on(ctrl.identify_namespace(1))?;
    let lbads = ({ ns.lbaf }[usize::from(ns.flbas & 0xf)] >> 16) & 0xff;
    let lba = 1u64 << lbads;
    let run = |first: u64, count: u64| -> anyhow::Result<Duration> {
        let next = Arc::new(AtomicU64::new(first));
        let end = first + count;
        let start = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for worker in 0..QUEUE_DEPTH {
                let (ctrl, io, next) = (ctrl.clone(), io.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let buf = io.alloc_dma(BLOCK).map_err(|e| anyhow::anyhow!("{e}"))?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return Ok::<_, anyhow::Error>(());
                        }
                        let blocks = (BLOCK as u64 / lba) as u16;
                        ctrl.nvm_read(
                            worker % 2,
                            1,
                            offset(i) / lba,
                            blocks,
                            &buf,
                            0,
                            BLOCK,
                            TIMEOUT,
                        )
                        .await
                        .map_err(|e: NvmeError| anyhow::anyhow!("read {i}: {e}"))?;
                    }
                }));
            }
            for t in tasks {
                t.await.context("reader task")??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(start.elapsed())
    };
    run(0, WARMUP)?;
    let took = run(WARMUP, READS)?;
    rt.block_on(ctrl.shutdown())?;
    Ok(READS as f64 / took.as_secs_f64())
}

/// The block device the kernel's nvme driver made for `pci` (`/dev/nvme1n1`).
fn kernel_block_device(pci: &str) -> anyhow::Result<String> {
    let dir = format!("/sys/bus/pci/devices/{pci}/nvme");
    for ctrl in std::fs::read_dir(&dir)
        .with_context(|| dir.clone())?
        .flatten()
    {
        for ns in std::fs::read_dir(ctrl.path())?.flatten() {
            let name = ns.file_name().to_string_lossy().into_owned();
            let cname = ctrl.file_name().to_string_lossy().into_owned();
            if name.starts_with(&cname) && name[cname.len()..].starts_with('n') {
                return Ok(format!("/dev/{name}"));
            }
        }
    }
    anyhow::bail!("no namespace block device under {dir}")
}

/// Reads per second through the kernel's nvme driver, O_DIRECT, `QUEUE_DEPTH` threads
/// each with one read outstanding.
fn kernel(layout: &Layout) -> anyhow::Result<(f64, String)> {
    let path = kernel_block_device(&layout.kernel_nvme)?;
    let file = Arc::new(
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("opening {path} O_DIRECT"))?,
    );
    let run = |first: u64, count: u64| -> anyhow::Result<Duration> {
        let next = Arc::new(AtomicU64::new(first));
        let end = first + count;
        let start = Instant::now();
        let threads: Vec<_> = (0..QUEUE_DEPTH)
            .map(|_| {
                let (file, next) = (file.clone(), next.clone());
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let buf = HostRegion::anonymous(BLOCK)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return Ok(());
                        }
                        // SAFETY: `buf` is BLOCK bytes of page-aligned memory owned by this
                        // thread, as O_DIRECT requires; the kernel writes at most BLOCK bytes.
                        let n = unsafe {
                            libc::pread(
                                file.as_raw_fd(),
                                buf.as_ptr().cast(),
                                BLOCK,
                                offset(i) as libc::off_t,
                            )
                        };
                        ensure!(
                            n == BLOCK as isize,
                            "pread {i}: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        }
        Ok(start.elapsed())
    };
    run(0, WARMUP)?;
    let took = run(WARMUP, READS)?;
    Ok((READS as f64 / took.as_secs_f64(), path))
}

pub fn run(r: &Reporter, layout: &Layout, rt: &tokio::runtime::Runtime) {
    r.check("bench_4k_read", || {
        let vfio = userspace(layout, rt).context("userspace driver")?;
        let (kern, path) = kernel(layout).context("kernel driver")?;
        r.bench("nvme_4k_read_userspace_iops", vfio, "reads/s");
        r.bench("nvme_4k_read_kernel_iops", kern, "reads/s");
        r.bench("nvme_4k_read_ratio", vfio / kern, "x");
        Ok(format!(
            "{READS} random 4 KiB reads at queue depth {QUEUE_DEPTH}: userspace {vfio:.0}/s, \
             kernel ({path}, O_DIRECT) {kern:.0}/s, ratio {:.2}",
            vfio / kern
        ))
    });
}
