//! The Create Session parameter block.

use std::mem::offset_of;

use vpu_ffi::{vpu_session_params, VPU_SESSION_LOW_LATENCY};

use super::types::SessionConfig;

/// The Create Session parameter block, little-endian at the offsets of `vpu.h`.
pub(super) fn session_params(cfg: &SessionConfig) -> Vec<u8> {
    let mut b = vec![0u8; std::mem::size_of::<vpu_session_params>()];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    let (stride_y, stride_uv) = cfg.pixel_format.strides(cfg.width);
    put(
        offset_of!(vpu_session_params, codec),
        &[cfg.codec.code() as u8],
    );
    put(
        offset_of!(vpu_session_params, pixel_format),
        &[cfg.pixel_format.code() as u8],
    );
    put(
        offset_of!(vpu_session_params, width),
        &(cfg.width as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, height),
        &(cfg.height as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, fps_num),
        &cfg.fps_num.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, fps_den),
        &cfg.fps_den.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, stride_y),
        &stride_y.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, stride_uv),
        &stride_uv.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, rate_control),
        &[cfg.rate_control.code() as u8],
    );
    put(offset_of!(vpu_session_params, qp), &[cfg.qp]);
    let flags = if cfg.low_latency {
        VPU_SESSION_LOW_LATENCY
    } else {
        0
    };
    put(offset_of!(vpu_session_params, flags), &[flags as u8]);
    put(
        offset_of!(vpu_session_params, bitrate),
        &cfg.bitrate.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, max_bitrate),
        &cfg.max_bitrate.to_le_bytes(),
    );
    put(offset_of!(vpu_session_params, gop), &cfg.gop.to_le_bytes());
    put(
        offset_of!(vpu_session_params, engine_hint),
        &cfg.engine_code().to_le_bytes(),
    );
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::card::types::{PixelFormat, RateControl};

    #[test]
    fn session_params_layout() {
        let cfg = SessionConfig {
            width: 1920,
            height: 1080,
            pixel_format: PixelFormat::Nv12,
            rate_control: RateControl::Vbr,
            bitrate: 6_000_000,
            gop: 120,
            engine_hint: Some(1),
            ..SessionConfig::default()
        };
        let b = session_params(&cfg);
        assert_eq!(b.len(), 64);
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 1920);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1080);
        assert_eq!(b[3], 1); // NV12
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 1920);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1920);
        assert_eq!(b[24], 1); // VBR
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 6_000_000);
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 120);
        assert_eq!(u16::from_le_bytes([b[44], b[45]]), 1);
    }
}
