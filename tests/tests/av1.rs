//! AV1 through vpud on emulated cards with AV1 engines (`rav1e`): placement by codec and
//! refusal where no engine encodes AV1, streams that ffmpeg decodes to every frame,
//! keyframes on request, reconfiguration, quality (PSNR at 2 Mb/s 720p on testsrc2),
//! CBR accuracy over 10 s, and a card fault mid-stream. Sizes and frame counts are the
//! smallest that show each point, except where the figure is fixed (720p, 10 s).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use vpu_tests::clip::{synthetic_clip, testsrc2};
use vpu_tests::daemon::*;
use vpu_tests::decode::{decode_ffmpeg_file, probe_file, write_ivf};
use vpu_tests::quality::mean_psnr;
use vpud::channel::proto::{WirePacket, FRAME_FORCE_KEYFRAME};
use vpud::config::{Config, EmulatedCard};
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

/// Emulated cards with these (engines, AV1 engines) mixes.
fn cards(mixes: &[(u8, u8)]) -> Config {
    let mut c = Config::default();
    c.emulated.card = mixes
        .iter()
        .map(|&(engines, av1)| EmulatedCard {
            engines: Some(engines),
            av1_engines: Some(av1),
        })
        .collect();
    c
}

fn av1_params(width: u32, height: u32, fps: u32, bitrate: u32) -> HashMap<String, OwnedVariant> {
    let mut p = params(width, height, fps);
    p.insert("codec".into(), owned(Variant::from("av1")));
    p.insert("bitrate".into(), owned(Variant::U32(bitrate)));
    p
}

/// Writes `packets` as IVF and decodes them with ffmpeg.
fn decode(packets: &[WirePacket], width: u32, height: u32, fps: u32) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ivf");
    let units: Vec<&[u8]> = packets.iter().map(|p| &p.data[..]).collect();
    write_ivf(&path, width, height, fps, &units).unwrap();
    decode_ffmpeg_file(&path, width, height).unwrap()
}

