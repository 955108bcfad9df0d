//! Completion-queue handling of the NVMe transport (`driver/src/nvme/queue.rs`), with the
//! fuzzer as a hostile device.
//!
//! The input is a queue size and a list of operations: the host submits commands (some
//! with data buffers, so PRPs and PRP lists are built), the "device" writes completion
//! entries into any slot (built from a command in flight with chosen fields wrong, or raw
//! bytes: wrong cid, wrong sq_id, stale or current phase, out-of-range sq_head, any
//! status and command-specific dwords such as byte counts), the host processes the queue,
//! abandons commands (timeouts) or kills the queue (reset).
//!
//! A model of NVMe completion processing runs alongside, and after every step the
//! transport must agree with it: which entries it consumed, which command each entry
//! completes or is rejected for, what each submitter hears (the entry's dwords and status
//! untouched, or a protocol error, or a reset error, exactly once), which commands keep
//! their memory mapped, and the protocol-error and late-completion counters. Every
//! successful completion is also read as the card layer reads an Encode Frame's
//! (`driver/src/card/encoded.rs`): a byte count beyond the output buffer, an unknown frame
//! type or an input lag naming no input is refused, and nothing else is.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vpu_driver::card::encoded::{check_encoded, BadEncoded};
use vpu_driver::io::DmaBuffer;
use vpu_driver::nvme::hostile::{HostileQueue, Outcome, Submitted};
use vpu_driver::nvme::{Command, Completion, NvmeError, ProtocolViolation, Status};
use vpu_ffi::{
    VPU_CQE_DNR, VPU_CQE_PHASE, VPU_CQE_SIZE, VPU_ENCODED_INPUT_LAG_SHIFT, VPU_ENCODED_KEYFRAME,
    VPU_FRAME_TYPE_B, VPU_FRAME_TYPE_MASK,
};

