//! Checks against QEMU's NVMe controller through the driver's own NVMe transport over
//! VFIO: function reset, bring-up on MSI-X, Identify, Set/Get Features, 64 MiB of
//! patterned data through two I/O queue pairs with PRP lists and many commands in
//! flight, a command aimed at an unmapped IOVA, controller reset and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use vpu_driver::io::{DeviceIo, DeviceIoExt, DmaBuffer, IoError};
use vpu_driver::nvme::{Command, Controller, ControllerOptions, NvmeError};
use vpu_driver::vfio::{InterruptKind, VfioDevice, VfioOptions, IOVA_FLOOR};
use vpu_ffi::{
    VPU_ADMIN_GET_FEATURES, VPU_ADMIN_SET_FEATURES, VPU_CC_EN, VPU_CC_IOCQES_SHIFT,
    VPU_CC_IOSQES_SHIFT, VPU_CQES_LOG2, VPU_CSTS_RDY, VPU_FEATURE_NUMBER_OF_QUEUES,
    VPU_LBAF_LBADS_MASK, VPU_LBAF_LBADS_SHIFT, VPU_NUM_QUEUES_NCQR_SHIFT, VPU_NVME_VERSION_1_4,
    VPU_NVM_READ, VPU_REG_ACQ, VPU_REG_AQA, VPU_REG_ASQ, VPU_REG_CC, VPU_REG_CSTS, VPU_REG_VS,
    VPU_SQES_LOG2,
};

use crate::util::{poll_until, sysfs};
use crate::{Layout, Reporter};

/// QEMU's NVMe controller: Red Hat's vendor id.
const QEMU_NVME_VID: u16 = 0x1b36;
/// Set/Get Features: Temperature Threshold (NVMe 1.4 §5.21.1.4); TMPTH in bits 15:0.
const FEATURE_TEMPERATURE_THRESHOLD: u32 = 0x04;
/// The namespace QEMU's controller exposes.
const NSID: u32 = 1;
/// Bytes moved by the data check.
const DATA_BYTES: usize = 64 << 20;
/// Bytes per command: 256 KiB needs a PRP list (more than two pages).
const CHUNK: usize = 256 << 10;
/// Commands kept in flight per I/O queue.
const IN_FLIGHT_PER_QUEUE: usize = 16;
/// An IOVA below the allocator's floor: never mapped.
const UNMAPPED_IOVA: u64 = IOVA_FLOOR - 0x1000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The pattern word at byte offset `at` (8-byte aligned) of pass `seed`.
fn pattern_word(at: u64, seed: u64) -> u64 {
    (at / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed ^ (at << 17)
}

fn fill(buf: &DmaBuffer, offset: usize, len: usize, seed: u64) -> anyhow::Result<()> {
    let mut bytes = vec![0u8; len];
    for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
        let at = (offset + i * 8) as u64;
        w.copy_from_slice(&pattern_word(at, seed).to_le_bytes());
    }
    ensure!(buf.write(offset, &bytes), "host write of the pattern");
    Ok(())
}

fn verify(buf: &DmaBuffer, offset: usize, len: usize, seed: u64) -> anyhow::Result<()> {
    let mut bytes = vec![0u8; len];
    ensure!(buf.read(offset, &mut bytes), "host read");
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        let at = (offset + i * 8) as u64;
        let want = pattern_word(at, seed);
        let got = u64::from_le_bytes(w.try_into()?);
        if got != want {
            bail!("byte offset {at:#x}: read {got:#018x}, wrote {want:#018x}");
        }
    }
    Ok(())
}

/// The namespace's logical block size.
async fn block_size(ctrl: &Controller) -> anyhow::Result<usize> {
    let ns = ctrl.identify_namespace(NSID).await?;
    let lbaf = { ns.lbaf }[usize::from(ns.flbas & 0xf)];
    Ok(1 << ((lbaf >> VPU_LBAF_LBADS_SHIFT) & VPU_LBAF_LBADS_MASK))
}

