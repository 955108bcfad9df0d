//! Checks against QEMU's `edu` device (QEMU `docs/specs/edu.rst`): BAR registers through
//! mmap and through pread/pwrite, an MSI on an eventfd, Bus Master Enable, a DMA round
//! trip within its 28-bit DMA mask, and reset reported as unsupported.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use vpu_driver::io::{DeviceIo, DeviceIoExt, DmaBuffer, IoError};
use vpu_driver::vfio::{InterruptKind, VfioDevice, VfioOptions, IOVA_FLOOR, MSI_WINDOW};

use crate::util::{poll_until, sysfs, wait_eventfd};
use crate::{Layout, Reporter};

// edu's BAR0 registers.
/// Identification, `0xRRrr00ed` (major, minor version).
const EDU_IDENT: u64 = 0x00;
/// Card liveness check: reads return the bitwise inverse of what was written.
const EDU_LIVENESS: u64 = 0x04;
/// Factorial: write n, read n! once `EDU_STATUS_COMPUTING` clears.
const EDU_FACTORIAL: u64 = 0x08;
/// Status register.
const EDU_STATUS: u64 = 0x20;
/// Interrupt status: the OR of the values that raised it.
const EDU_IRQ_STATUS: u64 = 0x24;
/// Raise an interrupt with the written value.
const EDU_IRQ_RAISE: u64 = 0x60;
/// Acknowledge (clear) the written interrupt status bits.
const EDU_IRQ_ACK: u64 = 0x64;
/// DMA source, destination (64-bit) and byte count.
const EDU_DMA_SRC: u64 = 0x80;
const EDU_DMA_DST: u64 = 0x88;
const EDU_DMA_COUNT: u64 = 0x90;
/// DMA command register.
const EDU_DMA_CMD: u64 = 0x98;

const EDU_STATUS_COMPUTING: u32 = 0x01;
const EDU_DMA_START: u32 = 0x01;
/// Direction bit: set = from the device buffer to RAM.
const EDU_DMA_TO_RAM: u32 = 0x02;
const EDU_DMA_IRQ: u32 = 0x04;
/// Interrupt status value of a finished DMA.
const EDU_IRQ_DMA_DONE: u32 = 0x100;
/// Where edu's internal 4 KiB DMA buffer sits in its address space.
const EDU_BUFFER: u64 = 0x40000;
/// Bytes per transfer. QEMU 7.2's range check refuses a transfer that ends exactly at the
/// end of the 4 KiB buffer (and aborts QEMU), so transfers stay below it.
const EDU_DMA_LEN: usize = 2048;
/// edu's identification value in QEMU 7.2 (version 1.0).
const EDU_IDENT_1_0: u32 = 0x0100_00ed;
/// edu masks DMA addresses to 28 bits.
const EDU_DMA_BITS: u8 = 28;

const IRQ_TIMEOUT: Duration = Duration::from_secs(5);

fn options() -> VfioOptions {
    VfioOptions {
        dma_address_bits: EDU_DMA_BITS,
        ..VfioOptions::default()
    }
}

fn check_registers(dev: &VfioDevice) -> anyhow::Result<String> {
    let ident = dev.read32(0, EDU_IDENT)?;
    ensure!(ident == EDU_IDENT_1_0, "ident {ident:#010x}");
    for v in [0x1234_5678u32, 0, 0xffff_ffff, 0xa5a5_5a5a] {
        dev.write32(0, EDU_LIVENESS, v)?;
        let got = dev.read32(0, EDU_LIVENESS)?;
        ensure!(got == !v, "liveness {v:#x} read back {got:#x}");
    }
    dev.write32(0, EDU_FACTORIAL, 10)?;
    poll_until("factorial", Duration::from_secs(5), || {
        Ok((dev.read32(0, EDU_STATUS)? & EDU_STATUS_COMPUTING == 0).then_some(()))
    })?;
    let fact = dev.read32(0, EDU_FACTORIAL)?;
    ensure!(fact == 3_628_800, "10! read {fact}");
    // Out of range and misaligned accesses are refused, not performed.
    let size = dev.bar_size(0);
    ensure!(
        matches!(dev.read32(0, size), Err(IoError::RegisterOutOfRange { .. })),
        "read past the end of BAR0 was not refused"
    );
    ensure!(
        matches!(dev.read32(0, 2), Err(IoError::RegisterOutOfRange { .. })),
        "misaligned read was not refused"
    );
    ensure!(
        matches!(dev.read32(3, 0), Err(IoError::RegisterOutOfRange { .. })),
        "read of an absent BAR was not refused"
    );
    Ok(format!("ident={ident:#010x} 10!={fact} bar0={size:#x}"))
}

