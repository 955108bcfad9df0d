//! Admin and transport behaviour: Identify, queues, Nop, doorbells, DMA faults, BME, reset.

use std::time::Duration;

use vpu_ffi::*;

use super::*;

#[test]
fn identify_returns_the_vpu_block() {
    let mut host = Host::new(EmuConfig {
        engines: 3,
        ..EmuConfig::with_index(7)
    });
    let buf = host.io.alloc_dma(4096).unwrap();
    let mut c = cmd(VPU_ADMIN_IDENTIFY);
    c.prp1 = buf.iova();
    c.cdw10 = VPU_IDENTIFY_CNS_CONTROLLER;
    assert_eq!(status(&host.admin(c)), OK);
    let mut raw = vec![0u8; 4096];
    assert!(buf.read(0, &mut raw));
    let id: vpu_identify_controller = from_bytes(&raw);
    assert_eq!({ id.vid }, VPU_PCI_VENDOR_ID as u16);
    assert_eq!({ id.ver }, VPU_NVME_VERSION_1_4);
    assert_eq!(id.sqes & 0xf, VPU_SQES_LOG2 as u8);
    assert_eq!(id.cqes & 0xf, VPU_CQES_LOG2 as u8);
    assert_eq!({ id.nn }, 0);
    assert_eq!(&raw[4..15], b"EMU00000007");
    let vpu = id.vpu;
    assert_eq!(vpu.magic, IDENTIFY_MAGIC);
    assert_eq!({ vpu.version }, VPU_INTERFACE_VERSION as u16);
    assert_eq!(vpu.encode_engines, 3);
    assert_eq!({ vpu.capacity_per_engine }, VPU_LOAD_UNITS_PER_ENGINE);
    assert_eq!({ vpu.codecs }, 1 << VPU_CODEC_H264);
    assert_eq!(
        { vpu.pixel_formats },
        (1 << VPU_PIXFMT_I420) | (1 << VPU_PIXFMT_NV12)
    );
    assert_eq!({ vpu.max_width }, 3840);
    assert_eq!({ vpu.pixel_rate_per_engine }, 1280 * 720 * 240);
    // The engine table: one H.264 encode entry per engine, as the legacy fields say, then
    // the decoder and the scaler.
    assert_eq!(vpu.engine_caps_count, 5);
    assert_eq!((vpu.decode_engines, vpu.scale_engines), (1, 1));
    assert_eq!(
        (caps_kind(&vpu, 3), caps_kind(&vpu, 4)),
        (
            (VPU_ENGINE_KIND_DECODE as u8, VPU_CODEC_H264 as u8),
            (VPU_ENGINE_KIND_SCALE as u8, VPU_CODEC_NONE as u8)
        )
    );
    let caps = vpu.engine_caps;
    for (i, e) in caps.iter().take(3).enumerate() {
        assert_eq!(
            (e.engine, e.kind, e.codec),
            (i as u8, 0, VPU_CODEC_H264 as u8)
        );
        assert_eq!(
            ({ e.capacity }, { e.pixel_rate }),
            ({ vpu.capacity_per_engine }, 1280 * 720 * 240)
        );
    }
    let identity = crate::card::CardIdentity::from_identify("emu7", &id).unwrap();
    assert_eq!(identity.encoders(crate::card::Codec::H264).count(), 3);
    // Other CNS values are rejected.
    c.cdw10 = VPU_IDENTIFY_CNS_ACTIVE_NSIDS;
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_GENERIC, VPU_SC_INVALID_FIELD)
    );
    // Unknown admin opcode.
    assert_eq!(
        status(&host.admin(cmd(0x7f))),
        (VPU_SCT_GENERIC, VPU_SC_INVALID_OPCODE)
    );
}