/// Encodes `clip` on `ch`; every frame's packet, in pts order, with the end of stream.
async fn encode_all(ch: &mut Channel, clip: &[Vec<u8>]) -> Vec<WirePacket> {
    let mut packets = ch.encode(clip).await.unwrap();
    let (rest, ack) = ch.finish_packets().await.unwrap();
    packets.extend(rest);
    assert_eq!(ack, (clip.len() as u64, clip.len() as u64));
    let pts: Vec<u64> = packets.iter().map(|p| p.pts).collect();
    assert_eq!(pts, (0..clip.len() as u64).collect::<Vec<_>>());
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_is_refused_where_no_engine_encodes_it() {
    let d = start(1, Config::default()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let e = create_session(&conn, &av1_params(1280, 720, 30, 2_000_000))
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.NotSupported")
    );
    let msg = e.to_string();
    assert!(
        msg.contains("av1 1280x720") && msg.contains("h264 up to 3840x2160"),
        "{msg}"
    );
    // An unknown codec is InvalidArgument, naming the codecs the API knows.
    let mut p = params(64, 64, 30);
    p.insert("codec".into(), owned(Variant::from("vp9")));
    let e = create_session(&conn, &p).await.unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.InvalidArgument")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_sessions_go_to_av1_engines_and_decode() {
    // Card 0 encodes H.264 only; card 1 has an H.264 and an AV1 engine.
    let d = start(0, cards(&[(2, 0), (2, 1)])).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let codecs: Vec<String> = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "Codecs")
        .await
        .unwrap();
    assert_eq!(codecs, ["h264"]);
    let codecs: Vec<String> = property(&conn, "/org/vpud/Vpud1/card/1", CARD, "Codecs")
        .await
        .unwrap();
    assert_eq!(codecs, ["h264", "av1"]);
    let (w, h, fps) = (160, 96, 30);
    let (path, fd) = create_session(&conn, &av1_params(w, h, fps, 200_000))
        .await
        .unwrap();
    let card: OwnedObjectPath = property(&conn, path.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/1");
    let codec: String = property(&conn, path.as_str(), SESSION, "Codec")
        .await
        .unwrap();
    assert_eq!(codec, "av1");
    // H.264 still goes anywhere (spread: the idle card 0).
    let (h264, _h264_fd) = create_session(&conn, &params(w, h, fps)).await.unwrap();
    let card: OwnedObjectPath = property(&conn, h264.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/0");

    // Keyframes: the first, and the frame after a RequestKeyframe, sent while frames flow.
    let clip = synthetic_clip(w, h, 16);
    let mut ch = Channel::open(fd).await.unwrap();
    let mut packets = Vec::new();
    for f in &clip[..8] {
        ch.send_frame(f, 0).await.unwrap();
    }
    while packets.len() < 3 {
        packets.push(ch.next_packet().await.unwrap());
    }
    session_call(&conn, path.as_str(), "RequestKeyframe")
        .await
        .unwrap();
    for (i, f) in clip[8..].iter().enumerate() {
        // Frame 12 asks for a keyframe itself.
        let flags = if i == 4 { FRAME_FORCE_KEYFRAME } else { 0 };
        ch.send_frame(f, flags).await.unwrap();
        packets.push(ch.next_packet().await.unwrap());
    }
    let (rest, ack) = ch.finish_packets().await.unwrap();
    packets.extend(rest);
    assert_eq!(ack, (16, 16));
    let pts: Vec<u64> = packets.iter().map(|p| p.pts).collect();
    assert_eq!(pts, (0..16).collect::<Vec<_>>());
    let keys: Vec<u64> = packets
        .iter()
        .filter(|p| p.keyframe)
        .map(|p| p.pts)
        .collect();
    assert_eq!(keys, [0, 8, 12]);
    assert_eq!(decode(&packets, w, h, fps).len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_quality_at_2_mbps_720p() {
    let d = start(0, cards(&[(1, 1)])).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (w, h, fps) = (1280, 720, 30);
    let clip = testsrc2(w, h, fps, 30).unwrap();
    let (_, fd) = create_session(&conn, &av1_params(w, h, fps, 2_000_000))
        .await
        .unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    let packets = encode_all(&mut ch, &clip).await;
    let decoded = decode(&packets, w, h, fps);
    assert_eq!(decoded.len(), clip.len());
    let psnr = mean_psnr(&clip, &decoded);
    let bits: usize = packets.iter().map(|p| p.data.len() * 8).sum();
    let rate = bits as f64 * f64::from(fps) / clip.len() as f64;
    eprintln!("AV1 720p testsrc2: {psnr:.2} dB at {:.0} kb/s", rate / 1e3);
    assert!(psnr >= 30.0, "PSNR {psnr:.2} dB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_cbr_holds_the_bitrate_over_10_s_and_reconfigures() {
    let d = start(0, cards(&[(1, 1)])).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (w, h, fps, target) = (320, 180, 30, 300_000u32);
    let clip = testsrc2(w, h, fps, 10 * fps as usize).unwrap();
    let (path, fd) = create_session(&conn, &av1_params(w, h, fps, target))
        .await
        .unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    let packets = ch.encode(&clip).await.unwrap();
    let bits: usize = packets.iter().map(|p| p.data.len() * 8).sum();
    let rate = bits as f64 / 10.0;
    eprintln!(
        "AV1 CBR {} kb/s over 10 s: {:.1} kb/s",
        target / 1000,
        rate / 1e3
    );
    assert!(
        (rate / f64::from(target) - 1.0).abs() <= 0.15,
        "{rate:.0} bit/s for a target of {target}"
    );
    // Four times the bitrate from the next frame on: the next 2 s take about four times
    // the bits (a new sequence starts with a keyframe: rav1e cannot change rate in flight).
    let mut r: HashMap<String, OwnedVariant> = HashMap::new();
    r.insert("bitrate".into(), owned(Variant::U32(target * 4)));
    conn.call_method(
        Some(BUS_NAME),
        path.as_str(),
        Some(SESSION),
        "Reconfigure",
        &(r,),
    )
    .await
    .unwrap();
    let more = ch.encode(&clip[..2 * fps as usize]).await.unwrap();
    let (rest, ack) = ch.finish_packets().await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(ack, (12 * u64::from(fps), 12 * u64::from(fps)));
    assert!(more[0].keyframe);
    let bits: usize = more.iter().map(|p| p.data.len() * 8).sum();
    let after = bits as f64 / 2.0;
    assert!(
        after > 2.5 * rate,
        "{after:.0} bit/s after, {rate:.0} before"
    );
    let mut all = packets;
    all.extend(more);
    assert_eq!(decode(&all, w, h, fps).len(), 12 * fps as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_fault_moves_an_av1_session_to_another_av1_engine() {
    let mut config = cards(&[(2, 0), (2, 1), (2, 1)]);
    config.timeouts.command_ms = 500;
    config.scheduler.load_sample_interval_ms = 60_000;
    config.scheduler.measured_load_weight = 0.0;
    let d = start(0, config).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (w, h, fps) = (160, 96, 30);
    let (path, fd) = create_session(&conn, &av1_params(w, h, fps, 200_000))
        .await
        .unwrap();
    let card: OwnedObjectPath = property(&conn, path.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/1");
    let mut migrated = session_signals(&conn, path.as_str(), Some("Migrated"))
        .await
        .unwrap();
    let clip = synthetic_clip(w, h, 30);
    let mut ch = Channel::open(fd).await.unwrap();
    let mut packets = ch.encode(&clip[..10]).await.unwrap();
    conn.call_method(
        Some(BUS_NAME),
        "/org/vpud/Vpud1/card/1",
        Some("org.vpud.Vpud1.Emulator"),
        "InjectFault",
        &("fatal-status", HashMap::<String, OwnedVariant>::new()),
    )
    .await
    .unwrap();
    packets.extend(ch.encode(&clip[10..]).await.unwrap());
    let (rest, ack) = ch.finish_packets().await.unwrap();
    packets.extend(rest);
    assert_eq!(ack, (30, 30));
    let pts: Vec<u64> = packets.iter().map(|p| p.pts).collect();
    assert_eq!(
        pts,
        (0..30).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    let signal = tokio::time::timeout(Duration::from_secs(5), migrated.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (from, to): (OwnedObjectPath, OwnedObjectPath) = signal.body().deserialize().unwrap();
    // Card 0 was idle but has no AV1 engine: the session went to card 2.
    assert_eq!(
        (from.as_str(), to.as_str()),
        ("/org/vpud/Vpud1/card/1", "/org/vpud/Vpud1/card/2")
    );
    // It restarted on a keyframe, and the stream decodes to every frame.
    assert!(packets.iter().filter(|p| p.keyframe).count() >= 2);
    let decoded = decode(&packets, w, h, fps);
    assert_eq!(decoded.len(), 30);
    let (codec, keys) = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ivf");
        let units: Vec<&[u8]> = packets.iter().map(|p| &p.data[..]).collect();
        write_ivf(&p, w, h, fps, &units).unwrap();
        probe_file(&p).unwrap()
    };
    assert_eq!((codec.as_str(), keys.len()), ("av1", 30));
}