/// Raises an edu interrupt and waits for it on the eventfd.
fn raise_and_wait(
    dev: &VfioDevice,
    fd: &vmm_sys_util::eventfd::EventFd,
    value: u32,
) -> anyhow::Result<u64> {
    dev.write32(0, EDU_IRQ_RAISE, value)?;
    let n = wait_eventfd(fd, IRQ_TIMEOUT)?;
    let status = dev.read32(0, EDU_IRQ_STATUS)?;
    dev.write32(0, EDU_IRQ_ACK, status)?;
    ensure!(
        n == 0 || status & value == value,
        "irq status {status:#x}, raised {value:#x}"
    );
    Ok(n)
}

fn dma(
    dev: &Arc<dyn DeviceIo>,
    buf: &DmaBuffer,
    to_ram: bool,
    fd: &vmm_sys_util::eventfd::EventFd,
) -> anyhow::Result<()> {
    let (src, dst) = if to_ram {
        (EDU_BUFFER, buf.iova())
    } else {
        (buf.iova(), EDU_BUFFER)
    };
    dev.write64(0, EDU_DMA_SRC, src)?;
    dev.write64(0, EDU_DMA_DST, dst)?;
    dev.write64(0, EDU_DMA_COUNT, EDU_DMA_LEN as u64)?;
    let dir = if to_ram { EDU_DMA_TO_RAM } else { 0 };
    dev.write32(0, EDU_DMA_CMD, EDU_DMA_START | EDU_DMA_IRQ | dir)?;
    let n = wait_eventfd(fd, IRQ_TIMEOUT)?;
    ensure!(
        n > 0,
        "no interrupt for the DMA {}",
        if to_ram { "to RAM" } else { "from RAM" }
    );
    let status = dev.read32(0, EDU_IRQ_STATUS)?;
    dev.write32(0, EDU_IRQ_ACK, status)?;
    ensure!(
        status & EDU_IRQ_DMA_DONE != 0,
        "irq status {status:#x} after DMA"
    );
    ensure!(
        dev.read32(0, EDU_DMA_CMD)? & EDU_DMA_START == 0,
        "DMA still running"
    );
    Ok(())
}

