//! The transcoding commands of the card API against the emulated card: Decode Frame into
//! card frame memory, Scale Frame, Encode Frame from a card frame (on H.264 and AV1
//! engines), Release Frame. Output checked by a real decoder; hostile input and bad
//! handles give typed rejections.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use vpu_driver::card::{
    Card, CardError, CardOptions, Codec, DecoderConfig, FrameInput, ScaleFilter, SessionConfig,
    VendorStatus,
};
use vpu_driver::emu::{EmuConfig, EmulatedCard};
use vpu_driver::io::DeviceIo;
use vpu_tests::decode::{decode_ffmpeg, decode_ffmpeg_file, decode_openh264, write_ivf};
use vpu_tests::ladder::{ffmpeg_scaled, testsrc2};
use vpu_tests::quality::mean_psnr;
use vpud_client::annexb::access_units;

async fn open() -> (Arc<EmulatedCard>, Arc<Card>) {
    open_with(EmuConfig::default()).await
}

async fn open_with(config: EmuConfig) -> (Arc<EmulatedCard>, Arc<Card>) {
    let emu = EmulatedCard::new(config).unwrap();
    let io: Arc<dyn DeviceIo> = emu.clone();
    let card = Card::open(
        io,
        CardOptions {
            command_timeout: Duration::from_secs(5),
            ..CardOptions::default()
        },
    )
    .await
    .unwrap();
    (emu, card)
}

fn decoder() -> DecoderConfig {
    DecoderConfig {
        codec: Codec::H264,
        max_width: 0,
        max_height: 0,
        fps_num: 30,
        fps_den: 1,
    }
}

fn encoder(width: u32, height: u32) -> SessionConfig {
    SessionConfig {
        width,
        height,
        bitrate: 2_000_000,
        gop: 0,
        ..SessionConfig::default()
    }
}

/// Decoded on the card, scaled there and encoded from card memory: every picture comes
/// out, faithful to ffmpeg's own decode and scaling, and no frame is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_scale_encode_stays_on_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let input = testsrc2(dir.path(), 320, 240, 12, 6).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let (emu, card) = open().await;
    assert_eq!(card.identity().decode_engines, 1);
    let dec = card.create_decoder(&decoder()).await.unwrap();
    let full = card.create_session(&encoder(320, 240)).await.unwrap();
    let half = card.create_session(&encoder(160, 120)).await.unwrap();
    let (mut out_full, mut out_half) = (Vec::new(), Vec::new());
    let mut pictures = 0;
    let units = access_units(&stream);
    assert_eq!(units.len(), 12);
    // The decoder may hold pictures back (High profile): they come out in order, the
    // last ones at the flush.
    let mut decoded = Vec::new();
    for (pts, unit) in units.iter().enumerate() {
        decoded.extend(
            card.decode(dec, FrameInput::Bytes(unit), pts as u64)
                .await
                .unwrap(),
        );
    }
    while let Some(pic) = card.flush_decoder(dec).await.unwrap() {
        decoded.push(pic);
    }
    assert_eq!(decoded.len(), 12);
    for (pts, pic) in decoded.into_iter().enumerate() {
        assert_eq!((pic.width, pic.height), (320, 240));
        pictures += 1;
        let key = pts == 0;
        let p = card
            .encode_card_frame(full, pic, pts as u64, key)
            .await
            .unwrap();
        out_full.extend(p.data);
        let small = card
            .scale(pic, 160, 120, ScaleFilter::Bilinear)
            .await
            .unwrap();
        let p = card
            .encode_card_frame(half, small, pts as u64, key)
            .await
            .unwrap();
        assert_eq!(p.pts, pts as u64);
        out_half.extend(p.data);
        card.release_frame(small).await.unwrap();
        card.release_frame(pic).await.unwrap();
    }
    assert!(card.flush_decoder(dec).await.unwrap().is_none());
    assert_eq!(pictures, 12);
    assert_eq!(emu.frames_held(), 0, "frames left in card memory");
    let reference = decode_ffmpeg(&input, 320, 240).unwrap();
    let got = decode_openh264(&out_full).unwrap();
    let psnr = mean_psnr(&reference, &got);
    assert!(psnr >= 32.0, "320x240 through the card: {psnr:.2} dB");
    let reference = ffmpeg_scaled(&input, 160, 120).unwrap();
    let got = decode_openh264(&out_half).unwrap();
    let psnr = mean_psnr(&reference, &got);
    assert!(psnr >= 28.0, "scaled on the card: {psnr:.2} dB");
    card.destroy_decoder(dec).await.unwrap();
    card.destroy_session(full).await.unwrap();
    card.destroy_session(half).await.unwrap();
}

fn rejected(r: Result<impl std::fmt::Debug, CardError>, status: VendorStatus) {
    match r {
        Err(e) if e.vendor_status() == Some(status) => {}
        other => panic!("expected {status}, got {other:?}"),
    }
}

