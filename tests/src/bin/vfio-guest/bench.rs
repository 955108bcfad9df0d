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
use vpu_driver::vfio::VfioOptions;

use crate::util::open_when_released;
use crate::{Layout, Reporter};

/// Commands in flight at once, on both sides.
pub const QUEUE_DEPTH: usize = 16;
/// Reads timed per side, after `WARMUP` untimed ones, in `ROUNDS` alternating rounds.
const READS: u64 = 20_000;
const ROUNDS: u64 = 5;
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

/// The userspace side: the controller through VFIO and the driver's transport.
struct Userspace {
    io: Arc<dyn DeviceIo>,
    ctrl: Arc<Controller>,
    /// Logical block size.
    lba: u64,
}

impl Userspace {
    fn open(layout: &Layout, rt: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        let (dev, _) = open_when_released(
            &layout.nvme,
            &VfioOptions::default(),
            Duration::from_secs(5),
        )?;
        let io: Arc<dyn DeviceIo> = dev;
        let opts = ControllerOptions {
            io_queues: 2,
            queue_depth: 64,
            ..ControllerOptions::default()
        };
        let ctrl = rt.block_on(Controller::enable(io.clone(), opts))?;
        let ns = rt.block_on(ctrl.identify_namespace(1))?;
        let lbads = ({ ns.lbaf }[usize::from(ns.flbas & 0xf)] >> 16) & 0xff;
        Ok(Self {
            io,
            ctrl,
            lba: 1 << lbads,
        })
    }

    /// Reads number `first..first + count`, `QUEUE_DEPTH` at a time over both queues.
    fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        first: u64,
        count: u64,
    ) -> anyhow::Result<Duration> {
        let next = Arc::new(AtomicU64::new(first));
        let end = first + count;
        let lba = self.lba;
        let start = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for worker in 0..QUEUE_DEPTH {
                let (ctrl, io, next) = (self.ctrl.clone(), self.io.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let buf = io.alloc_dma(BLOCK).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let blocks = (BLOCK as u64 / lba) as u16;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return Ok::<_, anyhow::Error>(());
                        }
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
    }
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

/// The kernel side: the identical controller's block device, O_DIRECT, `QUEUE_DEPTH`
/// threads each with one read outstanding.
struct Kernel {
    file: Arc<std::fs::File>,
    path: String,
}

impl Kernel {
    fn open(layout: &Layout) -> anyhow::Result<Self> {
        let path = kernel_block_device(&layout.kernel_nvme)?;
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("opening {path} O_DIRECT"))?;
        Ok(Self {
            file: Arc::new(file),
            path,
        })
    }

    fn run(&self, first: u64, count: u64) -> anyhow::Result<Duration> {
        let next = Arc::new(AtomicU64::new(first));
        let end = first + count;
        let start = Instant::now();
        let threads: Vec<_> = (0..QUEUE_DEPTH)
            .map(|_| {
                let (file, next) = (self.file.clone(), next.clone());
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
    }
}

/// Runs both sides in alternating rounds, so that a change in the host's load (the VM
/// runs under TCG on a shared machine) falls on both alike.
fn measure(layout: &Layout, rt: &tokio::runtime::Runtime) -> anyhow::Result<Figures> {
    let user = Userspace::open(layout, rt).context("userspace driver")?;
    let kern = Kernel::open(layout).context("kernel driver")?;
    user.run(rt, 0, WARMUP)?;
    kern.run(0, WARMUP)?;
    let per_round = READS / ROUNDS;
    let (mut user_t, mut kern_t) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let first = WARMUP + round * per_round;
        let u = user.run(rt, first, per_round)?;
        let k = kern.run(first, per_round)?;
        ratios.push(k.as_secs_f64() / u.as_secs_f64());
        user_t += u;
        kern_t += k;
    }
    rt.block_on(user.ctrl.shutdown())?;
    ratios.sort_by(f64::total_cmp);
    let reads = (per_round * ROUNDS) as f64;
    Ok(Figures {
        user: reads / user_t.as_secs_f64(),
        kernel: reads / kern_t.as_secs_f64(),
        ratio_min: ratios[0],
        ratio_max: ratios[ratios.len() - 1],
        path: kern.path,
    })
}

struct Figures {
    user: f64,
    kernel: f64,
    ratio_min: f64,
    ratio_max: f64,
    path: String,
}

pub fn run(r: &Reporter, layout: &Layout, rt: &tokio::runtime::Runtime) {
    r.check("bench_4k_read", || {
        let f = measure(layout, rt)?;
        let ratio = f.user / f.kernel;
        r.bench("nvme_4k_read_userspace_iops", f.user, "reads/s");
        r.bench("nvme_4k_read_kernel_iops", f.kernel, "reads/s");
        r.bench("nvme_4k_read_ratio", ratio, "x");
        Ok(format!(
            "{READS} random 4 KiB reads per side at queue depth {QUEUE_DEPTH} in {ROUNDS} \
             alternating rounds: userspace {:.0}/s, kernel ({}, O_DIRECT) {:.0}/s, ratio \
             {ratio:.2} (rounds {:.2}..{:.2})",
            f.user, f.path, f.kernel, f.ratio_min, f.ratio_max
        ))
    });
}
