//! The scaler: Scale Frame, one card picture to a new one of another size.
//!
//! An I420 picture is three single-channel 8-bit planes; each is resized on its own with
//! `fast_image_resize` (convolution filters with SIMD paths), luma to the new size and
//! both chroma planes to half of it, as any 4:2:0 scaler does.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use vpu_ffi::*;

use super::frames::CardFrame;
use super::queues::Status;

/// The smallest picture the scaler produces (each side).
pub(super) const MIN_SIDE: usize = 16;

/// Scaling filters, as `VPU_SCALE_FILTER_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filter {
    Bilinear,
    Bicubic,
    Lanczos3,
}

impl Filter {
    pub fn from_code(code: u32) -> Option<Filter> {
        Some(match code {
            VPU_SCALE_FILTER_BILINEAR => Filter::Bilinear,
            VPU_SCALE_FILTER_BICUBIC => Filter::Bicubic,
            VPU_SCALE_FILTER_LANCZOS3 => Filter::Lanczos3,
            _ => return None,
        })
    }

    fn alg(self) -> ResizeAlg {
        ResizeAlg::Convolution(match self {
            Filter::Bilinear => FilterType::Bilinear,
            Filter::Bicubic => FilterType::CatmullRom,
            Filter::Lanczos3 => FilterType::Lanczos3,
        })
    }
}

/// Resizes one plane of `sw` × `sh` bytes into `dst` of `dw` × `dh`.
fn plane(
    resizer: &mut Resizer,
    options: &ResizeOptions,
    src: &[u8],
    (sw, sh): (usize, usize),
    dst: &mut [u8],
    (dw, dh): (usize, usize),
) -> Result<(), Status> {
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "scaling a plane failed");
        Status::generic(VPU_SC_INTERNAL_ERROR)
    };
    let src = ImageRef::new(sw as u32, sh as u32, src, PixelType::U8).map_err(|e| internal(&e))?;
    let mut dst =
        Image::from_slice_u8(dw as u32, dh as u32, dst, PixelType::U8).map_err(|e| internal(&e))?;
    resizer
        .resize(&src, &mut dst, options)
        .map_err(|e| internal(&e))
}

/// Scales `src` to `width` × `height` with `filter`. `width` and `height` are even and at
/// least [`MIN_SIDE`] (the caller checks the command's fields).
pub(super) fn scale(
    resizer: &mut Resizer,
    src: &CardFrame,
    width: usize,
    height: usize,
    filter: Filter,
) -> Result<CardFrame, Status> {
    let mut out = CardFrame::new(width, height);
    if src.width == width && src.height == height {
        out.data.copy_from_slice(&src.data);
        return Ok(out);
    }
    let options = ResizeOptions::new().resize_alg(filter.alg());
    let (sy, su, sv) = src.planes();
    let (dy, du, dv) = out.planes_mut();
    let (sc, dc) = ((src.width / 2, src.height / 2), (width / 2, height / 2));
    plane(
        resizer,
        &options,
        sy,
        (src.width, src.height),
        dy,
        (width, height),
    )?;
    plane(resizer, &options, su, sc, du, dc)?;
    plane(resizer, &options, sv, sc, dv, dc)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_picture_stays_flat_at_any_size() {
        let mut resizer = Resizer::new();
        let src = CardFrame::new(64, 48);
        for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3] {
            let out = scale(&mut resizer, &src, 32, 18, f).expect("scaled");
            let (y, u, v) = out.planes();
            assert_eq!((y.len(), u.len(), v.len()), (32 * 18, 16 * 9, 16 * 9));
            assert!(y.iter().all(|&b| b == 16) && u.iter().chain(v).all(|&b| b == 128));
        }
    }

    #[test]
    fn a_gradient_keeps_its_direction_and_range() {
        let mut resizer = Resizer::new();
        let mut src = CardFrame::new(256, 16);
        {
            let (y, _, _) = src.planes_mut();
            for row in y.chunks_mut(256) {
                for (x, p) in row.iter_mut().enumerate() {
                    *p = x as u8;
                }
            }
        }
        let out = scale(&mut resizer, &src, 64, 16, Filter::Bilinear).expect("scaled");
        let row = &out.planes().0[..64];
        assert!(row.windows(2).all(|w| w[1] >= w[0]), "{row:?}");
        assert!(row[0] < 8 && row[63] > 247, "{row:?}");
    }
}
