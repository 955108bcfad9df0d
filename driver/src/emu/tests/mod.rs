//! Tests of the emulated card, driven only through `DeviceIo` with a small host-side queue
//! builder (the driver's own transport lives in `nvme`).
#![allow(clippy::unwrap_used)]

mod av1;
mod commands;
mod encode;
mod faults;
mod robustness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vpu_ffi::*;

use super::dma::{as_bytes, from_bytes};
use super::{EmuConfig, EmulatedCard};
use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer};

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);
/// PCI command register and its Bus Master Enable bit.
const PCI_COMMAND: u32 = 0x04;
const PCI_COMMAND_MEMORY_AND_BUS_MASTER: u16 = 0b110;

/// The status field of a completion (phase stripped).
pub(super) fn status(cqe: &vpu_cqe) -> (u32, u32) {
    let s = u32::from(cqe.status);
    (
        (s >> VPU_CQE_SCT_SHIFT) & VPU_CQE_SCT_MASK,
        (s >> VPU_CQE_SC_SHIFT) & VPU_CQE_SC_MASK,
    )
}

pub(super) const OK: (u32, u32) = (VPU_SCT_GENERIC, VPU_SC_SUCCESS);

/// One submission/completion queue pair in host memory.
pub(super) struct QueuePair {
    pub qid: u16,
    pub sq: DmaBuffer,
    pub cq: DmaBuffer,
    pub size: u16,
    pub sq_tail: u16,
    pub cq_head: u16,
    pub phase: bool,
    pub next_cid: u16,
}

impl QueuePair {
    fn new(io: &Arc<dyn DeviceIo>, qid: u16, size: u16) -> Self {
        Self {
            qid,
            sq: io.alloc_dma(usize::from(size) * 64).unwrap(),
            cq: io.alloc_dma(usize::from(size) * 16).unwrap(),
            size,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            next_cid: 1,
        }
    }

    /// Writes `sqe` (with a fresh cid) at the tail and rings the doorbell; returns the cid.
    pub fn submit(&mut self, io: &Arc<dyn DeviceIo>, sqe: vpu_sqe) -> u16 {
        let cid = self.queue(sqe);
        self.ring(io);
        cid
    }

    /// Writes `sqe` (with a fresh cid) at the tail without ringing; returns the cid.
    pub fn queue(&mut self, mut sqe: vpu_sqe) -> u16 {
        sqe.cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        assert!(self
            .sq
            .write(usize::from(self.sq_tail) * 64, as_bytes(&sqe)));
        self.sq_tail = (self.sq_tail + 1) % self.size;
        sqe.cid
    }

    /// Rings the SQ tail doorbell with the current tail.
    pub fn ring(&self, io: &Arc<dyn DeviceIo>) {
        let db = VPU_REG_DBS + 2 * u32::from(self.qid) * 4;
        io.write32(0, u64::from(db), u32::from(self.sq_tail))
            .unwrap();
    }

    /// The next completion if one is posted, without releasing it.
    pub fn peek(&self) -> Option<vpu_cqe> {
        let mut raw = [0u8; 16];
        assert!(self.cq.read(usize::from(self.cq_head) * 16, &mut raw));
        let cqe: vpu_cqe = from_bytes(&raw);
        let phase = cqe.status & VPU_CQE_PHASE as u16 != 0;
        (phase == self.phase).then_some(cqe)
    }

    /// Consumes the next completion without ringing the CQ head doorbell.
    pub fn take(&mut self) -> Option<vpu_cqe> {
        let cqe = self.peek()?;
        self.cq_head = (self.cq_head + 1) % self.size;
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        Some(cqe)
    }

    pub fn release(&self, io: &Arc<dyn DeviceIo>) {
        let db = VPU_REG_DBS + (2 * u32::from(self.qid) + 1) * 4;
        io.write32(0, u64::from(db), u32::from(self.cq_head))
            .unwrap();
    }