const QID: u16 = 1;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Submit a command, with a data buffer of `pages` pages (0: none): `len` bytes (0: to
    /// the end) at `offset`.
    Submit {
        opcode: u8,
        pages: u8,
        offset: u16,
        len: u16,
    },
    /// Complete command number `which` (modulo those in flight) at the CQ head with the
    /// current phase, possibly with fields corrupted.
    Complete {
        which: u8,
        corrupt: Corruption,
        status: u16,
        dw0: u32,
        dw1: u32,
        sq_head: u16,
    },
    /// Write raw bytes at any slot.
    Raw { slot: u16, entry: [u8; 16] },
    /// Process the queue (what an interrupt or a poll does).
    Process,
    /// The submitter of command number `which` times out.
    Abandon { which: u8 },
    /// Controller reset.
    Kill,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Corruption {
    None,
    Cid(u16),
    SqId(u16),
    StalePhase,
    SqHead,
    Slot(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    depth: u8,
    ops: Vec<Op>,
}

fn entry(
    cid: u16,
    sq_id: u16,
    sq_head: u16,
    status: u16,
    phase: bool,
    dw0: u32,
    dw1: u32,
) -> [u8; 16] {
    let mut b = [0u8; VPU_CQE_SIZE as usize];
    b[0..4].copy_from_slice(&dw0.to_le_bytes());
    b[4..8].copy_from_slice(&dw1.to_le_bytes());
    b[8..10].copy_from_slice(&sq_head.to_le_bytes());
    b[10..12].copy_from_slice(&sq_id.to_le_bytes());
    b[12..14].copy_from_slice(&cid.to_le_bytes());
    let status = (status & !(VPU_CQE_PHASE as u16)) | if phase { VPU_CQE_PHASE as u16 } else { 0 };
    b[14..16].copy_from_slice(&status.to_le_bytes());
    b
}

/// The model's view of one command in flight.
#[derive(Debug)]
struct Cmd {
    submitted: Submitted,
    /// The submitter still waits (no answer, no timeout).
    waiting: bool,
    /// What the submitter must hear next, once processed.
    expect: Option<Expect>,
    data: Option<DmaBuffer>,
    /// Submission number, as the card layer numbers a session's Encode Frames.
    seq: u64,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Completion { dw0: u32, dw1: u32, status: u16 },
    Protocol,
}

struct Model {
    depth: u16,
    head: u16,
    phase: bool,
    cq: Vec<[u8; 16]>,
    cmds: BTreeMap<u16, Cmd>,
    /// Commands the transport let go of whose submitters still must be checked.
    finished: Vec<(u16, Cmd)>,
    protocol_errors: u64,
    late: u64,
}

impl Model {
    fn process(&mut self, q: &HostileQueue) {
        let mut consumed = 0;
        while consumed < usize::from(self.depth) {
            let b = self.cq[usize::from(self.head)];
            let status = u16::from_le_bytes([b[14], b[15]]);
            if (u32::from(status) & VPU_CQE_PHASE != 0) != self.phase {
                break;
            }
            let cid = u16::from_le_bytes([b[12], b[13]]);
            let sq_id = u16::from_le_bytes([b[10], b[11]]);
            let sq_head = u16::from_le_bytes([b[8], b[9]]);
            let dw0 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let dw1 = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            self.head += 1;
            if self.head == self.depth {
                self.head = 0;
                self.phase = !self.phase;
            }
            consumed += 1;
            match self.cmds.get_mut(&cid) {
                None => self.protocol_errors += 1,
                Some(c) if sq_id != QID || sq_head >= self.depth => {
                    self.protocol_errors += 1;
                    if c.waiting {
                        c.waiting = false;
                        c.expect = Some(Expect::Protocol);
                    }
                }
                Some(c) => {
                    if c.waiting {
                        c.waiting = false;
                        c.expect = Some(Expect::Completion { dw0, dw1, status });
                    } else {
                        self.late += 1;
                    }
                    let c = self.cmds.remove(&cid).expect("present");
                    self.finished.push((cid, c));
                }
            }
        }
        assert_eq!(q.process_completions(), consumed, "entries consumed");
        self.check(q);
    }

    fn check(&mut self, q: &HostileQueue) {
        assert_eq!(q.in_flight(), self.cmds.len(), "commands in flight");
        let m = q.metrics();
        assert_eq!(m.protocol_errors, self.protocol_errors, "protocol errors");
        assert_eq!(m.late_completions, self.late, "late completions");
        for (cid, c) in self.cmds.iter_mut() {
            // Memory of a command the device has not consistently completed stays mapped.
            if let Some(d) = &c.data {
                assert!(
                    !d.is_unique(),
                    "data of cid {cid:#x} released while in flight"
                );
            }
            hear(*cid, c);
        }
        for (cid, mut c) in self.finished.drain(..) {
            if let Some(d) = &c.data {
                assert!(d.is_unique(), "data of completed cid {cid:#x} still held");
            }
            hear(cid, &mut c);
        }
    }
}

/// Checks what the submitter of `cid` heard against what it should have.
/// Once answered or abandoned, a submitter's channel is closed.
fn hear(cid: u16, c: &mut Cmd) {
    match (c.submitted.poll(), c.expect.take()) {
        (Outcome::Waiting, None) if c.waiting => {}
        (Outcome::Dropped, None) if !c.waiting => {}
        (Outcome::Done(Ok(done)), Some(Expect::Completion { dw0, dw1, status })) => {
            assert_eq!(
                (done.dw0, done.dw1),
                (dw0, dw1),
                "cid {cid:#x}: dwords changed"
            );
            assert_eq!(
                done.status,
                Status::from_raw(status),
                "cid {cid:#x}: status changed"
            );
            assert_eq!(done.dnr, u32::from(status) & VPU_CQE_DNR != 0);
            let _ = done.status.to_string();
            if done.status.is_success() {
                encoded(&done, c.data.as_ref().map_or(0, |d| d.len()), c.seq);
            }
        }
        (
            Outcome::Done(Err(NvmeError::DeviceProtocol { violation, .. })),
            Some(Expect::Protocol),
        ) => {
            assert!(
                matches!(
                    violation,
                    ProtocolViolation::SqIdMismatch { .. }
                        | ProtocolViolation::SqHeadOutOfRange { .. }
                ),
                "cid {cid:#x}: {violation}"
            );
        }
        (got, want) => panic!("cid {cid:#x}: submitter heard {got:?}, expected {want:?}"),
    }
}

fn pts_of(seq: u64) -> u64 {
    seq.wrapping_mul(1001)
}

/// The card layer's reading of the same completion as an Encode Frame's, with the
/// command's data buffer as its output buffer: it may only believe what fits.
fn encoded(done: &Completion, capacity: usize, seq: u64) {
    const REMEMBERED: u64 = 256;
    let report = check_encoded(done, capacity, seq, pts_of(seq), |n| {
        (n < seq && seq - n <= REMEMBERED).then(|| pts_of(n))
    });
    let lag = (done.dw1 >> VPU_ENCODED_INPUT_LAG_SHIFT) as u16;
    let frame_type = done.dw1 & VPU_FRAME_TYPE_MASK;
    let lag_known = lag == 0 || (u64::from(lag) <= seq && u64::from(lag) <= REMEMBERED);
    match report {
        Ok(r) => {
            assert!(frame_type <= VPU_FRAME_TYPE_B && lag_known);
            assert!(r.written as usize <= capacity);
            assert_eq!(r.written, done.dw0);
            assert_eq!(r.input_lag, lag);
            assert_eq!(r.pts, pts_of(seq - u64::from(lag)));
            assert_eq!(r.keyframe, done.dw1 & VPU_ENCODED_KEYFRAME != 0);
        }
        Err(BadEncoded::ByteCount {
            written,
            capacity: cap,
        }) => {
            assert_eq!((written, cap), (done.dw0, capacity));
            assert!(written as usize > capacity);
        }
        Err(BadEncoded::FrameType(t)) => {
            assert!(done.dw0 as usize <= capacity);
            assert!(t == frame_type && t > VPU_FRAME_TYPE_B);
        }
        Err(BadEncoded::InputLag(l)) => {
            assert!(done.dw0 as usize <= capacity && frame_type <= VPU_FRAME_TYPE_B);
            assert!(l == lag && !lag_known);
        }
    }
}

fuzz_target!(|input: Input| {
    let depth = u16::from(input.depth % 64).max(2);
    let q = HostileQueue::new(QID, depth).expect("queue memory");
    assert_eq!(q.depth(), depth);
    let mut model = Model {
        depth,
        head: 0,
        phase: true,
        cq: vec![[0; 16]; usize::from(depth)],
        cmds: BTreeMap::new(),
        finished: Vec::new(),
        protocol_errors: 0,
        late: 0,
    };
    let mut order: Vec<u16> = Vec::new();
    let mut killed = false;
    let mut seq = 0u64;
    for op in input.ops.into_iter().take(256) {
        order.retain(|cid| model.cmds.contains_key(cid));
        let pick = |which: u8| -> Option<u16> {
            (!order.is_empty()).then(|| order[usize::from(which) % order.len()])
        };
        match op {
            Op::Submit {
                opcode,
                pages,
                offset,
                len,
            } => {
                let mut cmd = Command::new(u32::from(opcode));
                let mut data = None;
                // What the transport must say about the data range: fine, misaligned
                // (PRP entries are dword aligned), or outside the buffer.
                let mut aligned = true;
                let mut inside = true;
                if pages % 8 != 0 {
                    let buf = q.alloc(usize::from(pages % 8) * 4096).expect("data memory");
                    let offset = usize::from(offset);
                    let len = if len == 0 {
                        buf.len().saturating_sub(offset).max(1)
                    } else {
                        usize::from(len)
                    };
                    aligned = (buf.iova() + offset as u64) % 4 == 0;
                    inside = offset + len <= buf.len();
                    cmd = cmd.data(&buf, offset, len);
                    data = Some(buf);
                }
                let full = model.cmds.len() == usize::from(depth) - 1;
                match q.try_submit(&cmd) {
                    None => assert!(full || killed, "submit blocked with a free slot"),
                    Some(Err(NvmeError::Reset { .. })) => assert!(killed),
                    Some(Err(NvmeError::DataAlignment { .. })) => assert!(!aligned),
                    Some(Err(NvmeError::DataRange { .. })) => assert!(!inside),
                    Some(Err(e)) => panic!("submit failed: {e}"),
                    Some(Ok((cid, submitted))) => {
                        assert!(!killed && !full && aligned && inside);
                        assert_ne!(cid, u16::MAX);
                        assert!(
                            !model.cmds.contains_key(&cid),
                            "cid {cid:#x} reused while in flight"
                        );
                        model.cmds.insert(
                            cid,
                            Cmd {
                                submitted,
                                waiting: true,
                                expect: None,
                                data,
                                seq,
                            },
                        );
                        seq += 1;
                        order.push(cid);
                    }
                }
            }
            Op::Complete {
                which,
                corrupt,
                status,
                dw0,
                dw1,
                sq_head,
            } => {
                let cid = pick(which).unwrap_or(0);
                let (mut cid_w, mut sq_id, mut head_w, mut phase, mut slot) =
                    (cid, QID, sq_head % depth, model.phase, model.head);
                match corrupt {
                    Corruption::None => {}
                    Corruption::Cid(c) => cid_w = c,
                    Corruption::SqId(s) => sq_id = s,
                    Corruption::StalePhase => phase = !phase,
                    Corruption::SqHead => head_w = depth.saturating_add(sq_head),
                    Corruption::Slot(s) => slot = s % depth,
                }
                let e = entry(cid_w, sq_id, head_w, status, phase, dw0, dw1);
                q.post(slot, &e);
                model.cq[usize::from(slot)] = e;
            }
            Op::Raw { slot, entry } => {
                q.post(slot, &entry);
                model.cq[usize::from(slot % depth)] = entry;
            }
            Op::Process => model.process(&q),
            Op::Abandon { which } => {
                if let Some(cid) = pick(which) {
                    assert!(q.abandon(cid));
                    let c = model.cmds.get_mut(&cid).expect("picked from the model");
                    c.waiting = false;
                    c.expect = None;
                }
                model.check(&q);
            }
            Op::Kill => {
                q.kill();
                killed = true;
                for (cid, mut c) in std::mem::take(&mut model.cmds) {
                    match c.submitted.poll() {
                        Outcome::Done(Err(NvmeError::Reset { .. })) => assert!(c.waiting),
                        Outcome::Dropped => assert!(!c.waiting),
                        other => panic!("cid {cid:#x} after a reset: {other:?}"),
                    }
                    if let Some(d) = &c.data {
                        assert!(d.is_unique(), "reset kept the data of cid {cid:#x}");
                    }
                }
                assert_eq!(q.in_flight(), 0);
            }
        }
    }
    model.process(&q);
});
