//! The driver and an emulated card, end to end: generated clips encoded through the NVMe
//! transport and the video command set, checked by two independent decoders; keyframes,
//! rate control, DMA faults and hostile completions.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vpu_driver::card::{
    Card, CardError, CardOptions, FrameInput, FrameType, Packet, SessionConfig, SessionId,
};
use vpu_driver::emu::{EmuConfig, EmulatedCard, Fault};
use vpu_driver::io::{DeviceIo, DeviceIoExt};
use vpu_driver::nvme::{Command, NvmeError, Status};
use vpu_ffi::{
    VPU_ADMIN_IDENTIFY, VPU_IDENTIFY_CNS_CONTROLLER, VPU_IO_ENCODE_FRAME,
    VPU_SC_DATA_TRANSFER_ERROR,
};
use vpu_tests::clip::synthetic_clip;
use vpu_tests::decode::{decode_ffmpeg, decode_openh264, has_idr, probe_frames, probe_stream};
use vpu_tests::quality::mean_psnr;

const W: u32 = 640;
const H: u32 = 360;

async fn open(index: u32, timeout: Duration) -> (Arc<EmulatedCard>, Arc<Card>) {
    let emu = EmulatedCard::new(EmuConfig {
        index,
        ..EmuConfig::default()
    })
    .expect("emulated card");
    let io: Arc<dyn DeviceIo> = emu.clone();
    let card = Card::open(
        io,
        CardOptions {
            command_timeout: timeout,
            ..CardOptions::default()
        },
    )
    .await
    .expect("open card");
    (emu, card)
}

fn config(bitrate: u32, gop: u32) -> SessionConfig {
    SessionConfig {
        width: W,
        height: H,
        fps_num: 30,
        fps_den: 1,
        bitrate,
        gop,
        ..SessionConfig::default()
    }
}

async fn encode_all(
    card: &Card,
    id: SessionId,
    frames: &[Vec<u8>],
    force: &[usize],
) -> Vec<Packet> {
    let mut packets = Vec::new();
    for (n, f) in frames.iter().enumerate() {
        let p = card
            .encode(id, FrameInput::Bytes(f), n as u64, force.contains(&n))
            .await
            .unwrap_or_else(|e| panic!("frame {n}: {e}"));
        assert_eq!(p.pts, n as u64);
        packets.push(p);
    }
    card.flush(id).await.expect("flush");
    packets
}