/// Moves `DATA_BYTES` between `buf` and the namespace from LBA 0, `IN_FLIGHT_PER_QUEUE`
/// commands per queue at once. Returns the most commands seen in flight together.
async fn transfer(
    ctrl: &Arc<Controller>,
    buf: &DmaBuffer,
    block: usize,
    write: bool,
) -> anyhow::Result<usize> {
    let queues = ctrl.io_queue_count();
    let chunks = DATA_BYTES / CHUNK;
    let next = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..queues * IN_FLIGHT_PER_QUEUE {
        let (ctrl, buf) = (Arc::clone(ctrl), buf.clone());
        let (next, in_flight, peak) = (next.clone(), in_flight.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let chunk = next.fetch_add(1, Ordering::Relaxed);
                if chunk >= chunks {
                    return Ok::<_, NvmeError>(());
                }
                let offset = chunk * CHUNK;
                let slba = (offset / block) as u64;
                let blocks = (CHUNK / block) as u16;
                let queue = worker % queues;
                let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                let r = if write {
                    ctrl.nvm_write(queue, NSID, slba, blocks, &buf, offset, CHUNK, TIMEOUT)
                        .await
                } else {
                    ctrl.nvm_read(queue, NSID, slba, blocks, &buf, offset, CHUNK, TIMEOUT)
                        .await
                };
                in_flight.fetch_sub(1, Ordering::Relaxed);
                r?;
            }
        }));
    }
    for t in tasks {
        t.await.context("transfer task")??;
    }
    Ok(peak.load(Ordering::Relaxed))
}

/// Reads the kernel log for DMA remapping faults of `device` (`DD:BB.F` form).
fn dmar_faults(device: &str) -> Vec<String> {
    let short = device.strip_prefix("0000:").unwrap_or(device);
    let Ok(log) = std::process::Command::new("/bin/dmesg").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&log.stdout)
        .lines()
        .filter(|l| l.contains("DMAR") && l.contains(short) && l.contains("fault addr"))
        .map(str::to_owned)
        .collect()
}

struct Nvme {
    dev: Arc<VfioDevice>,
    io: Arc<dyn DeviceIo>,
    ctrl: Option<Arc<Controller>>,
    block: usize,
}

