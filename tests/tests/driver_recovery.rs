//! The driver against an emulated card's injected faults and against bad requests:
//! timeouts with Abort, late completions, lost interrupts, fatal status and reset,
//! surprise removal, polling mode, zero-copy input, growing output buffers, and many
//! commands in flight.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use vpu_driver::card::{
    Card, CardError, CardOptions, FrameInput, RateControl, SessionConfig, SessionId, VendorStatus,
};
use vpu_driver::emu::{EmuConfig, EmulatedCard, Fault};
use vpu_driver::io::{DeviceIo, DeviceIoExt, HostRegion};
use vpu_driver::nvme::{Command, NvmeError};
use vpu_ffi::VPU_IO_NOP;
use vpu_tests::clip::synthetic_clip;
use vpu_tests::decode::decode_openh264;
use vpu_tests::quality::mean_psnr;

const W: u32 = 320;
const H: u32 = 240;

async fn open_with(index: u32, opts: CardOptions) -> (Arc<EmulatedCard>, Arc<Card>) {
    let emu = EmulatedCard::new(EmuConfig {
        index,
        ..EmuConfig::default()
    })
    .unwrap();
    let io: Arc<dyn DeviceIo> = emu.clone();
    (emu, Card::open(io, opts).await.unwrap())
}

async fn open(index: u32, timeout: Duration) -> (Arc<EmulatedCard>, Arc<Card>) {
    open_with(
        index,
        CardOptions {
            command_timeout: timeout,
            ..CardOptions::default()
        },
    )
    .await
}

fn config() -> SessionConfig {
    SessionConfig {
        width: W,
        height: H,
        bitrate: 500_000,
        gop: 30,
        ..SessionConfig::default()
    }
}

