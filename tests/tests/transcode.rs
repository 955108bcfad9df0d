//! Transcode ladders through the whole system: a private bus, vpud with emulated cards,
//! the client library's transcode sessions, and `ffmpeg`/`ffprobe` checking what comes out.
//! The input is ffmpeg's `testsrc2` as H.264; the ladder is 1080p 6 Mb/s, 720p 3 Mb/s,
//! 480p 1.5 Mb/s and 360p 0.8 Mb/s.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use vpu_tests::clip::synthetic_clip;
use vpu_tests::daemon::{start, BUS_NAME};
use vpu_tests::decode::probe_frames;
use vpu_tests::ladder::*;
use vpud::config::Config;
use vpud_client::annexb::{access_units, nal_type, nal_units, NAL_PPS, NAL_SPS};
use vpud_client::{Client, ClientError, SessionParams};
use zbus::{OwnedVariant, Variant};

const FRAMES: u32 = 48;
const GOP: u32 = 16;

fn config() -> Config {
    let mut c = Config::default();
    c.timeouts.command_ms = 1_000;
    // No engine-log reads: an injected fault meets the ladder's own commands.
    c.scheduler.load_sample_interval_ms = 60_000;
    c.scheduler.measured_load_weight = 0.0;
    c
}

/// Every rendition decodes with ffmpeg to the input's frame count, its PSNR against
/// ffmpeg's own scaling of the decoded input is at least 30 dB, its keyframes are on the
/// same pts in every rendition, and ffprobe sees keyframes exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ladder_comes_out_whole_aligned_and_faithful() {
    let dir = tempfile::tempdir().unwrap();
    let input = testsrc2(dir.path(), 1920, 1080, FRAMES, 30).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let vpud = start(1, config()).await.unwrap();
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let packets = transcode(&client, &params(&LADDER, GOP), &stream)
        .await
        .unwrap();
    let keys = check_packets(&packets, LADDER.len(), u64::from(FRAMES)).unwrap();
    let expected: Vec<u64> = (0..u64::from(FRAMES)).step_by(GOP as usize).collect();
    assert_eq!(
        keys, expected,
        "keyframes every {GOP} pictures from the first"
    );
    let files = write_renditions(dir.path(), &packets, LADDER.len()).unwrap();
    for (r, (&(w, h, _), file)) in LADDER.iter().zip(&files).enumerate() {
        let reference = ffmpeg_scaled(&input, w, h).unwrap();
        let psnr = rendition_psnr(file, &reference, w, h).unwrap();
        println!("rendition {r} {w}x{h}: {FRAMES} frames, luma PSNR {psnr:.2} dB against ffmpeg's scaling");
        assert!(
            psnr >= 30.0,
            "rendition {r} {w}x{h}: PSNR {psnr:.2} dB < 30"
        );
        let probed = probe_frames(file).unwrap();
        assert_eq!(
            probed.len(),
            FRAMES as usize,
            "rendition {r}: ffprobe frame count"
        );
        let probed_keys: Vec<u64> = probed
            .iter()
            .enumerate()
            .filter(|(_, (key, _))| *key)
            .map(|(i, _)| i as u64)
            .collect();
        assert_eq!(probed_keys, expected, "rendition {r}: ffprobe's keyframes");
    }
    // The ladder is off the books once it ended.
    let daemon = vpud.daemon();
    assert!(daemon.all_sessions().is_empty());
    assert_eq!(vpud_sched_load(daemon), 0);
}

fn vpud_sched_load(daemon: &std::sync::Arc<vpud::service::state::Daemon>) -> u64 {
    vpud::service::state::lock(&daemon.sched).total_load()
}

