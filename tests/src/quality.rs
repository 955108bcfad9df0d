//! Picture quality: PSNR between reference and decoded I420 frames.

/// PSNR in dB of `decoded` against `reference` over all bytes (Y, U and V); infinite for
/// identical input.
pub fn psnr(reference: &[u8], decoded: &[u8]) -> f64 {
    assert_eq!(reference.len(), decoded.len(), "frames differ in size");
    let mse = reference
        .iter()
        .zip(decoded)
        .map(|(a, b)| {
            let d = f64::from(*a) - f64::from(*b);
            d * d
        })
        .sum::<f64>()
        / reference.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// PSNR of the luma plane only (`width` x `height` bytes at the start of each frame).
pub fn psnr_luma(reference: &[u8], decoded: &[u8], width: u32, height: u32) -> f64 {
    let n = width as usize * height as usize;
    psnr(&reference[..n], &decoded[..n])
}

/// Mean PSNR over a clip; panics when the clips differ in length.
pub fn mean_psnr(reference: &[Vec<u8>], decoded: &[Vec<u8>]) -> f64 {
    assert_eq!(
        reference.len(),
        decoded.len(),
        "clips differ in frame count"
    );
    let capped: f64 = reference
        .iter()
        .zip(decoded)
        .map(|(r, d)| psnr(r, d).min(100.0))
        .sum();
    capped / reference.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_error() {
        let a = vec![100u8; 1000];
        let mut b = a.clone();
        assert!(psnr(&a, &b).is_infinite());
        b.iter_mut().for_each(|v| *v += 1);
        assert!((psnr(&a, &b) - 48.13).abs() < 0.01);
    }
}
