//! A queue pair whose device is the caller: the entry point the completion-queue fuzz
//! target (`fuzz/fuzz_targets/completion_queue.rs`) drives.
//!
//! [`HostileQueue`] is the transport's real [`QueuePair`] over a passive device whose
//! registers only take doorbell writes and whose DMA is plain host memory, so the caller
//! can write any completion entry into the completion queue, as a broken or malicious
//! device would, and watch what the transport does with it. It is not part of the
//! driver's API: nothing else may depend on it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::oneshot::error::TryRecvError;
use vmm_sys_util::eventfd::EventFd;
use vpu_ffi::VPU_CQE_SIZE;

use crate::io::{
    BackendKind, DeviceInfo, DeviceIo, DeviceIoExt, DmaBuffer, DmaDirection, HostRegion, IoError,
};

use super::command::{Command, Completion};
use super::error::NvmeError;
use super::metrics::{NvmeMetrics, NvmeMetricsSnapshot};
use super::prp::PrpPagePool;
use super::queue::{QueuePair, Waiter};

/// A device that does nothing by itself: register reads are zero, writes are accepted,
/// DMA addresses are handed out in order and never reused.
#[derive(Debug)]
struct PassiveDevice {
    info: DeviceInfo,
    next_iova: AtomicU64,
}

impl DeviceIo for PassiveDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn read32(&self, _bar: u32, _offset: u64) -> Result<u32, IoError> {
        Ok(0)
    }
    fn write32(&self, _bar: u32, _offset: u64, _value: u32) -> Result<(), IoError> {
        Ok(())
    }
    fn config_read(&self, _offset: u32, buf: &mut [u8]) -> Result<(), IoError> {
        buf.fill(0);
        Ok(())
    }
    fn config_write(&self, _offset: u32, _buf: &[u8]) -> Result<(), IoError> {
        Ok(())
    }
    fn dma_map(&self, region: &Arc<HostRegion>, _d: DmaDirection) -> Result<u64, IoError> {
        Ok(self
            .next_iova
            .fetch_add(region.len() as u64, Ordering::Relaxed))
    }
    fn dma_unmap(&self, _iova: u64, _len: usize) -> Result<(), IoError> {
        Ok(())
    }
    fn max_interrupts(&self) -> u32 {
        0
    }
    fn enable_interrupts(&self, _count: u32) -> Result<Vec<Arc<EventFd>>, IoError> {
        Ok(Vec::new())
    }
    fn disable_interrupts(&self) -> Result<(), IoError> {
        Ok(())
    }
    fn reset(&self) -> Result<(), IoError> {
        Err(IoError::ResetUnsupported {
            device: self.info.name.clone(),
        })
    }
}

/// What a submitter has heard about its command so far.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing yet.
    Waiting,
    /// The transport's answer: a validated completion, or why there will be none.
    Done(Result<Completion, NvmeError>),
    /// The transport dropped the submitter's channel without answering.
    Dropped,
}

/// The submitter's side of one command.
#[derive(Debug)]
pub struct Submitted {
    waiter: Waiter,
}

impl Submitted {
    /// Takes the answer if there is one (at most once; later calls see `Dropped`).
    pub fn poll(&mut self) -> Outcome {
        match self.waiter.try_recv() {
            Ok(result) => Outcome::Done(result),
            Err(TryRecvError::Empty) => Outcome::Waiting,
            Err(TryRecvError::Closed) => Outcome::Dropped,
        }
    }
}

/// One I/O queue pair of the transport with the caller playing the device.
#[derive(Debug)]
pub struct HostileQueue {
    io: Arc<dyn DeviceIo>,
    queue: QueuePair,
    metrics: Arc<NvmeMetrics>,
}

impl HostileQueue {
    /// A queue pair `qid` of `depth` entries (at least 2; `depth - 1` commands in flight).
    pub fn new(qid: u16, depth: u16) -> Result<Self, NvmeError> {
        let io: Arc<dyn DeviceIo> = Arc::new(PassiveDevice {
            info: DeviceInfo {
                name: "hostile".into(),
                backend: BackendKind::Emulated,
                pci_address: "0000:00:00.0".into(),
                vendor_id: 0,
                device_id: 0,
                class_code: 0,
            },
            next_iova: AtomicU64::new(0x10_0000),
        });
        let metrics = Arc::new(NvmeMetrics::default());
        let queue = QueuePair::new(
            &io,
            qid,
            depth,
            0,
            Arc::clone(&metrics),
            PrpPagePool::new(Arc::clone(&io)),
        )?;
        Ok(Self { io, queue, metrics })
    }