/// A plain encode session on the same daemon, run alongside a failing transcode: it gets
/// every packet.
async fn plain_session(client: &Client) -> usize {
    let mut p = SessionParams::h264(320, 240, 30);
    p.reservation = None;
    let mut s = client.create_session(&p).await.unwrap();
    let clip = synthetic_clip(320, 240, 60);
    let mut n = 0;
    for (i, f) in clip.iter().enumerate() {
        s.send_frame(f, i as u64, false).await.unwrap();
        n += s.ready_packets().count();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n += s.drain().await.unwrap().len();
    n
}

fn decode_failed(e: &ClientError) -> bool {
    matches!(e, ClientError::SessionFailed { code: 8, .. })
}

/// A corrupt input and a truncated one end their sessions with `decode-failed`; the
/// daemon and a concurrent plain encode session carry on unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_input_fail_typed_and_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = testsrc2(dir.path(), 640, 360, 30, 30).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let units = access_units(&stream);
    let vpud = start(1, config()).await.unwrap();
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let ladder = [(640, 360, 800_000), (320, 180, 300_000)];

    // Corrupt: one picture's slice data replaced by noise, its NAL header kept.
    let mut corrupt: Vec<Vec<u8>> = units.iter().map(|u| u.to_vec()).collect();
    let victim = &mut corrupt[12];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let keep = victim.len().min(8);
    for b in victim[keep..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let corrupt_units: Vec<&[u8]> = corrupt.iter().map(Vec::as_slice).collect();
    // Truncated: the stream cut in the middle of a picture.
    let cut = &units[20][..units[20].len() / 2];
    let mut truncated: Vec<&[u8]> = units[..20].to_vec();
    truncated.push(cut);

    let plain = plain_session(&client);
    let broken = async {
        let mut results = Vec::new();
        for units in [&corrupt_units, &truncated] {
            let mut t = client.create_transcode(&params(&ladder, 30)).await.unwrap();
            results.push(run(&mut t, units, None, || async {}).await);
        }
        results
    };
    let (plain_packets, results) = tokio::join!(plain, broken);
    assert_eq!(plain_packets, 60, "the plain session lost packets");
    for (what, r) in ["corrupt", "truncated"].iter().zip(results) {
        match r {
            Err(e) if decode_failed(&e) => println!("{what} input: {e}"),
            other => panic!("{what} input: expected decode-failed, got {other:?}"),
        }
    }
    // The daemon still serves, and a good ladder still works.
    let ok = transcode(&client, &params(&ladder, 30), &stream)
        .await
        .unwrap();
    check_packets(&ok, ladder.len(), units.len() as u64).unwrap();
}

/// Sessions the daemon has moved to another card.
fn migrated(vpud: &vpud::service::Embedded) -> u64 {
    vpud.daemon()
        .metrics
        .sessions_migrated
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Injects a `fatal-status` fault on `card` through the emulator's D-Bus interface.
async fn inject_fatal(conn: zbus::Connection, card: zbus::OwnedObjectPath) {
    let opts: HashMap<String, OwnedVariant> = HashMap::new();
    conn.call_method(
        Some(BUS_NAME),
        card.as_str(),
        Some("org.vpud.Vpud1.Emulator"),
        "InjectFault",
        &("fatal-status", opts),
    )
    .await
    .unwrap();
}

/// A 640x360 and 320x180 ladder with a GOP of `gop` over `units` (`frames` pictures) on
/// two emulated cards, its card failing before unit `inject_at`: the ladder moves, and
/// every rendition has every picture once, in order, and decodes to `frames` pictures.
async fn ladder_survives_a_fault(
    dir: &std::path::Path,
    units: &[&[u8]],
    frames: u32,
    gop: u32,
    inject_at: usize,
) {
    let vpud = start(2, config()).await.unwrap();
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let ladder = [(640, 360, 800_000), (320, 180, 300_000)];
    let mut t = client
        .create_transcode(&params(&ladder, gop))
        .await
        .unwrap();
    let card = t.proxy().card().await.unwrap();
    let conn = client.connection().clone();
    let packets = run(&mut t, units, Some(inject_at), || inject_fatal(conn, card))
        .await
        .unwrap();
    check_packets(&packets, ladder.len(), u64::from(frames)).unwrap();
    let files = write_renditions(dir, &packets, ladder.len()).unwrap();
    for file in &files {
        let probed = probe_frames(file).unwrap();
        assert_eq!(probed.len(), frames as usize, "{}", file.display());
    }
    assert!(migrated(&vpud) >= 1, "the ladder did not move");
}

/// A fatal controller status injected into the ladder's card mid-stream: the whole
/// ladder moves to the other card and every rendition still has every picture once, in
/// order, decodable by ffmpeg, with keyframes aligned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_fault_mid_ladder_loses_no_frame() {
    let dir = tempfile::tempdir().unwrap();
    let frames = 40u32;
    let input = testsrc2(dir.path(), 1280, 720, frames, 15).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let units = access_units(&stream);
    let vpud = start(2, config()).await.unwrap();
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let ladder = [
        (1280, 720, 3_000_000),
        (854, 480, 1_500_000),
        (640, 360, 800_000),
    ];
    let mut t = client.create_transcode(&params(&ladder, 20)).await.unwrap();
    let card = t.proxy().card().await.unwrap();
    let conn = client.connection().clone();
    let packets = run(&mut t, &units, Some(22), || inject_fatal(conn, card))
        .await
        .unwrap();
    let moved_to = t.proxy().card().await;
    check_packets(&packets, ladder.len(), u64::from(frames)).unwrap();
    let files = write_renditions(dir.path(), &packets, ladder.len()).unwrap();
    for (&(w, h, _), file) in ladder.iter().zip(&files) {
        let reference = ffmpeg_scaled(&input, w, h).unwrap();
        let psnr = rendition_psnr(file, &reference, w, h).unwrap();
        assert!(psnr >= 30.0, "{w}x{h} after the move: PSNR {psnr:.2} dB");
    }
    drop(moved_to);
    assert!(migrated(&vpud) >= 1, "the ladder did not move");
    let _ = Variant::from(0u32);
}

/// The same with an IDR every third input picture: IDRs are decoded while pictures
/// before them are still on the card, and the fault comes among them. Every rendition
/// still has every picture once, in order, and decodes to the input's frame count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_fault_with_idrs_in_flight_loses_no_frame() {
    let dir = tempfile::tempdir().unwrap();
    let frames = 36u32;
    let input = testsrc2(dir.path(), 640, 360, frames, 3).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let units = access_units(&stream);
    ladder_survives_a_fault(dir.path(), &units, frames, 3, 14).await;
}