    /// Waits up to `timeout` for the next completion, consumes and releases it.
    pub fn wait(&mut self, io: &Arc<dyn DeviceIo>, timeout: Duration) -> Option<vpu_cqe> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(cqe) = self.take() {
                self.release(io);
                return Some(cqe);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A host with an enabled controller and its admin queue.
pub(super) struct Host {
    pub card: Arc<EmulatedCard>,
    pub io: Arc<dyn DeviceIo>,
    pub irqs: Vec<Arc<EventFd>>,
    pub admin: QueuePair,
}

pub(super) fn cmd(opcode: u32) -> vpu_sqe {
    vpu_sqe {
        opcode: opcode as u8,
        ..Default::default()
    }
}

pub(super) fn set_bus_master(io: &Arc<dyn DeviceIo>, on: bool) {
    let v: u16 = if on {
        PCI_COMMAND_MEMORY_AND_BUS_MASTER
    } else {
        0
    };
    io.config_write(PCI_COMMAND, &v.to_le_bytes()).unwrap();
}

pub(super) fn wait_ready(io: &Arc<dyn DeviceIo>, ready: bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let csts = io.read32(0, u64::from(VPU_REG_CSTS)).unwrap();
        if (csts & VPU_CSTS_RDY != 0) == ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

impl Host {
    pub fn new(config: EmuConfig) -> Self {
        Self::with_bus_master(config, true)
    }

    pub fn with_bus_master(config: EmuConfig, bme: bool) -> Self {
        let card = EmulatedCard::new(config).unwrap();
        let io: Arc<dyn DeviceIo> = card.clone();
        set_bus_master(&io, bme);
        let irqs = io.enable_interrupts(4).unwrap();
        let admin = QueuePair::new(&io, 0, 16);
        let mut host = Host {
            card,
            io,
            irqs,
            admin,
        };
        host.enable();
        host
    }

    /// Programs the admin queue and sets CC.EN; waits for CSTS.RDY.
    pub fn enable(&mut self) {
        let io = &self.io;
        self.admin = QueuePair::new(io, 0, 16);
        let aqa = 15 | (15 << VPU_AQA_ACQS_SHIFT);
        io.write32(0, u64::from(VPU_REG_AQA), aqa).unwrap();
        io.write64(0, u64::from(VPU_REG_ASQ), self.admin.sq.iova())
            .unwrap();
        io.write64(0, u64::from(VPU_REG_ACQ), self.admin.cq.iova())
            .unwrap();
        let cc = VPU_CC_EN
            | (VPU_SQES_LOG2 << VPU_CC_IOSQES_SHIFT)
            | (VPU_CQES_LOG2 << VPU_CC_IOCQES_SHIFT);
        io.write32(0, u64::from(VPU_REG_CC), cc).unwrap();
        assert!(wait_ready(io, true), "CSTS.RDY did not rise");
    }

    pub fn admin(&mut self, sqe: vpu_sqe) -> vpu_cqe {
        let cid = self.admin.submit(&self.io, sqe);
        let cqe = self
            .admin
            .wait(&self.io, TIMEOUT)
            .expect("admin completion");
        assert_eq!({ cqe.cid }, cid);
        cqe
    }

    /// Creates I/O queue pair `qid` with `size` entries on interrupt vector `iv`.
    pub fn io_queue(&mut self, qid: u16, size: u16, iv: u16) -> QueuePair {
        let q = QueuePair::new(&self.io, qid, size);
        let mut c = cmd(VPU_ADMIN_CREATE_CQ);
        c.prp1 = q.cq.iova();
        c.cdw10 = u32::from(qid) | (u32::from(size - 1) << VPU_QUEUE_QSIZE_SHIFT);
        c.cdw11 = VPU_QUEUE_PC | VPU_CQ_IEN | (u32::from(iv) << VPU_CQ_IV_SHIFT);
        assert_eq!(status(&self.admin(c)), OK);
        let mut c = cmd(VPU_ADMIN_CREATE_SQ);
        c.prp1 = q.sq.iova();
        c.cdw10 = u32::from(qid) | (u32::from(size - 1) << VPU_QUEUE_QSIZE_SHIFT);
        c.cdw11 = VPU_QUEUE_PC | (u32::from(qid) << VPU_SQ_CQID_SHIFT);
        assert_eq!(status(&self.admin(c)), OK);
        q
    }

    /// Reads a log page into a fresh buffer.
    pub fn log(&mut self, lid: u32, lsi: u32, len: usize) -> (vpu_cqe, DmaBuffer) {
        let buf = self.io.alloc_dma(len).unwrap();
        let numd = (len / 4 - 1) as u32;
        let mut c = cmd(VPU_ADMIN_GET_LOG_PAGE);
        c.prp1 = buf.iova();
        c.cdw10 = lid | ((numd & 0xffff) << VPU_LOG_NUMDL_SHIFT);
        c.cdw11 = (numd >> 16) | (lsi << VPU_LOG_LSI_SHIFT);
        (self.admin(c), buf)
    }

    pub fn csts(&self) -> u32 {
        self.io.read32(0, u64::from(VPU_REG_CSTS)).unwrap()
    }
}

/// Session parameters with tight strides.
pub(super) fn params(width: u16, height: u16, nv12: bool) -> vpu_session_params {
    vpu_session_params {
        codec: VPU_CODEC_H264 as u8,
        pixel_format: if nv12 {
            VPU_PIXFMT_NV12
        } else {
            VPU_PIXFMT_I420
        } as u8,
        width,
        height,
        fps_num: 30,
        fps_den: 1,
        stride_y: u32::from(width),
        stride_uv: if nv12 {
            u32::from(width)
        } else {
            u32::from(width) / 2
        },
        rate_control: VPU_RC_CBR as u8,
        bitrate: 1_000_000,
        gop: 60,
        engine_hint: VPU_ENGINE_ANY as u16,
        ..Default::default()
    }
}

impl Host {
    /// Create Session; the completion.
    pub fn create_session_raw(&mut self, p: &vpu_session_params) -> vpu_cqe {
        let buf = self.io.alloc_dma(4096).unwrap();
        assert!(buf.write(0, as_bytes(p)));
        let mut c = cmd(VPU_ADMIN_CREATE_SESSION);
        c.prp1 = buf.iova();
        self.admin(c)
    }

    pub fn create_session(&mut self, p: &vpu_session_params) -> u32 {
        let cqe = self.create_session_raw(p);
        assert_eq!(status(&cqe), OK);
        cqe.dw0
    }
}

#[test]
fn enable_handshake_and_registers() {
    let card = EmulatedCard::new(EmuConfig::default()).unwrap();
    let io: Arc<dyn DeviceIo> = card.clone();
    let cap = io.read64(0, u64::from(VPU_REG_CAP)).unwrap();
    assert_eq!(cap & u64::from(VPU_CAP_MQES_MASK), 1023);
    assert_ne!(cap & u64::from(VPU_CAP_CQR), 0);
    assert_ne!(cap & VPU_CAP_CSS_NVM, 0);
    assert_eq!(
        (cap >> VPU_CAP_DSTRD_SHIFT) & u64::from(VPU_CAP_DSTRD_MASK),
        0
    );
    assert_eq!(
        (cap >> VPU_CAP_MPSMIN_SHIFT) & u64::from(VPU_CAP_MPSMIN_MASK),
        0
    );
    assert!((cap >> VPU_CAP_TO_SHIFT) & u64::from(VPU_CAP_TO_MASK) > 0);
    assert_eq!(
        io.read32(0, u64::from(VPU_REG_VS)).unwrap(),
        VPU_NVME_VERSION_1_4
    );
    assert_eq!(
        io.read32(0, u64::from(VPU_REG_CSTS)).unwrap() & VPU_CSTS_RDY,
        0
    );
    // PCI identity.
    let mut id = [0u8; 12];
    io.config_read(0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), VPU_PCI_VENDOR_ID as u16);
    assert_eq!(u16::from_le_bytes([id[2], id[3]]), VPU_PCI_DEVICE_ID as u16);
    assert_eq!(
        u32::from_le_bytes([id[9], id[10], id[11], 0]),
        VPU_PCI_CLASS_NVME
    );
    // Out-of-range register access is an error, not a panic.
    assert!(io.read32(0, u64::from(VPU_BAR0_SIZE)).is_err());
    assert!(io.read32(1, 0).is_err());
    drop(io);

    let mut host = Host::new(EmuConfig::default());
    assert_ne!(host.csts() & VPU_CSTS_RDY, 0);
    // Shutdown notification.
    let cc = host.io.read32(0, u64::from(VPU_REG_CC)).unwrap();
    host.io
        .write32(
            0,
            u64::from(VPU_REG_CC),
            cc | (VPU_CC_SHN_NORMAL << VPU_CC_SHN_SHIFT),
        )
        .unwrap();
    assert_eq!(
        (host.csts() >> VPU_CSTS_SHST_SHIFT) & VPU_CSTS_SHST_MASK,
        VPU_CSTS_SHST_COMPLETE
    );
    // Disable: RDY drops; enable again works.
    host.io.write32(0, u64::from(VPU_REG_CC), 0).unwrap();
    assert!(wait_ready(&host.io, false));
    host.enable();
    assert_eq!(
        status(&host.admin(cmd(VPU_ADMIN_IDENTIFY))),
        (VPU_SCT_GENERIC, VPU_SC_INVALID_FIELD)
    );
}

#[test]
fn invalid_enable_sets_fatal_status() {
    let card = EmulatedCard::new(EmuConfig::default()).unwrap();
    let io: Arc<dyn DeviceIo> = card.clone();
    // No admin queue programmed.
    io.write32(0, u64::from(VPU_REG_CC), VPU_CC_EN).unwrap();
    let csts = io.read32(0, u64::from(VPU_REG_CSTS)).unwrap();
    assert_ne!(csts & VPU_CSTS_CFS, 0);
    assert_eq!(csts & VPU_CSTS_RDY, 0);
    io.write32(0, u64::from(VPU_REG_CC), 0).unwrap();
    assert_eq!(
        io.read32(0, u64::from(VPU_REG_CSTS)).unwrap() & VPU_CSTS_CFS,
        0
    );
}
