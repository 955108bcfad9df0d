//! A deterministic moving test pattern in I420: a drifting diagonal luma ramp, a square
//! that bounces across the picture and smooth chroma gradients. It has motion for the
//! encoder to track and detail at every scale, and is the same on every run, so tests,
//! benchmarks and demos can compare encodes of identical frames.

use super::i420_frame_size;

/// Generator of frames of one size.
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
}

impl TestPattern {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes of one frame.
    pub fn frame_size(&self) -> usize {
        i420_frame_size(self.width, self.height)
    }

    /// Frame number `n`.
    pub fn frame(&self, n: u64) -> Vec<u8> {
        let mut buf = vec![0u8; self.frame_size()];
        self.fill(n, &mut buf);
        buf
    }

    /// Writes frame number `n` into `buf` (at least `frame_size` bytes).
    pub fn fill(&self, n: u64, buf: &mut [u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        if buf.len() < w * h + 2 * cw * ch || w == 0 || h == 0 {
            return;
        }
        let t = n as usize;
        let (luma, chroma) = buf.split_at_mut(w * h);
        // Square: an eighth of the height, bouncing diagonally.
        let side = (h / 8).max(2);
        let bounce = |pos: usize, span: usize| {
            let span = span.max(1);
            let p = pos % (2 * span);
            if p < span {
                p
            } else {
                2 * span - p
            }
        };
        let sx = bounce(t * 7, w.saturating_sub(side));
        let sy = bounce(t * 5, h.saturating_sub(side));
        for y in 0..h {
            let row = &mut luma[y * w..(y + 1) * w];
            let base = y * 96 / h + t * 3;
            for (x, px) in row.iter_mut().enumerate() {
                let ramp = (x * 160 / w + base) % 200;
                let in_square = (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y);
                *px = if in_square { 235 } else { (24 + ramp) as u8 };
            }
        }
        let (u, v) = chroma.split_at_mut(cw * ch);
        for y in 0..ch {
            for x in 0..cw {
                let i = y * cw + x;
                u[i] = (80 + (x * 96 / cw + t) % 96) as u8;
                v[i] = (80 + (y * 96 / ch + t / 2) % 96) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_move() {
        let p = TestPattern::new(64, 48);
        assert_eq!(p.frame(3), p.frame(3));
        assert_ne!(p.frame(3), p.frame(4));
        assert_eq!(p.frame(0).len(), 64 * 48 * 3 / 2);
        // Odd sizes work too.
        assert_eq!(TestPattern::new(5, 3).frame(1).len(), 15 + 2 * 3 * 2);
    }
}
