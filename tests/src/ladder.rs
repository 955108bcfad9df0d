//! Transcode ladders for whole-system tests: an H.264 input made by `ffmpeg` (testsrc2),
//! split into access units, sent through a transcode session of the client library, and
//! the renditions checked with `ffmpeg`/`ffprobe`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use vpud_client::annexb::access_units;
use vpud_client::{
    Client, RenditionPacket, RenditionParams, Transcode, TranscodeInput, TranscodeParams,
};

use crate::decode::decode_ffmpeg;
use crate::quality::psnr_luma;

/// The ladder of the issue: 1080p 6 Mb/s, 720p 3 Mb/s, 480p 1.5 Mb/s, 360p 0.8 Mb/s.
pub const LADDER: [(u32, u32, u32); 4] = [
    (1920, 1080, 6_000_000),
    (1280, 720, 3_000_000),
    (854, 480, 1_500_000),
    (640, 360, 800_000),
];

/// An H.264 Annex-B stream of ffmpeg's `testsrc2` at `width`×`height`, 30 fps, `frames`
/// pictures, an IDR every `gop`, no B-frames (x264, or ffmpeg's openh264 encoder).
pub fn testsrc2(dir: &Path, width: u32, height: u32, frames: u32, gop: u32) -> Result<PathBuf> {
    let path = dir.join(format!("testsrc2-{width}x{height}-{frames}.h264"));
    let src = format!("testsrc2=size={width}x{height}:rate=30");
    let mut last_err = String::new();
    for codec in [
        &[
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-crf", "18",
        ][..],
        &["-c:v", "libopenh264", "-b:v", "20M"][..],
    ] {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", &src])
            .args(["-frames:v", &frames.to_string(), "-pix_fmt", "yuv420p"])
            .args(codec)
            .args(["-g", &gop.to_string(), "-f", "h264"])
            .arg(&path)
            .output()
            .context("running ffmpeg (Debian package ffmpeg)")?;
        if out.status.success() {
            return Ok(path);
        }
        last_err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    bail!("ffmpeg could not make the test input: {last_err}")
}

/// Transcode parameters for `ladder` (width, height, bitrate) with keyframes every `gop`.
pub fn params(ladder: &[(u32, u32, u32)], gop: u32) -> TranscodeParams {
    let mut input = TranscodeInput::h264();
    input.reservation = None;
    input.framerate_num = Some(30);
    TranscodeParams {
        input,
        outputs: ladder
            .iter()
            .map(|&(w, h, b)| {
                let mut r = RenditionParams::new(w, h, b);
                r.gop = Some(gop);
                r
            })
            .collect(),
    }
}

/// Sends every access unit of `stream` (pts 0, 1, …) and collects every packet; `after`
/// is called once `inject_at` access units have been sent.
pub async fn run<F, Fut>(
    t: &mut Transcode,
    units: &[&[u8]],
    inject_at: Option<usize>,
    after: F,
) -> vpud_client::Result<Vec<RenditionPacket>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut packets = Vec::new();
    let mut after = Some(after);
    for (i, unit) in units.iter().enumerate() {
        if Some(i) == inject_at {
            if let Some(f) = after.take() {
                f().await;
            }
        }
        t.send_access_unit(unit, i as u64).await?;
        packets.extend(t.ready_packets());
    }
    packets.extend(t.drain().await?);
    Ok(packets)
}

/// Opens a transcode session and runs `stream` through it.
pub async fn transcode(
    client: &Client,
    params: &TranscodeParams,
    stream: &[u8],
) -> vpud_client::Result<Vec<RenditionPacket>> {
    let units = access_units(stream);
    let mut t = client.create_transcode(params).await?;
    run(&mut t, &units, None, || async {}).await
}

/// Each rendition's packets, in the order they came.
pub fn by_rendition(packets: &[RenditionPacket], renditions: usize) -> Vec<Vec<&RenditionPacket>> {
    let mut out = vec![Vec::new(); renditions];
    for p in packets {
        out[usize::from(p.rendition)].push(p);
    }
    out
}

/// Checks that every rendition has exactly the pts 0..frames once, in order, and that
/// keyframes fall on the same pts in every rendition; returns those pts.
pub fn check_packets(
    packets: &[RenditionPacket],
    renditions: usize,
    frames: u64,
) -> Result<Vec<u64>> {
    let per = by_rendition(packets, renditions);
    let mut keys: Option<Vec<u64>> = None;
    for (r, ps) in per.iter().enumerate() {
        let pts: Vec<u64> = ps.iter().map(|p| p.pts).collect();
        ensure!(
            pts == (0..frames).collect::<Vec<_>>(),
            "rendition {r}: pts {pts:?}, expected 0..{frames} once each"
        );
        ensure!(
            ps.iter().all(|p| !p.data.is_empty()),
            "rendition {r}: an empty packet"
        );
        let k: Vec<u64> = ps.iter().filter(|p| p.keyframe).map(|p| p.pts).collect();
        match &keys {
            None => keys = Some(k),
            Some(first) => ensure!(
                *first == k,
                "rendition {r}: keyframes at {k:?}, rendition 0 at {first:?}"
            ),
        }
    }
    Ok(keys.unwrap_or_default())
}

/// Writes each rendition's Annex-B stream to `dir/rN.h264`.
pub fn write_renditions(
    dir: &Path,
    packets: &[RenditionPacket],
    renditions: usize,
) -> Result<Vec<PathBuf>> {
    by_rendition(packets, renditions)
        .iter()
        .enumerate()
        .map(|(r, ps)| {
            let path = dir.join(format!("r{r}.h264"));
            let bytes: Vec<u8> = ps.iter().flat_map(|p| p.data.iter().copied()).collect();
            std::fs::write(&path, bytes)?;
            Ok(path)
        })
        .collect()
}

/// `ffmpeg`'s own decode of `input`, scaled by `ffmpeg` to `width`×`height`, as I420
/// frames: the reference a rendition is measured against.
pub fn ffmpeg_scaled(input: &Path, width: u32, height: u32) -> Result<Vec<Vec<u8>>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "h264", "-i"])
        .arg(input)
        .args(["-vf", &format!("scale={width}:{height}"), "-f", "rawvideo"])
        .args(["-pix_fmt", "yuv420p", "-"])
        .output()
        .context("running ffmpeg")?;
    ensure!(
        out.status.success(),
        "ffmpeg scaling failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = vpu_driver::media::i420_frame_size(width, height);
    ensure!(out.stdout.len() % size == 0, "ffmpeg wrote a partial frame");
    Ok(out.stdout.chunks(size).map(<[u8]>::to_vec).collect())
}

/// Mean luma PSNR of a rendition file against `reference`, decoding it with `ffmpeg`;
/// also checks the frame count.
pub fn rendition_psnr(path: &Path, reference: &[Vec<u8>], width: u32, height: u32) -> Result<f64> {
    let decoded = decode_ffmpeg(path, width, height)?;
    ensure!(
        decoded.len() == reference.len(),
        "{path:?}: ffmpeg decoded {} frames, the input has {}",
        decoded.len(),
        reference.len()
    );
    let sum: f64 = reference
        .iter()
        .zip(&decoded)
        .map(|(r, d)| psnr_luma(r, d, width, height).min(100.0))
        .sum();
    Ok(sum / reference.len() as f64)
}