fn write_stream(name: &str, packets: &[Packet]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("vpu-{}-{name}.h264", std::process::id()));
    let stream: Vec<u8> = packets
        .iter()
        .flat_map(|p| p.data.iter().copied())
        .collect();
    std::fs::write(&path, stream).expect("write stream");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clip_decodes_with_openh264_and_ffmpeg() {
    let (_emu, card) = open(0, Duration::from_secs(10)).await;
    let clip = synthetic_clip(W, H, 60);
    let id = card.create_session(&config(2_000_000, 30)).await.unwrap();
    let packets = encode_all(&card, id, &clip, &[]).await;
    assert!(packets.iter().all(|p| p.frame_type != FrameType::Skipped));
    let stream: Vec<u8> = packets
        .iter()
        .flat_map(|p| p.data.iter().copied())
        .collect();

    let decoded = decode_openh264(&stream).expect("openh264 decode");
    assert_eq!(decoded.len(), clip.len());
    let psnr = mean_psnr(&clip, &decoded);
    assert!(psnr >= 30.0, "openh264: PSNR {psnr:.2} dB");

    let path = write_stream("clip", &packets);
    let (count, w, h) = probe_stream(&path).expect("ffprobe");
    assert_eq!((count, w, h), (clip.len(), W, H));
    let decoded = decode_ffmpeg(&path, W, H).expect("ffmpeg decode");
    assert_eq!(decoded.len(), clip.len());
    let psnr_ff = mean_psnr(&clip, &decoded);
    assert!(psnr_ff >= 30.0, "ffmpeg: PSNR {psnr_ff:.2} dB");
    eprintln!("PSNR: openh264 {psnr:.2} dB, ffmpeg {psnr_ff:.2} dB");
    let _ = std::fs::remove_file(&path);

    let stats = card.session_log(id).await.unwrap();
    assert_eq!(stats.frames_in, clip.len() as u64);
    let engines = card.engine_log().await.unwrap();
    assert_eq!(engines.len(), usize::from(card.identity().encode_engines));
    assert!(engines.iter().map(|e| e.frames).sum::<u64>() >= clip.len() as u64);
    card.destroy_session(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_come_at_gop_boundaries_and_where_forced() {
    let (_emu, card) = open(1, Duration::from_secs(10)).await;
    let clip = synthetic_clip(W, H, 50);

    let id = card.create_session(&config(1_500_000, 20)).await.unwrap();
    let packets = encode_all(&card, id, &clip, &[]).await;
    let keys: Vec<usize> = (0..packets.len())
        .filter(|&n| packets[n].keyframe)
        .collect();
    assert_eq!(keys, vec![0, 20, 40]);
    for (n, p) in packets.iter().enumerate() {
        assert_eq!(has_idr(&p.data), p.keyframe, "frame {n}: IDR NAL vs flag");
        assert_eq!(p.frame_type == FrameType::Idr, p.keyframe, "frame {n}");
    }
    card.destroy_session(id).await.unwrap();

    let id = card.create_session(&config(1_500_000, 0)).await.unwrap();
    let packets = encode_all(&card, id, &clip, &[13, 37]).await;
    let keys: Vec<usize> = (0..packets.len())
        .filter(|&n| packets[n].keyframe)
        .collect();
    assert_eq!(keys, vec![0, 13, 37]);
    let path = write_stream("forced", &packets);
    let probed = probe_frames(&path).expect("ffprobe frames");
    let probed_keys: Vec<usize> = (0..probed.len()).filter(|&n| probed[n].0).collect();
    assert_eq!(probed_keys, vec![0, 13, 37], "ffprobe sees {probed:?}");
    let _ = std::fs::remove_file(&path);
    card.destroy_session(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbr_lands_within_ten_percent_over_ten_seconds() {
    let (_emu, card) = open(2, Duration::from_secs(10)).await;
    let target = 1_000_000u32;
    let clip = synthetic_clip(W, H, 300);
    let id = card.create_session(&config(target, 60)).await.unwrap();
    let packets = encode_all(&card, id, &clip, &[]).await;
    let bits: u64 = packets.iter().map(|p| p.data.len() as u64 * 8).sum();
    let rate = bits as f64 / 10.0;
    let error = (rate - f64::from(target)).abs() / f64::from(target);
    eprintln!(
        "CBR: {rate:.0} bit/s against {target} ({:+.1} %)",
        (rate / f64::from(target) - 1.0) * 100.0
    );
    assert!(
        error <= 0.10,
        "{rate:.0} bit/s against {target} ({:.1} %)",
        error * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_at_an_unmapped_iova_fails_with_a_dma_error() {
    let (_emu, card) = open(3, Duration::from_secs(5)).await;
    let gone = {
        let buf = card.device().alloc_dma(64 * 1024).unwrap();
        buf.iova() + 8192
    }; // dropped: unmapped
    let data_transfer_error = Status::Generic(VPU_SC_DATA_TRANSFER_ERROR as u8);

    // The device writes Identify data there.
    let identify = Command::new(VPU_ADMIN_IDENTIFY)
        .cdw10(VPU_IDENTIFY_CNS_CONTROLLER)
        .raw_data_pointer(gone, 0);
    let c = card
        .controller()
        .admin(identify, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(c.status, data_transfer_error);

    // The device reads a frame from there.
    let small = SessionConfig {
        width: 32,
        height: 16,
        ..config(200_000, 30)
    };
    let id = card.create_session(&small).await.unwrap();
    let out = card.device().alloc_dma(64 * 1024).unwrap();
    let encode = Command::new(VPU_IO_ENCODE_FRAME)
        .cdw10(id.0)
        .cdw14(out.len() as u32)
        .cdw15(small.frame_size() as u32)
        .raw_data_pointer(gone, 0)
        .metadata(&out, 0);
    let c = card
        .controller()
        .io(0, encode, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(c.status, data_transfer_error);
    assert!(!card.fatal());

    // The card goes on working.
    let frame = synthetic_clip(32, 16, 1).remove(0);
    let p = card
        .encode(id, FrameInput::Bytes(&frame), 0, false)
        .await
        .unwrap();
    assert!(!p.data.is_empty());
    card.nop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_completions_are_rejected_and_the_card_keeps_working() {
    let (emu, card) = open(4, Duration::from_millis(500)).await;
    let clip = synthetic_clip(W, H, 8);
    let id = card.create_session(&config(1_000_000, 30)).await.unwrap();
    card.encode(id, FrameInput::Bytes(&clip[0]), 0, false)
        .await
        .unwrap();

    let before = (card.nvme_metrics(), card.metrics());
    let mut errors = Vec::new();
    for n in 1..3u64 {
        // One at a time, so the Abort sent for a lost command is not corrupted as well.
        emu.inject(Fault::CorruptCompletion { count: 1 }).unwrap();
        match card
            .encode(id, FrameInput::Bytes(&clip[n as usize]), n, false)
            .await
        {
            Ok(p) => panic!("frame {n}: a corrupted completion was accepted: {p:?}"),
            Err(e) => errors.push(e),
        }
    }
    for e in &errors {
        eprintln!("rejected: {e}");
        assert!(
            matches!(
                e,
                CardError::BadByteCount { .. }
                    | CardError::BadCompletion { .. }
                    | CardError::Nvme(NvmeError::DeviceProtocol { .. })
                    | CardError::Nvme(NvmeError::Timeout { .. })
            ),
            "unexpected error {e}"
        );
        assert!(e.is_device_fault());
    }
    // A completion naming a command id that is not in flight wakes nobody: the Nop it
    // belonged to times out (and is aborted), and nothing else is disturbed.
    emu.inject(Fault::CorruptCompletion { count: 1 }).unwrap();
    let e = card.nop().await.unwrap_err();
    eprintln!("rejected: {e}");
    assert!(
        matches!(e, CardError::Nvme(NvmeError::Timeout { .. })),
        "unexpected error {e}"
    );
    let after = (card.nvme_metrics(), card.metrics());
    let rejected = (after.0.protocol_errors - before.0.protocol_errors)
        + (after.1.bad_completions - before.1.bad_completions);
    assert_eq!(rejected, 3, "every corrupted completion is counted once");
    assert_eq!(after.0.timeouts - before.0.timeouts, 1);
    assert_eq!(after.0.aborts - before.0.aborts, 1);

    for n in 3..8u64 {
        card.encode(id, FrameInput::Bytes(&clip[n as usize]), n, false)
            .await
            .unwrap_or_else(|e| panic!("frame {n} after the fault: {e}"));
    }
    card.nop().await.unwrap();
}
