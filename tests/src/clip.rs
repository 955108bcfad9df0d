//! Synthetic clips: the driver's moving test pattern, frame by frame, as I420.

use vpu_driver::media::TestPattern;

/// `frames` frames of the moving test pattern at `width` x `height`.
pub fn synthetic_clip(width: u32, height: u32, frames: usize) -> Vec<Vec<u8>> {
    let pattern = TestPattern::new(width, height);
    (0..frames as u64).map(|n| pattern.frame(n)).collect()
}

/// `frames` frames of ffmpeg's `testsrc2` at `width` x `height` and `fps`, as I420 (the
/// clip quality figures are quoted on; needs ffmpeg).
pub fn testsrc2(width: u32, height: u32, fps: u32, frames: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    use anyhow::{bail, Context};
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={width}x{height}:rate={fps}"))
        .args(["-frames:v", &frames.to_string()])
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .context("running ffmpeg (Debian package ffmpeg)")?;
    if !out.status.success() {
        bail!("ffmpeg testsrc2: {}", String::from_utf8_lossy(&out.stderr));
    }
    let size = vpu_driver::media::i420_frame_size(width, height);
    let clip: Vec<Vec<u8>> = out.stdout.chunks(size).map(<[u8]>::to_vec).collect();
    if clip.len() != frames || out.stdout.len() % size != 0 {
        bail!("ffmpeg gave {} bytes for {frames} frames", out.stdout.len());
    }
    Ok(clip)
}
