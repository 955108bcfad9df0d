//! Unit tests of the queue pair: command ids, and completions a hostile device writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;
use vpu_ffi::{VPU_CQE_PHASE, VPU_CQE_SIZE, VPU_SCT_VENDOR, VPU_SC_OUTPUT_TOO_SMALL};

use crate::io::{BackendKind, DeviceInfo, DeviceIo, DmaDirection, HostRegion, IoError};

use super::command::{Command, Status, VendorStatus};
use super::error::{NvmeError, ProtocolViolation};
use super::metrics::NvmeMetrics;
use super::prp::PrpPagePool;
use super::queue::QueuePair;

/// Registers that only remember doorbell writes; DMA is identity-mapped host memory.
#[derive(Debug)]
struct Doorbells {
    info: DeviceInfo,
    writes: Mutex<Vec<(u64, u32)>>,
    next_iova: AtomicU64,
}

impl Doorbells {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            info: DeviceInfo {
                name: "unit".into(),
                backend: BackendKind::Emulated,
                pci_address: "0000:00:00.0".into(),
                vendor_id: 0,
                device_id: 0,
                class_code: 0,
            },
            writes: Mutex::new(Vec::new()),
            next_iova: AtomicU64::new(0x10_0000),
        })
    }
}

impl DeviceIo for Doorbells {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn read32(&self, _bar: u32, _offset: u64) -> Result<u32, IoError> {
        Ok(0)
    }
    fn write32(&self, _bar: u32, offset: u64, value: u32) -> Result<(), IoError> {
        self.writes.lock().unwrap().push((offset, value));
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
            device: "unit".into(),
        })
    }
}

fn cqe(cid: u16, sq_id: u16, sq_head: u16, status: u16, phase: bool, dw0: u32) -> [u8; 16] {
    let mut b = [0u8; VPU_CQE_SIZE as usize];
    b[0..4].copy_from_slice(&dw0.to_le_bytes());
    b[8..10].copy_from_slice(&sq_head.to_le_bytes());
    b[10..12].copy_from_slice(&sq_id.to_le_bytes());
    b[12..14].copy_from_slice(&cid.to_le_bytes());
    let status = status | if phase { VPU_CQE_PHASE as u16 } else { 0 };
    b[14..16].copy_from_slice(&status.to_le_bytes());
    b
}

fn pair(depth: u16) -> (Arc<QueuePair>, Arc<NvmeMetrics>, Arc<Doorbells>) {
    let device = Doorbells::new();
    let io: Arc<dyn DeviceIo> = device.clone();
    let metrics = Arc::new(NvmeMetrics::default());
    let q = QueuePair::new(
        &io,
        3,
        depth,
        0,
        Arc::clone(&metrics),
        PrpPagePool::new(Arc::clone(&io)),
    )
    .unwrap();
    (Arc::new(q), metrics, device)
}

#[tokio::test]
async fn command_ids_are_unique_and_change_when_a_slot_is_reused() {
    let (q, _, _) = pair(8);
    let mut cids = Vec::new();
    let mut waiters = Vec::new();
    for _ in 0..7 {
        let (cid, rx) = q.submit(&Command::new(0x82)).await.unwrap();
        cids.push(cid);
        waiters.push(rx);
    }
    let mut sorted = cids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7);
    assert_eq!(q.in_flight(), 7);
    // A full queue makes the next submitter wait.
    let blocked = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        q.submit(&Command::new(0x82)),
    )
    .await;
    assert!(blocked.is_err());
    // Complete the first one; its slot comes back with a new id.
    q.device_post(0, &cqe(cids[0], 3, 1, 0, true, 0));
    assert_eq!(q.process_completions(), 1);
    assert!(waiters.remove(0).await.unwrap().is_ok());
    let (cid, _rx) = q.submit(&Command::new(0x82)).await.unwrap();
    assert!(!cids.contains(&cid));
    assert_eq!(cid & 0x7, cids[0] & 0x7);
}