#[test]
fn nop_round_trip_across_queue_wraps() {
    let mut host = Host::new(EmuConfig::default());
    let mut c = cmd(VPU_ADMIN_SET_FEATURES);
    c.cdw10 = VPU_FEATURE_NUMBER_OF_QUEUES;
    c.cdw11 = 3 | (3 << VPU_NUM_QUEUES_NCQR_SHIFT);
    let cqe = host.admin(c);
    assert_eq!(status(&cqe), OK);
    assert_eq!({ cqe.dw0 }, 3 | (3 << VPU_NUM_QUEUES_NCQR_SHIFT));
    let mut q = host.io_queue(1, 4, 2);
    let irq = host.irqs[2].clone();
    for i in 0..13u16 {
        let cid = q.submit(&host.io, cmd(VPU_IO_NOP));
        let cqe = q.wait(&host.io, TIMEOUT).expect("nop completion");
        assert_eq!(status(&cqe), OK, "nop {i}");
        assert_eq!({ cqe.cid }, cid);
        assert_eq!({ cqe.sq_id }, 1);
        assert_eq!({ cqe.sq_head }, (i + 1) % 4);
        assert!(
            irq.read().unwrap() >= 1,
            "interrupt on vector 2 for nop {i}"
        );
    }
    // Unknown I/O opcodes are invalid; Decode Frame names a decoder.
    q.submit(&host.io, cmd(0x8f));
    let cqe = q.wait(&host.io, TIMEOUT).unwrap();
    assert_eq!(status(&cqe), (VPU_SCT_GENERIC, VPU_SC_INVALID_OPCODE));
    q.submit(&host.io, cmd(VPU_IO_DECODE_FRAME));
    let cqe = q.wait(&host.io, TIMEOUT).unwrap();
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND));
}

#[test]
fn queue_creation_is_validated() {
    let mut host = Host::new(EmuConfig::default());
    let buf = host.io.alloc_dma(4096 * 2).unwrap();
    let create = |op, qid: u32, size: u32, cdw11| {
        let mut c = cmd(op);
        c.prp1 = buf.iova();
        c.cdw10 = qid | ((size - 1) << VPU_QUEUE_QSIZE_SHIFT);
        c.cdw11 = cdw11;
        c
    };
    let pc_ien = VPU_QUEUE_PC | VPU_CQ_IEN;
    let specific = |sc| (VPU_SCT_COMMAND_SPECIFIC, sc);
    assert_eq!(
        status(&host.admin(create(VPU_ADMIN_CREATE_CQ, 0, 4, pc_ien))),
        specific(VPU_SC_INVALID_QID)
    );
    assert_eq!(
        status(&host.admin(create(VPU_ADMIN_CREATE_CQ, 64, 4, pc_ien))),
        specific(VPU_SC_INVALID_QID)
    );
    assert_eq!(
        status(&host.admin(create(VPU_ADMIN_CREATE_CQ, 1, 2000, pc_ien))),
        specific(VPU_SC_INVALID_QUEUE_SIZE)
    );
    assert_eq!(
        status(&host.admin(create(VPU_ADMIN_CREATE_CQ, 1, 4, VPU_CQ_IEN))),
        (VPU_SCT_GENERIC, VPU_SC_INVALID_FIELD)
    );
    assert_eq!(
        status(&host.admin(create(
            VPU_ADMIN_CREATE_CQ,
            1,
            4,
            pc_ien | (4 << VPU_CQ_IV_SHIFT)
        ))),
        specific(VPU_SC_INVALID_INTERRUPT_VECTOR)
    );
    assert_eq!(
        status(&host.admin(create(
            VPU_ADMIN_CREATE_SQ,
            1,
            4,
            VPU_QUEUE_PC | (1 << VPU_SQ_CQID_SHIFT)
        ))),
        specific(VPU_SC_INVALID_CQ)
    );
    assert_eq!(
        status(&host.admin(create(VPU_ADMIN_CREATE_CQ, 1, 4, pc_ien))),
        OK
    );
    assert_eq!(
        status(&host.admin(create(VPU_ADMIN_CREATE_CQ, 1, 4, pc_ien))),
        specific(VPU_SC_INVALID_QID)
    );
    assert_eq!(
        status(&host.admin(create(
            VPU_ADMIN_CREATE_SQ,
            1,
            4,
            VPU_QUEUE_PC | (1 << VPU_SQ_CQID_SHIFT)
        ))),
        OK
    );
    // A CQ in use cannot be deleted; after its SQ is gone it can.
    let mut del = cmd(VPU_ADMIN_DELETE_CQ);
    del.cdw10 = 1;
    assert_eq!(
        status(&host.admin(del)),
        specific(VPU_SC_INVALID_QUEUE_DELETION)
    );
    let mut del_sq = cmd(VPU_ADMIN_DELETE_SQ);
    del_sq.cdw10 = 1;
    assert_eq!(status(&host.admin(del_sq)), OK);
    assert_eq!(status(&host.admin(del)), OK);
    assert_eq!(status(&host.admin(del)), specific(VPU_SC_INVALID_QID));
}

