//! Decoding H.264 Annex-B streams: openh264 in-process, Debian's `ffmpeg`/`ffprobe` as an
//! independent decoder, and NAL unit inspection.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

/// NAL unit type of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of a non-IDR slice.
pub const NAL_SLICE: u8 = 1;

/// The NAL unit types of an Annex-B buffer, in order.
pub fn nal_types(annexb: &[u8]) -> Vec<u8> {
    openh264::nal_units(annexb)
        .filter_map(|nal| {
            let start = nal.iter().position(|&b| b != 0)? + 1; // past the 00..01 start code
            nal.get(start).map(|h| h & 0x1f)
        })
        .collect()
}

/// True when the buffer holds an IDR slice.
pub fn has_idr(annexb: &[u8]) -> bool {
    nal_types(annexb).contains(&NAL_IDR)
}

fn tight_i420(yuv: &impl YUVSource) -> Vec<u8> {
    let (w, h) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = Vec::with_capacity(w * h + 2 * cw * ch);
    for row in 0..h {
        out.extend_from_slice(&yuv.y()[row * sy..row * sy + w]);
    }
    for row in 0..ch {
        out.extend_from_slice(&yuv.u()[row * su..row * su + cw]);
    }
    for row in 0..ch {
        out.extend_from_slice(&yuv.v()[row * sv..row * sv + cw]);
    }
    out
}

/// Decodes an Annex-B stream with openh264; returns tight I420 frames.
pub fn decode_openh264(stream: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut decoder = Decoder::new().context("creating the openh264 decoder")?;
    let mut frames = Vec::new();
    for nal in openh264::nal_units(stream) {
        if let Some(yuv) = decoder
            .decode(nal)
            .context("openh264 rejected the stream")?
        {
            frames.push(tight_i420(&yuv));
        }
    }
    for yuv in decoder.flush_remaining().context("flushing openh264")? {
        frames.push(tight_i420(&yuv));
    }
    Ok(frames)
}

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (Debian package ffmpeg)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Decodes a raw H.264 file with `ffmpeg` into tight I420 frames of `width` x `height`.
pub fn decode_ffmpeg(path: &Path, width: u32, height: u32) -> Result<Vec<Vec<u8>>> {
    let raw = run(Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "h264", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]))?;
    let size = vpu_driver::media::i420_frame_size(width, height);
    if raw.len() % size != 0 {
        bail!(
            "ffmpeg wrote {} bytes, not whole {size} byte frames",
            raw.len()
        );
    }
    Ok(raw.chunks(size).map(<[u8]>::to_vec).collect())
}

/// What `ffprobe` says of each frame of a raw H.264 file: (key frame, picture type).
pub fn probe_frames(path: &Path) -> Result<Vec<(bool, String)>> {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-f",
            "h264",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pict_type",
            "-of",
            "csv=p=0",
        ])
        .arg(path))?;
    let text = String::from_utf8(out).context("ffprobe output is not text")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(',');
            let key = f.next().unwrap_or_default().trim() == "1";
            let pict = f.next().unwrap_or_default().trim().to_string();
            Ok((key, pict))
        })
        .collect()
}

/// `ffprobe`'s count of decoded frames and its reported size of a raw H.264 file.
pub fn probe_stream(path: &Path) -> Result<(usize, u32, u32)> {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-f",
            "h264",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path))?;
    let text = String::from_utf8(out).context("ffprobe output is not text")?;
    let fields: Vec<&str> = text.trim().split(',').collect();
    let [w, h, n] = fields[..] else {
        bail!("unexpected ffprobe output {text:?}");
    };
    Ok((n.parse()?, w.parse()?, h.parse()?))
}

/// Writes AV1 temporal units (one per frame) to an IVF file at `fps` frames per second.
pub fn write_ivf(path: &Path, width: u32, height: u32, fps: u32, units: &[&[u8]]) -> Result<()> {
    let mut f = Vec::new();
    f.extend_from_slice(b"DKIF");
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&32u16.to_le_bytes());
    f.extend_from_slice(b"AV01");
    f.extend_from_slice(&(width as u16).to_le_bytes());
    f.extend_from_slice(&(height as u16).to_le_bytes());
    f.extend_from_slice(&fps.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(units.len() as u32).to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    for (i, u) in units.iter().enumerate() {
        f.extend_from_slice(&(u.len() as u32).to_le_bytes());
        f.extend_from_slice(&(i as u64).to_le_bytes());
        f.extend_from_slice(u);
    }
    std::fs::write(path, f).with_context(|| format!("writing {}", path.display()))
}

/// Decodes a video file in any container ffmpeg recognises (IVF, MP4) into tight I420
/// frames of `width` x `height`.
pub fn decode_ffmpeg_file(path: &Path, width: u32, height: u32) -> Result<Vec<Vec<u8>>> {
    let raw = run(Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]))?;
    let size = vpu_driver::media::i420_frame_size(width, height);
    if raw.len() % size != 0 {
        bail!(
            "ffmpeg wrote {} bytes, not whole {size} byte frames",
            raw.len()
        );
    }
    Ok(raw.chunks(size).map(<[u8]>::to_vec).collect())
}

/// `ffprobe`'s codec name, frame count and keyframe flags of the first video stream of a
/// file in any container.
pub fn probe_file(path: &Path) -> Result<(String, Vec<bool>)> {
    let codec = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(path))?;
    let frames = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame",
            "-of",
            "csv=p=0",
        ])
        .arg(path))?;
    let codec = String::from_utf8(codec).context("ffprobe output is not text")?;
    let frames = String::from_utf8(frames).context("ffprobe output is not text")?;
    Ok((
        codec.trim().to_string(),
        frames
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().starts_with('1'))
            .collect(),
    ))
}
