//! Raw video for examples, tools, tests and benchmarks: YUV4MPEG2 (Y4M) files in 4:2:0
//! 8-bit (and luma-only, read as grey I420) and a synthetic moving test pattern, all as
//! I420 frames.
//!
//! - [`y4m`]: reading and writing Y4M;
//! - [`pattern`]: a deterministic moving test pattern generator.

mod error;
pub mod pattern;
pub mod y4m;

pub use error::MediaError;
pub use pattern::TestPattern;
pub use y4m::{Interlace, Y4mHeader, Y4mReader, Y4mWriter};

/// Bytes of one I420 frame of `width` x `height` (chroma rounded up).
pub fn i420_frame_size(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
}