/// Garbage in the bitstream is a typed rejection that breaks only that decoder; bad
/// handles and sizes are rejected; the card stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_and_bad_handles_are_typed_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let input = testsrc2(dir.path(), 160, 120, 4, 4).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let units = access_units(&stream);
    let (emu, card) = open().await;
    let bad = card.create_decoder(&decoder()).await.unwrap();
    let good = card.create_decoder(&decoder()).await.unwrap();
    let mut noise = units[0][..8].to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..4000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    let mut failed = false;
    for unit in [&noise[..], units[1], units[2]] {
        match card.decode(bad, FrameInput::Bytes(unit), 0).await {
            Ok(Some(pic)) => card.release_frame(pic).await.unwrap(),
            Ok(None) => {}
            Err(e) => {
                assert_eq!(e.vendor_status(), Some(VendorStatus::BitstreamError), "{e}");
                failed = true;
            }
        }
    }
    assert!(failed, "noise decoded without an error");
    // The other decoder on the same engine is unaffected.
    let mut decoded = Vec::new();
    for (pts, unit) in units.iter().enumerate() {
        decoded.extend(
            card.decode(good, FrameInput::Bytes(unit), pts as u64)
                .await
                .unwrap(),
        );
    }
    while let Some(pic) = card.flush_decoder(good).await.unwrap() {
        decoded.push(pic);
    }
    assert_eq!(decoded.len(), units.len());
    for pic in decoded {
        // A picture of the wrong size for an encoder, a bad scale, a stale handle.
        let enc = card.create_session(&encoder(320, 240)).await.unwrap();
        rejected(
            card.encode_card_frame(enc, pic, 0, true).await,
            VendorStatus::FrameMismatch,
        );
        card.destroy_session(enc).await.unwrap();
        assert!(card
            .scale(pic, 161, 120, ScaleFilter::Bicubic)
            .await
            .is_err());
        card.release_frame(pic).await.unwrap();
        rejected(card.release_frame(pic).await, VendorStatus::FrameNotFound);
        rejected(
            card.scale(pic, 80, 60, ScaleFilter::Lanczos3).await,
            VendorStatus::FrameNotFound,
        );
    }
    assert_eq!(emu.frames_held(), 0);
    card.nop().await.unwrap();
    assert!(!card.fatal());
}

/// An AV1 engine encodes decoded pictures from card memory as it encodes host frames: its
/// Encode Frame commands are held until their temporal units are out (a Flush releases the
/// last ones), each completes with its own picture in order, and ffmpeg decodes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_av1_engine_encodes_card_frames() {
    let dir = tempfile::tempdir().unwrap();
    let input = testsrc2(dir.path(), 320, 240, 12, 6).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let (emu, card) = open_with(EmuConfig {
        engines: 2,
        av1_engines: 1,
        ..EmuConfig::default()
    })
    .await;
    let dec = card.create_decoder(&decoder()).await.unwrap();
    let av1 = card
        .create_session(&SessionConfig {
            codec: Codec::Av1,
            ..encoder(320, 240)
        })
        .await
        .unwrap();
    let mut decoded = Vec::new();
    for (pts, unit) in access_units(&stream).iter().enumerate() {
        decoded.extend(
            card.decode(dec, FrameInput::Bytes(unit), pts as u64)
                .await
                .unwrap(),
        );
    }
    while let Some(pic) = card.flush_decoder(dec).await.unwrap() {
        decoded.push(pic);
    }
    assert_eq!(decoded.len(), 12);
    // All submitted at once (the engine holds them for its lookahead), then a Flush.
    let encodes = futures_util::future::join_all(
        decoded
            .iter()
            .enumerate()
            .map(|(pts, pic)| card.encode_card_frame(av1, *pic, pts as u64, pts == 0)),
    );
    let flush = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        card.flush(av1).await
    };
    let (packets, flushed) = tokio::join!(encodes, flush);
    flushed.unwrap();
    let packets: Vec<_> = packets.into_iter().map(Result::unwrap).collect();
    for (pts, p) in packets.iter().enumerate() {
        assert_eq!(p.pts, pts as u64);
        assert!(
            p.keyframe || pts > 0,
            "the first temporal unit is a keyframe"
        );
        assert!(!p.data.is_empty());
    }
    for pic in decoded {
        card.release_frame(pic).await.unwrap();
    }
    assert_eq!(emu.frames_held(), 0, "frames left in card memory");
    let ivf = dir.path().join("card.ivf");
    let units: Vec<&[u8]> = packets.iter().map(|p| &p.data[..]).collect();
    write_ivf(&ivf, 320, 240, 30, &units).unwrap();
    let got = decode_ffmpeg_file(&ivf, 320, 240).unwrap();
    assert_eq!(got.len(), 12, "frames ffmpeg decoded");
    let reference = decode_ffmpeg(&input, 320, 240).unwrap();
    let psnr = mean_psnr(&reference, &got);
    assert!(psnr >= 30.0, "AV1 from card frames: {psnr:.2} dB");
    card.destroy_decoder(dec).await.unwrap();
    card.destroy_session(av1).await.unwrap();
}