#[test]
fn full_completion_queue_holds_completions() {
    let mut host = Host::new(EmuConfig::default());
    let mut q = host.io_queue(1, 4, 1);
    // Three Nops fill the 4-entry CQ (one slot stays empty); the host releases nothing.
    for _ in 0..3 {
        q.submit(&host.io, cmd(VPU_IO_NOP));
    }
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while got.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(c) = q.take() {
            got.push(c);
        }
    }
    assert_eq!(got.len(), 3);
    // Two more Nops: the device must not overwrite entries not yet released.
    q.submit(&host.io, cmd(VPU_IO_NOP));
    q.submit(&host.io, cmd(VPU_IO_NOP));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        q.peek().is_none(),
        "completion written into an unreleased slot"
    );
    q.release(&host.io);
    for _ in 0..2 {
        let c = q.wait(&host.io, TIMEOUT).expect("held completion");
        assert_eq!(status(&c), OK);
    }
}

#[test]
fn invalid_doorbells_are_ignored_and_reported() {
    let mut host = Host::new(EmuConfig::default());
    let cid = host
        .admin
        .submit(&host.io, cmd(VPU_ADMIN_ASYNC_EVENT_REQUEST));
    // SQ 5 does not exist.
    host.io
        .write32(0, u64::from(VPU_REG_DBS + 2 * 5 * 4), 1)
        .unwrap();
    let aen = host
        .admin
        .wait(&host.io, TIMEOUT)
        .expect("asynchronous event");
    assert_eq!({ aen.cid }, cid);
    assert_eq!(aen.dw0 & 0x7, 0, "error status event type");
    // Admin SQ tail beyond its 16 entries.
    host.io.write32(0, u64::from(VPU_REG_DBS), 200).unwrap();
    assert_eq!(host.card.counters().doorbell_errors, 2);
    // The error log holds the latest: no command (0xffff), error count 2.
    let (cqe, log) = host.log(VPU_LOG_ERROR, 0, 64);
    assert_eq!(status(&cqe), OK);
    let mut e = [0u8; 16];
    assert!(log.read(0, &mut e));
    assert_eq!(u64::from_le_bytes(e[0..8].try_into().unwrap()), 2);
    assert_eq!(&e[8..12], &[0xff; 4]);
    // The controller keeps working.
    let mut c = cmd(VPU_ADMIN_GET_FEATURES);
    c.cdw10 = VPU_FEATURE_NUMBER_OF_QUEUES;
    assert_eq!(status(&host.admin(c)), OK);
}