/// The same with the input's parameter sets (SPS, PPS) only in its first access unit, as
/// some live sources send them: the IDR the ladder restarts from on the new card has none
/// of its own, and the daemon puts the last ones seen in front of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_fault_moves_a_stream_that_sent_its_parameter_sets_once() {
    let dir = tempfile::tempdir().unwrap();
    let frames = 36u32;
    let input = testsrc2(dir.path(), 640, 360, frames, 6).unwrap();
    let stream = std::fs::read(&input).unwrap();
    let units: Vec<Vec<u8>> = access_units(&stream)
        .iter()
        .enumerate()
        .map(|(i, unit)| {
            let mut out = Vec::new();
            for nal in nal_units(unit) {
                if i == 0 || !matches!(nal_type(nal), Some(NAL_SPS | NAL_PPS)) {
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend_from_slice(nal);
                }
            }
            out
        })
        .collect();
    let with_sps = units
        .iter()
        .filter(|u| nal_units(u).iter().any(|n| nal_type(n) == Some(NAL_SPS)))
        .count();
    assert_eq!(with_sps, 1, "only the first access unit has an SPS");
    let units: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
    // Well past the first IDRs: the ladder restarts from one with no SPS of its own.
    ladder_survives_a_fault(dir.path(), &units, frames, 6, 28).await;
}

/// A ladder larger than any one card can take is refused with `NoCapacity`, and nothing
/// of it is left on any card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ladder_no_single_card_can_take_is_refused_whole() {
    let vpud = start(2, config()).await.unwrap();
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    // Two 2160p60 renditions are two whole engines each way: one card has two engines,
    // and a ladder is never split across cards.
    let mut p = params(
        &[
            (3840, 2160, 20_000_000),
            (3840, 2160, 20_000_000),
            (1920, 1080, 6_000_000),
        ],
        60,
    );
    p.input.framerate_num = Some(60);
    let e = client.create_transcode(&p).await.unwrap_err();
    assert!(matches!(e, ClientError::NoCapacity(_)), "{e:?}");
    assert_eq!(vpud_sched_load(vpud.daemon()), 0);
    // Bad arguments are InvalidArgument.
    let mut bad = params(&[(1281, 720, 1_000_000)], 60);
    bad.input.width = Some(1920);
    let e = client.create_transcode(&bad).await.unwrap_err();
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
}