pub fn run(r: &Reporter, layout: &Layout) {
    let mut dev: Option<Arc<VfioDevice>> = None;
    r.check("edu_open", || {
        let d = VfioDevice::open(&layout.edu, &options())?;
        let info = d.info().clone();
        ensure!(
            (info.vendor_id, info.device_id) == (0x1234, 0x11e8),
            "ids {info:?}"
        );
        ensure!(d.bus_master()?, "bus master enable not set after open");
        ensure!(d.bar_size(0) == 1 << 20, "bar0 size {:#x}", d.bar_size(0));
        ensure!(d.bar_mapped_bytes(0) > 0, "bar0 not mmapped");
        let ranges = d
            .iova_ranges()
            .context("the IOMMU reported no IOVA ranges")?
            .to_vec();
        for &(s, e) in &ranges {
            ensure!(
                e < MSI_WINDOW.0 || s > MSI_WINDOW.1,
                "valid range {s:#x}-{e:#x} covers the MSI window"
            );
        }
        let (msix, msi) = d.vector_counts();
        ensure!(
            msi >= 1 && d.max_interrupts() == msi,
            "msix {msix} msi {msi}"
        );
        dev = Some(d.clone());
        Ok(format!(
            "bar0 mmapped {:#x} of {:#x}, msi {msi}, msix {msix}, iova ranges {ranges:x?}",
            d.bar_mapped_bytes(0),
            d.bar_size(0)
        ))
    });
    let Some(d) = dev else { return };
    r.check("edu_bar_mmap", || check_registers(&d));

    let mut fds = Vec::new();
    r.check("edu_msi", || {
        fds = d.enable_interrupts(1)?;
        ensure!(
            d.interrupt_kind() == Some(InterruptKind::Msi),
            "kind {:?}",
            d.interrupt_kind()
        );
        ensure!(
            d.enable_interrupts(2).is_err(),
            "2 vectors on a 1-vector MSI capability"
        );
        fds = d.enable_interrupts(1)?;
        let mut got = 0;
        for i in 0..8u32 {
            let n = raise_and_wait(&d, &fds[0], 1 << i)?;
            ensure!(n > 0, "interrupt {i} not signalled");
            got += n;
        }
        Ok(format!("{got} interrupts on the eventfd"))
    });

    let io: Arc<dyn DeviceIo> = d.clone();
    r.check("edu_dma", || {
        let fd = fds.first().context("no interrupt vector")?;
        let out = io.alloc_dma(EDU_DMA_LEN)?;
        let back = io.alloc_dma(EDU_DMA_LEN)?;
        ensure!(
            out.iova() == IOVA_FLOOR,
            "first iova {:#x} is not the lowest",
            out.iova()
        );
        ensure!(
            back.iova() + back.len() as u64 <= 1 << EDU_DMA_BITS,
            "iova beyond 28 bits"
        );
        for round in 0..3u8 {
            let pattern: Vec<u8> = (0..EDU_DMA_LEN)
                .map(|i| {
                    (i as u8)
                        .wrapping_mul(7)
                        .wrapping_add(round.wrapping_mul(31))
                        ^ (i >> 8) as u8
                })
                .collect();
            ensure!(out.write(0, &pattern), "host write");
            back.zero();
            dma(&io, &out, false, fd)?;
            dma(&io, &back, true, fd)?;
            let mut got = vec![0u8; EDU_DMA_LEN];
            ensure!(back.read(0, &mut got), "host read");
            if let Some(i) = (0..EDU_DMA_LEN).find(|&i| got[i] != pattern[i]) {
                bail!(
                    "round {round}: byte {i} is {:#x}, wrote {:#x}",
                    got[i],
                    pattern[i]
                );
            }
        }
        let iovas = (out.iova(), back.iova());
        drop((out, back));
        ensure!(
            d.dma_mappings() == 0,
            "{} mappings left after the buffers dropped",
            d.dma_mappings()
        );
        Ok(format!(
            "3 x 2 KiB round trips byte-exact via iovas {:#x}, {:#x}",
            iovas.0, iovas.1
        ))
    });

    r.check("edu_bus_master", || {
        let fd = fds.first().context("no interrupt vector")?;
        d.set_bus_master(false)?;
        d.write32(0, EDU_IRQ_RAISE, 0x2)?;
        let without = wait_eventfd(fd, Duration::from_millis(300))?;
        let status = d.read32(0, EDU_IRQ_STATUS)?;
        d.write32(0, EDU_IRQ_ACK, status)?;
        d.set_bus_master(true)?;
        ensure!(without == 0, "an MSI arrived with bus master disabled");
        let with = raise_and_wait(&d, fd, 0x4)?;
        ensure!(with > 0, "no MSI after bus master was enabled again");
        Ok("MSI dropped without Bus Master Enable, delivered with it".into())
    });

    r.check("edu_reset_unsupported", || {
        let method =
            sysfs(&format!("/sys/bus/pci/devices/{}/reset_method", layout.edu)).unwrap_or_default();
        ensure!(
            method.is_empty(),
            "sysfs offers reset method {method:?} for edu"
        );
        ensure!(!d.reset_supported(), "backend claims a reset");
        match d.reset() {
            Err(IoError::ResetUnsupported { device }) => Ok(format!("reset refused: {device}")),
            other => bail!("reset returned {other:?}"),
        }
    });

    r.check("edu_disable_interrupts", || {
        d.disable_interrupts()?;
        ensure!(d.interrupt_kind().is_none(), "still enabled");
        d.write32(0, EDU_IRQ_RAISE, 0x8)?;
        let n = wait_eventfd(&fds[0], Duration::from_millis(300))?;
        let status = d.read32(0, EDU_IRQ_STATUS)?;
        d.write32(0, EDU_IRQ_ACK, status)?;
        ensure!(n == 0, "a disabled vector was signalled");
        Ok("no signal after disable".into())
    });
    drop((io, fds));
    drop(d);

    // Reopening proves the close released the group; without mmap every access goes
    // through pread/pwrite on the device fd.
    r.check("edu_pread_fallback", || {
        let opts = VfioOptions {
            mmap_bars: false,
            ..options()
        };
        let d = VfioDevice::open(&layout.edu, &opts)?;
        ensure!(d.bar_mapped_bytes(0) == 0, "bar0 mmapped although disabled");
        let detail = check_registers(&d)?;
        Ok(format!("reopened, registers via pread/pwrite: {detail}"))
    });
}