#[test]
fn unmapped_iova_is_a_data_transfer_error() {
    let mut host = Host::new(EmuConfig::default());
    let mut c = cmd(VPU_ADMIN_IDENTIFY);
    c.cdw10 = VPU_IDENTIFY_CNS_CONTROLLER;
    c.prp1 = 0x7000_0000_0000;
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_GENERIC, VPU_SC_DATA_TRANSFER_ERROR)
    );
    // A buffer the host mapped device-read-only cannot be written.
    let ro = Arc::new(crate::io::HostRegion::anonymous(4096).unwrap());
    let ro = host
        .io
        .map_dma(ro, crate::io::DmaDirection::ToDevice)
        .unwrap();
    c.prp1 = ro.iova();
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_GENERIC, VPU_SC_DATA_TRANSFER_ERROR)
    );
    // An unmapped buffer is unreachable.
    let gone = host.io.alloc_dma(4096).unwrap();
    let iova = gone.iova();
    drop(gone);
    c.prp1 = iova;
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_GENERIC, VPU_SC_DATA_TRANSFER_ERROR)
    );
    assert_eq!(host.card.counters().dma_faults, 3);
    let cid = host.admin.next_cid.wrapping_sub(1);
    let (cqe, log) = host.log(VPU_LOG_ERROR, 0, 64);
    assert_eq!(status(&cqe), OK);
    let mut e = [0u8; 16];
    assert!(log.read(0, &mut e));
    assert_eq!(u16::from_le_bytes([e[8], e[9]]), 0, "admin queue");
    assert_eq!(u16::from_le_bytes([e[10], e[11]]), cid);
    let sc = (u32::from(u16::from_le_bytes([e[12], e[13]])) >> VPU_CQE_SC_SHIFT) & VPU_CQE_SC_MASK;
    assert_eq!(sc, VPU_SC_DATA_TRANSFER_ERROR);
    // The next command succeeds.
    let buf = host.io.alloc_dma(4096).unwrap();
    c.prp1 = buf.iova();
    assert_eq!(status(&host.admin(c)), OK);
}

#[test]
fn admin_commands_complete_within_the_doorbell_write() {
    let mut host = Host::new(EmuConfig::default());
    // Drain the vector's count left by enabling.
    let _ = host.irqs[0].read();
    let buf = host.io.alloc_dma(4096).unwrap();
    let mut c = cmd(VPU_ADMIN_IDENTIFY);
    c.prp1 = buf.iova();
    c.cdw10 = VPU_IDENTIFY_CNS_CONTROLLER;
    let cid = host.admin.submit(&host.io, c);
    // No waiting: the entry and its interrupt are there when the write returns.
    let cqe = host
        .admin
        .take()
        .expect("completion posted by the doorbell write");
    assert_eq!({ cqe.cid }, cid);
    assert_eq!(status(&cqe), OK);
    assert!(host.irqs[0].read().unwrap() >= 1, "interrupt signalled");
    host.admin.release(&host.io);
    // More than one burst in one write: the rest is completed by the controller thread.
    for _ in 0..12 {
        host.admin.queue(cmd(VPU_ADMIN_GET_FEATURES));
    }
    host.admin.ring(&host.io);
    for _ in 0..12 {
        let cqe = host.admin.wait(&host.io, TIMEOUT).expect("completion");
        assert_eq!(status(&cqe), (VPU_SCT_GENERIC, VPU_SC_INVALID_FIELD));
    }
}

#[test]
fn without_bus_master_nothing_is_fetched() {
    let mut host = Host::with_bus_master(EmuConfig::default(), false);
    host.admin.submit(&host.io, cmd(VPU_ADMIN_GET_FEATURES));
    assert!(host
        .admin
        .wait(&host.io, Duration::from_millis(100))
        .is_none());
    set_bus_master(&host.io, true);
    let cqe = host
        .admin
        .wait(&host.io, TIMEOUT)
        .expect("fetched once BME is set");
    assert_eq!(status(&cqe), (VPU_SCT_GENERIC, VPU_SC_INVALID_FIELD));
}

#[test]
fn reset_returns_to_power_on_state() {
    let mut host = Host::new(EmuConfig::default());
    let id = host.create_session(&params(64, 64, false));
    let (cqe, _) = host.log(VPU_LOG_SESSION, id, 64);
    assert_eq!(status(&cqe), OK);
    host.card.inject(super::super::Fault::FatalStatus).unwrap();
    assert_ne!(host.csts() & VPU_CSTS_CFS, 0);
    host.io.reset().unwrap();
    assert_eq!(host.csts(), 0);
    assert_eq!(host.io.read32(0, u64::from(VPU_REG_CC)).unwrap(), 0);
    assert_eq!(host.io.read32(0, u64::from(VPU_REG_AQA)).unwrap(), 0);
    host.enable();
    let (cqe, _) = host.log(VPU_LOG_SESSION, id, 64);
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND));
    // CC.EN 1 -> 0 is a controller reset too.
    let id = host.create_session(&params(64, 64, false));
    host.io.write32(0, u64::from(VPU_REG_CC), 0).unwrap();
    assert!(wait_ready(&host.io, false));
    host.enable();
    let (cqe, _) = host.log(VPU_LOG_SESSION, id, 64);
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND));
}