async fn encode_some(card: &Card, id: SessionId, frames: usize) {
    for (n, f) in synthetic_clip(W, H, frames).iter().enumerate() {
        card.encode(id, FrameInput::Bytes(f), n as u64, false)
            .await
            .unwrap_or_else(|e| panic!("frame {n}: {e}"));
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_times_out_is_aborted_and_its_late_completion_discarded() {
    let (emu, card) = open(10, Duration::from_millis(300)).await;
    let id = card.create_session(&config()).await.unwrap();
    encode_some(&card, id, 2).await;
    emu.inject(Fault::HangEngine {
        engine: None,
        duration: Some(Duration::from_millis(800)),
    })
    .unwrap();
    let frame = synthetic_clip(W, H, 1).remove(0);
    let e = card
        .encode(id, FrameInput::Bytes(&frame), 2, false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, CardError::Nvme(NvmeError::Timeout { .. })),
        "{e}"
    );
    assert!(e.is_device_fault());
    let m = card.nvme_metrics();
    assert_eq!((m.timeouts, m.aborts), (1, 1));
    // The command completes (aborted, or late once the engine resumes) and is dropped
    // without waking anybody; its buffers are released then.
    wait_for("the late completion", || {
        card.nvme_metrics().late_completions == 1
    })
    .await;
    wait_for("the queue to drain", || {
        card.controller().io_in_flight(0) == 0 && card.controller().io_in_flight(1) == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    encode_some(&card, id, 3).await;
    assert!(!card.fatal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_interrupt_costs_a_sweep_not_a_command_timeout() {
    let (emu, card) = open(20, Duration::from_secs(30)).await;
    let id = card.create_session(&config()).await.unwrap();
    emu.inject(Fault::LostInterrupt { count: 1 }).unwrap();
    let frame = synthetic_clip(W, H, 1).remove(0);
    let encoded = tokio::time::timeout(
        Duration::from_secs(5),
        card.encode(id, FrameInput::Bytes(&frame), 0, false),
    )
    .await
    .expect("the completion was picked up long before the 30 s command timeout");
    assert!(!encoded.unwrap().data.is_empty());
    let m = card.nvme_metrics();
    assert_eq!((m.lost_interrupts, m.timeouts), (1, 0));
    assert_eq!(emu.counters().interrupts_lost, 1);
    card.nop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_status_is_reported_and_reset_brings_the_card_back() {
    let (emu, card) = open(12, Duration::from_millis(300)).await;
    let id = card.create_session(&config()).await.unwrap();
    encode_some(&card, id, 2).await;
    emu.inject(Fault::FatalStatus).unwrap();
    // The status register tells at once, before any command meets the failed controller.
    assert!(!card.fatal());
    let e = card.check_status().unwrap_err();
    assert!(matches!(e, CardError::Nvme(NvmeError::Fatal { .. })), "{e}");
    assert!(card.fatal());
    let e = card.nop().await.unwrap_err();
    assert!(matches!(e, CardError::Nvme(NvmeError::Fatal { .. })), "{e}");
    assert!(e.is_device_fault());
    assert!(card.fatal());

    card.reset().await.unwrap();
    assert!(!card.fatal());
    card.check_status().unwrap();
    assert_eq!(card.nvme_metrics().resets, 1);
    // Sessions do not survive a reset.
    let frame = synthetic_clip(W, H, 1).remove(0);
    let e = card
        .encode(id, FrameInput::Bytes(&frame), 0, false)
        .await
        .unwrap_err();
    assert_eq!(e.vendor_status(), Some(VendorStatus::SessionNotFound));
    let id = card.create_session(&config()).await.unwrap();
    encode_some(&card, id, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fails_commands_in_flight_and_keeps_working() {
    let (emu, card) = open(13, Duration::from_secs(5)).await;
    let id = card.create_session(&config()).await.unwrap();
    emu.inject(Fault::HangEngine {
        engine: None,
        duration: None,
    })
    .unwrap();
    let frame = synthetic_clip(W, H, 1).remove(0);
    let pending = {
        let card = Arc::clone(&card);
        tokio::spawn(async move { card.encode(id, FrameInput::Bytes(&frame), 0, false).await })
    };
    wait_for("the frame to be queued", || {
        card.controller().io_in_flight(id.0 as usize % 2) == 1
    })
    .await;
    card.reset().await.unwrap();
    let e = pending.await.unwrap().unwrap_err();
    assert!(matches!(e, CardError::Nvme(NvmeError::Reset { .. })), "{e}");
    let id = card.create_session(&config()).await.unwrap();
    encode_some(&card, id, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surprise_removal_is_a_device_fault_not_a_hang() {
    let (emu, card) = open(14, Duration::from_millis(200)).await;
    emu.inject(Fault::SurpriseRemoval).unwrap();
    let e = card.nop().await.unwrap_err();
    assert!(e.is_device_fault(), "{e}");
    assert!(card.reset().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_encodes_without_interrupts() {
    let (_emu, card) = open_with(
        15,
        CardOptions {
            polling: true,
            ..CardOptions::default()
        },
    )
    .await;
    assert!(card.controller().polling());
    let id = card.create_session(&config()).await.unwrap();
    encode_some(&card, id, 5).await;
    card.nop().await.unwrap();
    card.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_frames_from_mapped_client_memory() {
    let (_emu, card) = open(16, Duration::from_secs(10)).await;
    let clip = synthetic_clip(W, H, 10);
    let size = clip[0].len();
    // Frames packed back to back: most start in the middle of a page.
    let region = Arc::new(HostRegion::anonymous(size * clip.len() + 64).unwrap());
    for (n, f) in clip.iter().enumerate() {
        assert!(region.write(64 + n * size, f));
    }
    let mapped = card.map_frames(region).unwrap();
    let id = card.create_session(&config()).await.unwrap();
    let mut stream = Vec::new();
    for n in 0..clip.len() {
        let input = FrameInput::Dma {
            buffer: &mapped,
            offset: 64 + n * size,
            len: size,
        };
        stream.extend(card.encode(id, input, n as u64, false).await.unwrap().data);
    }
    let decoded = decode_openh264(&stream).unwrap();
    assert!(mean_psnr(&clip, &decoded) >= 30.0);

    let outside = FrameInput::Dma {
        buffer: &mapped,
        offset: mapped.len() - 10,
        len: size,
    };
    let e = card.encode(id, outside, 0, false).await.unwrap_err();
    assert!(matches!(e, CardError::InvalidFrame { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_buffer_grows_when_the_card_says_it_is_too_small() {
    let (_emu, card) = open(17, Duration::from_secs(10)).await;
    // Noise at QP 0: an intra picture larger than the first output buffer tried.
    let (w, h) = (1280u32, 720u32);
    let cfg = SessionConfig {
        width: w,
        height: h,
        rate_control: RateControl::Cqp,
        qp: 0,
        ..SessionConfig::default()
    };
    let mut seed = 0x1234_5678u32;
    let noise: Vec<u8> = (0..cfg.frame_size())
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        })
        .collect();
    let id = card.create_session(&cfg).await.unwrap();
    let p = card
        .encode(id, FrameInput::Bytes(&noise), 0, false)
        .await
        .unwrap();
    // The driver starts with a quarter of the raw frame size.
    assert!(
        p.data.len() > cfg.frame_size() / 4,
        "{} bytes",
        p.data.len()
    );
    assert!(p.keyframe);
    assert!(card.metrics().output_retries >= 1);
    let decoded = decode_openh264(&p.data).unwrap();
    assert_eq!(decoded.len(), 1);
    let psnr = mean_psnr(&[noise], &decoded);
    eprintln!("noise at QP 0: {} bytes, PSNR {psnr:.2} dB", p.data.len());
    assert!(psnr >= 20.0, "PSNR {psnr:.2} dB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_typed_rejections_that_leave_the_card_alone() {
    let (_emu, card) = open(18, Duration::from_secs(5)).await;
    let odd = SessionConfig {
        width: 321,
        ..config()
    };
    assert!(matches!(
        card.create_session(&odd).await.unwrap_err(),
        CardError::InvalidConfig(_)
    ));
    let huge = SessionConfig {
        width: 8192,
        height: 8192,
        ..config()
    };
    assert!(matches!(
        card.create_session(&huge).await.unwrap_err(),
        CardError::InvalidConfig(_)
    ));
    let id = card.create_session(&config()).await.unwrap();
    let e = card
        .encode(id, FrameInput::Bytes(&[0u8; 100]), 0, false)
        .await
        .unwrap_err();
    assert!(matches!(e, CardError::InvalidFrame { .. }), "{e}");
    assert!(!e.is_device_fault());
    let e = card.destroy_session(SessionId(0xdead)).await.unwrap_err();
    assert_eq!(
        e.vendor_status(),
        Some(VendorStatus::SessionNotFound),
        "{e}"
    );
    assert!(!e.is_device_fault());
    // Transfers over the controller's MDTS are refused before they reach it.
    let limit = card.controller().max_transfer();
    assert!(
        (4 * 1024 * 1024..usize::MAX).contains(&limit),
        "limit {limit}"
    );
    let big = card.device().alloc_dma(limit + 4096).unwrap();
    let cmd = Command::new(VPU_IO_NOP).data(&big, 0, limit + 4096);
    let e = card
        .controller()
        .io(0, cmd, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, NvmeError::TransferTooLarge { .. }), "{e}");
    assert!(!e.is_device_fault());
    encode_some(&card, id, 2).await;
    let stats = card.session_log(id).await.unwrap();
    assert_eq!(stats.frames_in, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commands_in_flight_on_every_queue() {
    let (_emu, card) = open(19, Duration::from_secs(10)).await;
    assert_eq!(card.controller().io_queue_count(), 2);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let card = Arc::clone(&card);
        tasks.push(tokio::spawn(async move { card.nop().await }));
    }
    let sessions: Vec<SessionId> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(card.create_session(&config()).await.unwrap());
        }
        v
    };
    for id in sessions {
        let card = Arc::clone(&card);
        tasks.push(tokio::spawn(async move {
            encode_some(&card, id, 10).await;
            Ok(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let m = card.nvme_metrics();
    assert_eq!((m.protocol_errors, m.timeouts), (0, 0));
    card.shutdown().await.unwrap();
    let e = card.nop().await.unwrap_err();
    assert!(
        matches!(e, CardError::Nvme(NvmeError::NotEnabled { .. })),
        "{e}"
    );
}