pub fn run(r: &Reporter, layout: &Layout, rt: &tokio::runtime::Runtime) {
    let mut state: Option<Nvme> = None;
    r.check("nvme_open", || {
        let dev = VfioDevice::open(&layout.nvme, &VfioOptions::default())?;
        let vs = dev.read32(0, u64::from(VPU_REG_VS))?;
        ensure!(vs == VPU_NVME_VERSION_1_4, "VS {vs:#x}");
        let (msix, msi) = dev.vector_counts();
        ensure!(msix >= 3, "{msix} MSI-X vectors");
        let detail = format!(
            "VS {vs:#x}, MSI-X {msix}, MSI {msi}, bar0 {:#x} ({:#x} mmapped)",
            dev.bar_size(0),
            dev.bar_mapped_bytes(0)
        );
        let io: Arc<dyn DeviceIo> = dev.clone();
        state = Some(Nvme {
            dev,
            io,
            ctrl: None,
            block: 512,
        });
        Ok(detail)
    });
    let Some(mut s) = state else { return };

    r.check("nvme_function_reset", || {
        let method = sysfs(&format!(
            "/sys/bus/pci/devices/{}/reset_method",
            layout.nvme
        ))
        .unwrap_or_default();
        ensure!(
            s.dev.reset_supported() && !method.is_empty(),
            "reset supported: backend {}, sysfs methods {method:?}",
            s.dev.reset_supported()
        );
        // Enable the controller by hand (admin queues in two mapped pages), then reset
        // the function: it must come back disabled.
        let queues = s.io.alloc_dma(2 * 4096)?;
        let aqa = 0x000f_000f;
        s.dev.write32(0, u64::from(VPU_REG_AQA), aqa)?;
        s.dev.write64(0, u64::from(VPU_REG_ASQ), queues.iova())?;
        s.dev
            .write64(0, u64::from(VPU_REG_ACQ), queues.iova() + 4096)?;
        let cc_enable = (VPU_SQES_LOG2 << VPU_CC_IOSQES_SHIFT)
            | (VPU_CQES_LOG2 << VPU_CC_IOCQES_SHIFT)
            | VPU_CC_EN;
        s.dev.write32(0, u64::from(VPU_REG_CC), cc_enable)?;
        poll_until("CSTS.RDY", Duration::from_secs(5), || {
            Ok((s.dev.read32(0, u64::from(VPU_REG_CSTS))? & VPU_CSTS_RDY != 0).then_some(()))
        })?;
        s.io.reset()?;
        drop(queues);
        let cc = s.dev.read32(0, u64::from(VPU_REG_CC))?;
        let csts = s.dev.read32(0, u64::from(VPU_REG_CSTS))?;
        ensure!(
            cc & VPU_CC_EN == 0 && csts & VPU_CSTS_RDY == 0,
            "CC {cc:#x} CSTS {csts:#x} after reset"
        );
        ensure!(s.dev.bus_master()?, "bus master lost across the reset");
        Ok(format!(
            "{method} reset of an enabled controller: CC {cc:#x} CSTS {csts:#x} afterwards"
        ))
    });

    r.check("nvme_enable_msix", || {
        let opts = ControllerOptions {
            io_queues: 2,
            queue_depth: 64,
            ..ControllerOptions::default()
        };
        let ctrl = rt.block_on(Controller::enable(s.io.clone(), opts))?;
        ensure!(
            ctrl.io_queue_count() == 2,
            "{} I/O queues",
            ctrl.io_queue_count()
        );
        ensure!(!ctrl.polling(), "polling");
        ensure!(
            s.dev.interrupt_kind() == Some(InterruptKind::Msix),
            "interrupts {:?}",
            s.dev.interrupt_kind()
        );
        s.ctrl = Some(ctrl);
        Ok("2 I/O queue pairs, completions on 3 MSI-X vectors".into())
    });
    let Some(ctrl) = s.ctrl.clone() else { return };

    r.check("nvme_identify", || {
        let id = rt.block_on(ctrl.identify_controller())?;
        let vid = id.vid;
        ensure!(vid == QEMU_NVME_VID, "vid {vid:#x}");
        let sn = String::from_utf8_lossy(&{ id.sn }.map(|c| c as u8))
            .trim()
            .to_owned();
        let mn = String::from_utf8_lossy(&{ id.mn }.map(|c| c as u8))
            .trim()
            .to_owned();
        ensure!(sn == "vpu-vfio", "serial {sn:?}");
        ensure!(
            { id.vpu.magic } != *b"VPU1",
            "a plain NVMe controller claims the VPU block"
        );
        s.block = rt.block_on(block_size(&ctrl))?;
        let ns = rt.block_on(ctrl.identify_namespace(NSID))?;
        let bytes = ns.nsze * s.block as u64;
        ensure!(bytes >= DATA_BYTES as u64, "namespace of {bytes} bytes");
        Ok(format!(
            "{mn} sn {sn}, namespace {bytes} bytes in {}-byte blocks",
            s.block
        ))
    });

    r.check("nvme_set_features", || {
        let get = |fid| Command::new(VPU_ADMIN_GET_FEATURES).cdw10(fid);
        let nq = rt.block_on(ctrl.admin(get(VPU_FEATURE_NUMBER_OF_QUEUES), TIMEOUT))?;
        ensure!(
            nq.status.is_success(),
            "get number of queues: {}",
            nq.status
        );
        let (nsq, ncq) = (
            (nq.dw0 & 0xffff) + 1,
            (nq.dw0 >> VPU_NUM_QUEUES_NCQR_SHIFT) + 1,
        );
        ensure!(nsq >= 2 && ncq >= 2, "granted {nsq} SQs {ncq} CQs");
        let before = rt
            .block_on(ctrl.admin(get(FEATURE_TEMPERATURE_THRESHOLD), TIMEOUT))?
            .dw0;
        let want = 0x0150; // 336 K
        let set = Command::new(VPU_ADMIN_SET_FEATURES)
            .cdw10(FEATURE_TEMPERATURE_THRESHOLD)
            .cdw11(want);
        let c = rt.block_on(ctrl.admin(set, TIMEOUT))?;
        ensure!(
            c.status.is_success(),
            "set temperature threshold: {}",
            c.status
        );
        let after = rt
            .block_on(ctrl.admin(get(FEATURE_TEMPERATURE_THRESHOLD), TIMEOUT))?
            .dw0;
        ensure!(after & 0xffff == want, "threshold read back {after:#x}");
        Ok(format!(
            "queues {nsq}/{ncq}; temperature threshold {:#x} -> {:#x}",
            before & 0xffff,
            after & 0xffff
        ))
    });

    let mut data: Option<(DmaBuffer, DmaBuffer)> = None;
    r.check("nvme_data_64mib", || {
        let out = s.io.alloc_dma(DATA_BYTES)?;
        let back = s.io.alloc_dma(DATA_BYTES)?;
        fill(&out, 0, DATA_BYTES, 0x5eed)?;
        let t = Instant::now();
        let peak_w = rt.block_on(transfer(&ctrl, &out, s.block, true))?;
        let write_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let peak_r = rt.block_on(transfer(&ctrl, &back, s.block, false))?;
        let read_s = t.elapsed().as_secs_f64();
        verify(&back, 0, DATA_BYTES, 0x5eed)?;
        ensure!(
            peak_w >= 8 && peak_r >= 8,
            "at most {peak_w}/{peak_r} commands in flight"
        );
        let m = ctrl.metrics().snapshot();
        ensure!(
            m.lost_interrupts == 0 && m.protocol_errors == 0 && m.timeouts == 0,
            "{m:?}"
        );
        let mib = (DATA_BYTES >> 20) as f64;
        let detail = format!(
            "64 MiB written and read back byte-exact in {} commands of 256 KiB (PRP lists), \
             up to {peak_w}/{peak_r} in flight, write {:.1} MiB/s, read {:.1} MiB/s",
            DATA_BYTES / CHUNK * 2,
            mib / write_s,
            mib / read_s
        );
        data = Some((out, back));
        Ok(detail)
    });

    r.check("nvme_unmapped_iova", || {
        // 16 KiB: PRP1 names a mapped page, PRP2 a PRP list at an IOVA nothing is mapped
        // at. The controller's read of the list is blocked by the IOMMU.
        let target = s.io.alloc_dma(4 * 4096)?;
        let blocks = (4 * 4096 / s.block) as u32;
        let read = Command::new(VPU_NVM_READ)
            .nsid(NSID)
            .cdw12(blocks - 1)
            .raw_data_pointer(target.iova(), UNMAPPED_IOVA);
        let c = rt.block_on(ctrl.io(0, read, TIMEOUT))?;
        ensure!(
            !c.status.is_success(),
            "a PRP list at an unmapped IOVA was read"
        );
        let faults = dmar_faults(&layout.nvme);
        ensure!(
            !faults.is_empty(),
            "no DMAR fault logged for {}",
            layout.nvme
        );
        drop(target);
        // The queue keeps working.
        let buf = s.io.alloc_dma(CHUNK)?;
        rt.block_on(ctrl.nvm_read(
            0,
            NSID,
            0,
            (CHUNK / s.block) as u16,
            &buf,
            0,
            CHUNK,
            TIMEOUT,
        ))?;
        verify(&buf, 0, CHUNK, 0x5eed)?;
        let m = ctrl.metrics().snapshot();
        ensure!(m.protocol_errors == 0 && m.timeouts == 0, "{m:?}");
        Ok(format!(
            "completed with {} (dnr {}); kernel: {}; the next read on the queue is byte-exact",
            c.status,
            c.dnr,
            faults[0].trim()
        ))
    });

    r.check("nvme_controller_reset", || {
        rt.block_on(ctrl.reset())?;
        ensure!(
            ctrl.io_queue_count() == 2,
            "{} queues after reset",
            ctrl.io_queue_count()
        );
        let buf = s.io.alloc_dma(4 * CHUNK)?;
        for q in 0..2 {
            let off = q * 2 * CHUNK;
            rt.block_on(ctrl.nvm_read(
                q,
                NSID,
                (off / s.block) as u64,
                (2 * CHUNK / s.block) as u16,
                &buf,
                off,
                2 * CHUNK,
                TIMEOUT,
            ))?;
        }
        verify(&buf, 0, 4 * CHUNK, 0x5eed)?;
        let resets = ctrl.metrics().snapshot().resets;
        Ok(format!(
            "reset #{resets}, brought up again, reads on both queues byte-exact"
        ))
    });

    r.check("nvme_shutdown", || {
        rt.block_on(ctrl.shutdown())?;
        let csts = s.dev.read32(0, u64::from(VPU_REG_CSTS))?;
        ensure!(csts & VPU_CSTS_RDY == 0, "CSTS {csts:#x}");
        let after = rt.block_on(ctrl.io(0, Command::new(VPU_NVM_READ).nsid(NSID), TIMEOUT));
        ensure!(after.is_err(), "I/O accepted after shutdown: {after:?}");
        Ok(format!("shut down, CSTS {csts:#x}"))
    });

    r.check("nvme_teardown", || {
        drop(data.take());
        s.ctrl = None;
        drop(ctrl);
        // Queue and PRP list memory is released once the runtime has reaped the aborted
        // completion tasks that hold the queues.
        let mut left = s.dev.dma_mappings();
        for _ in 0..50 {
            if left == 0 {
                break;
            }
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
            left = s.dev.dma_mappings();
        }
        ensure!(left == 0, "{left} DMA mappings left");
        // Nothing else holds the device: it closes when the last handle here goes.
        let mut holders = Arc::strong_count(&s.dev);
        for _ in 0..250 {
            if holders == 2 {
                break;
            }
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
            holders = Arc::strong_count(&s.dev);
        }
        ensure!(
            holders == 2,
            "{} handles of the device left besides this check's",
            holders - 2
        );
        ensure!(
            matches!(
                s.io.dma_unmap(IOVA_FLOOR, 4096),
                Err(IoError::DmaUnmap { .. })
            ),
            "unmap of nothing accepted"
        );
        Ok("every DMA mapping released".into())
    });
}