#[test]
fn prp_lists_chain_across_list_pages() {
    use super::super::dma::{Access, IovaTable};
    use super::super::prp;
    let table = IovaTable::new();
    let region = |len| Arc::new(crate::io::HostRegion::anonymous(len).unwrap());
    // 600 data pages need two list pages (511 entries + chain, then 89).
    let data = region(600 * 4096);
    let data_iova = table
        .map(&data, crate::io::DmaDirection::Bidirectional)
        .unwrap();
    let lists = region(2 * 4096);
    let list_iova = table
        .map(&lists, crate::io::DmaDirection::ToDevice)
        .unwrap();
    // Page 0 goes in PRP1; pages 1.. in the list.
    let mut entries: Vec<u64> = (1..600).map(|p| data_iova + p * 4096).collect();
    entries.insert(511, list_iova + 4096);
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    assert!(lists.write(0, &bytes));
    let spans = prp::resolve(&table, data_iova, list_iova, 600 * 4096, 4096, Access::Read).unwrap();
    match spans {
        prp::Spans::One(s) => {
            assert_eq!(s.offset, 0);
            assert_eq!(s.len, 600 * 4096);
        }
        prp::Spans::Many(_) => panic!("contiguous pages should merge into one span"),
    }
    // A list entry with an offset is rejected.
    assert!(lists.write(8, &(data_iova + 4096 + 16).to_le_bytes()));
    assert_eq!(
        prp::resolve(&table, data_iova, list_iova, 600 * 4096, 4096, Access::Read).err(),
        Some(prp::PrpError::InvalidOffset)
    );
}

#[test]
fn log_pages_honour_numd() {
    let mut host = Host::new(EmuConfig::default());
    let buf = host.io.alloc_dma(4096).unwrap();
    assert!(buf.write(0, &[0xaa; 4096]));
    // NUMD = 3: 16 bytes of the engine log, nothing more.
    let mut c = cmd(VPU_ADMIN_GET_LOG_PAGE);
    c.prp1 = buf.iova();
    c.cdw10 = VPU_LOG_ENGINE | (3 << VPU_LOG_NUMDL_SHIFT);
    assert_eq!(status(&host.admin(c)), OK);
    let mut raw = [0u8; 32];
    assert!(buf.read(0, &mut raw));
    assert_eq!(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]), 2);
    assert_eq!(&raw[4..16], &[0; 12]);
    assert_eq!(&raw[16..32], &[0xaa; 16]);
    // Past the end of the page: zero filled.
    let (cqe, big) = host.log(VPU_LOG_ENGINE, 0, 2048);
    assert_eq!(status(&cqe), OK);
    let mut tail = [0xffu8; 64];
    assert!(big.read(1984, &mut tail));
    assert_eq!(tail, [0; 64]);
    // Unknown log pages, unknown sessions, offsets.
    let (cqe, _) = host.log(0x55, 0, 64);
    assert_eq!(
        status(&cqe),
        (VPU_SCT_COMMAND_SPECIFIC, VPU_SC_INVALID_LOG_PAGE)
    );
    let (cqe, _) = host.log(VPU_LOG_SESSION, 42, 64);
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND));
    c.cdw12 = 8;
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_GENERIC, VPU_SC_INVALID_FIELD)
    );
}

/// Kind and codec of entry `i` of the engine table.
fn caps_kind(vpu: &vpu_identify_vpu, i: usize) -> (u8, u8) {
    let caps = vpu.engine_caps;
    (caps[i].kind, caps[i].codec)
}
