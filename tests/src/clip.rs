//! Synthetic clips: the driver's moving test pattern, frame by frame, as I420.

use vpu_driver::media::TestPattern;

/// `frames` frames of the moving test pattern at `width` x `height`.
pub fn synthetic_clip(width: u32, height: u32, frames: usize) -> Vec<Vec<u8>> {
    let pattern = TestPattern::new(width, height);
    (0..frames as u64).map(|n| pattern.frame(n)).collect()
}