    /// Entries in each queue.
    pub fn depth(&self) -> u16 {
        self.queue.depth
    }

    /// Allocates a data buffer the device "can reach".
    pub fn alloc(&self, len: usize) -> Result<DmaBuffer, IoError> {
        self.io.alloc_dma(len)
    }

    /// Submits `cmd` if a slot is free (`None` when the queue is full and a real submitter
    /// would wait). Returns the command id and the submitter's side.
    pub fn try_submit(&self, cmd: &Command) -> Option<Result<(u16, Submitted), NvmeError>> {
        let mut fut = std::pin::pin!(self.queue.submit(cmd));
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => Some(r.map(|(cid, waiter)| (cid, Submitted { waiter }))),
            Poll::Pending => None,
        }
    }

    /// Writes `entry` into completion queue slot `slot` (modulo the depth), as the device.
    pub fn post(&self, slot: u16, entry: &[u8; VPU_CQE_SIZE as usize]) {
        self.queue.device_post(slot % self.queue.depth, entry);
    }

    /// Runs the transport's completion processing once; returns the entries consumed.
    pub fn process_completions(&self) -> usize {
        self.queue.process_completions()
    }

    /// Commands the transport still considers in flight (their memory stays mapped).
    pub fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }

    /// Stops waiting for `cid`, as a timed-out submitter does.
    pub fn abandon(&self, cid: u16) -> bool {
        self.queue.abandon(cid)
    }

    /// Fails every command in flight, as a controller reset does, and releases their
    /// memory (the device is disabled).
    pub fn kill(&self) {
        self.queue.kill(true);
    }

    /// The transport's counters.
    pub fn metrics(&self) -> NvmeMetricsSnapshot {
        self.metrics.snapshot()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use vpu_ffi::VPU_CQE_PHASE;

    use super::*;

    fn entry(cid: u16, sq_id: u16, dw0: u32) -> [u8; VPU_CQE_SIZE as usize] {
        let mut b = [0u8; VPU_CQE_SIZE as usize];
        b[0..4].copy_from_slice(&dw0.to_le_bytes());
        b[10..12].copy_from_slice(&sq_id.to_le_bytes());
        b[12..14].copy_from_slice(&cid.to_le_bytes());
        b[14..16].copy_from_slice(&(VPU_CQE_PHASE as u16).to_le_bytes());
        b
    }

    #[test]
    fn the_caller_plays_the_device() {
        let q = HostileQueue::new(1, 2).unwrap();
        let (cid, mut a) = q.try_submit(&Command::new(0x80)).unwrap().unwrap();
        // Depth 2 holds one command; a second submitter would wait.
        assert!(q.try_submit(&Command::new(0x80)).is_none());
        assert!(matches!(a.poll(), Outcome::Waiting));
        // Wrong queue id: the submitter hears of it, the command stays in flight.
        q.post(0, &entry(cid, 7, 0));
        assert_eq!(q.process_completions(), 1);
        assert!(matches!(
            a.poll(),
            Outcome::Done(Err(NvmeError::DeviceProtocol { .. }))
        ));
        assert_eq!(q.in_flight(), 1);
        // A consistent completion frees it (late: nobody waits any more).
        q.post(1, &entry(cid, 1, 42));
        assert_eq!(q.process_completions(), 1);
        assert_eq!(q.in_flight(), 0);
        let m = q.metrics();
        assert_eq!((m.protocol_errors, m.late_completions), (1, 1));
        let (cid, mut b) = q.try_submit(&Command::new(0x80)).unwrap().unwrap();
        q.kill();
        assert!(matches!(
            b.poll(),
            Outcome::Done(Err(NvmeError::Reset { .. }))
        ));
        assert!(q.try_submit(&Command::new(0x80)).unwrap().is_err());
        assert!(!q.abandon(cid));
    }
}