#[tokio::test]
async fn hostile_completions_are_rejected_and_counted() {
    let (q, metrics, _) = pair(8);
    let (cid_a, mut rx_a) = q.submit(&Command::new(0x82)).await.unwrap();
    let (cid_b, mut rx_b) = q.submit(&Command::new(0x82)).await.unwrap();

    // An id nobody used, and an id of the right slot but an old generation.
    let stale = cid_a ^ (1 << 12);
    q.device_post(0, &cqe(0x7abc, 3, 1, 0, true, 0));
    q.device_post(1, &cqe(stale, 3, 1, 0, true, 0));
    assert_eq!(q.process_completions(), 2);
    assert_eq!(metrics.protocol_errors.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.stray_completions.load(Ordering::Relaxed), 2);
    assert!(rx_a.try_recv().is_err());
    assert!(rx_b.try_recv().is_err());

    // Right id, wrong submission queue: its submitter hears of it, nobody else does.
    q.device_post(2, &cqe(cid_a, 9, 1, 0, true, 0));
    q.process_completions();
    match rx_a.try_recv().unwrap() {
        Err(NvmeError::DeviceProtocol {
            violation:
                ProtocolViolation::SqIdMismatch {
                    expected: 3,
                    got: 9,
                    ..
                },
            ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(rx_b.try_recv().is_err());
    // Its memory stays reserved until a consistent completion.
    assert_eq!(q.in_flight(), 2);

    // Head outside the queue.
    q.device_post(3, &cqe(cid_b, 3, 200, 0, true, 0));
    q.process_completions();
    assert!(matches!(
        rx_b.try_recv().unwrap(),
        Err(NvmeError::DeviceProtocol {
            violation: ProtocolViolation::SqHeadOutOfRange { sq_head: 200, .. },
            ..
        })
    ));
    assert_eq!(metrics.protocol_errors.load(Ordering::Relaxed), 4);
    // Those two named commands in flight, which failed: not stray.
    assert_eq!(metrics.stray_completions.load(Ordering::Relaxed), 2);

    // The consistent completions finally release both; nobody is woken twice.
    q.device_post(4, &cqe(cid_a, 3, 2, 0, true, 0));
    q.device_post(5, &cqe(cid_b, 3, 2, 0, true, 0));
    assert_eq!(q.process_completions(), 2);
    assert_eq!(q.in_flight(), 0);
    assert_eq!(metrics.late_completions.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn stale_phase_entries_are_not_consumed_and_status_is_typed() {
    let (q, _, io) = pair(4);
    let (cid, rx) = q.submit(&Command::new(0x80)).await.unwrap();
    // Phase 0 is last round's entry: not new.
    q.device_post(0, &cqe(cid, 3, 1, 0, false, 0));
    assert_eq!(q.process_completions(), 0);
    let vendor = ((VPU_SCT_VENDOR << 9) | (VPU_SC_OUTPUT_TOO_SMALL << 1)) as u16;
    q.device_post(0, &cqe(cid, 3, 1, vendor, true, 0));
    assert_eq!(q.process_completions(), 1);
    let c = rx.await.unwrap().unwrap();
    assert_eq!(c.status, Status::Vendor(VendorStatus::OutputTooSmall));
    // Doorbells: SQ 3 tail (0x1000 + 2*3*4), then CQ 3 head (next stride).
    let writes = io.writes.lock().unwrap().clone();
    assert_eq!(writes, vec![(0x1018, 1), (0x101c, 1)]);
}

#[tokio::test]
async fn a_hostile_device_cannot_make_the_reader_loop_forever() {
    let (q, metrics, _) = pair(4);
    // Every entry carries the current phase but garbage ids.
    for slot in 0..4 {
        q.device_post(slot, &cqe(0x1234 + slot, 3, 0, 0, true, 0));
    }
    assert_eq!(q.process_completions(), 4);
    assert_eq!(metrics.protocol_errors.load(Ordering::Relaxed), 4);
    // After the wrap the phase flips: the same entries are stale now.
    assert_eq!(q.process_completions(), 0);
}

/// A model of what the queue must do with any completion entry, driven by random
/// entries: nothing is ever completed or woken unless an entry names it exactly and
/// consistently, and every rejected entry is counted.
#[tokio::test]
async fn random_completion_entries_match_the_model() {
    use std::collections::HashMap;
    use tokio::sync::oneshot::error::TryRecvError;

    const QID: u16 = 3;
    const DEPTH: u16 = 16;
    let (q, metrics, _) = pair(DEPTH);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // cid -> (waiter, whether its submitter was already told)
    let mut model: HashMap<u16, (super::queue::Waiter, bool)> = HashMap::new();
    let (mut slot, mut phase) = (0u16, true);
    let mut rejected = 0u64;
    for _ in 0..5000 {
        while model.len() < usize::from(DEPTH) - 1 && rand() % 2 == 0 {
            let (cid, rx) = q.submit(&Command::new(0x82)).await.unwrap();
            assert!(
                model.insert(cid, (rx, false)).is_none(),
                "cid {cid:#x} reused in flight"
            );
        }
        let cids: Vec<u16> = model.keys().copied().collect();
        let r = rand();
        let cid = match (r % 4, cids.is_empty()) {
            (0 | 1, false) => cids[(r >> 8) as usize % cids.len()],
            (2, false) => cids[(r >> 8) as usize % cids.len()] ^ (1 << (4 + (r >> 20) % 12)),
            _ => (r >> 24) as u16,
        };
        let sq_id = if (r >> 40) % 4 == 0 {
            (r >> 44) as u16
        } else {
            QID
        };
        let sq_head = if (r >> 48) % 4 == 0 {
            (r >> 52) as u16
        } else {
            (r >> 52) as u16 % DEPTH
        };
        q.device_post(slot, &cqe(cid, sq_id, sq_head, 0, phase, 0));
        slot += 1;
        if slot == DEPTH {
            slot = 0;
            phase = !phase;
        }
        assert_eq!(q.process_completions(), 1);

        let consistent = sq_id == QID && sq_head < DEPTH;
        match model.get_mut(&cid) {
            None => rejected += 1,
            Some((_, told)) if !consistent => {
                rejected += 1;
                *told = true;
            }
            Some(_) => {}
        }
        // Check every submitter against the model.
        let mut done = Vec::new();
        for (&c, (rx, told)) in model.iter_mut() {
            let got = rx.try_recv();
            if c == cid && consistent {
                if !*told {
                    assert!(got.unwrap().is_ok(), "cid {c:#x} not completed");
                }
                done.push(c);
            } else if c == cid && !consistent && got.is_ok() {
                assert!(matches!(
                    got.unwrap(),
                    Err(NvmeError::DeviceProtocol { .. })
                ));
            } else if *told {
                // Told earlier of a bad entry: nothing more arrives.
                assert!(matches!(
                    got,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Closed)
                ));
            } else {
                assert!(
                    matches!(got, Err(TryRecvError::Empty)),
                    "cid {c:#x} woken by an entry for {cid:#x}"
                );
            }
        }
        for c in done {
            model.remove(&c);
        }
        assert_eq!(q.in_flight(), model.len());
        assert_eq!(metrics.protocol_errors.load(Ordering::Relaxed), rejected);
    }
    assert!(
        rejected > 1000,
        "the random entries exercised rejection ({rejected})"
    );
}

#[test]
fn spare_prp_list_pages_are_capped_and_a_reset_releases_them() {
    use super::command::DataPointer;
    use crate::io::DeviceIoExt;
    let device = Doorbells::new();
    let io: Arc<dyn DeviceIo> = device.clone();
    let pool = PrpPagePool::new(Arc::clone(&io));
    // 4 MiB in 4 KiB pages needs PRP list pages for every command.
    let buffer = io.alloc_dma(4 << 20).unwrap();
    let data = DataPointer::Buffer {
        buffer,
        offset: 0,
        len: 4 << 20,
    };
    let held: Vec<_> = (0..100)
        .map(|_| super::prp::build("unit", &pool, Some(&data)).unwrap())
        .collect();
    assert_eq!(pool.spare(), 0);
    drop(held);
    assert_eq!(pool.spare(), PrpPagePool::MAX_SPARE);
    pool.clear();
    assert_eq!(pool.spare(), 0);
}
