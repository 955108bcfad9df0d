//! The few fields of an H.264 sequence parameter set (ITU-T H.264 7.3.2.1.1) that a
//! transcode needs before the first frame is decoded: the coded size after cropping, the
//! chroma format, the frame rate from the VUI timing info, and the profile/level bytes that
//! name the stream in an HLS `CODECS` attribute.

/// Errors of SPS parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpsError {
    /// The NAL unit is not an SPS.
    #[error("nal unit of type {0} is not a sequence parameter set")]
    NotSps(u8),
    /// The SPS ended inside a field.
    #[error("the sequence parameter set is truncated (in {0})")]
    Truncated(&'static str),
    /// A field holds a value the standard does not allow.
    #[error("the sequence parameter set has an invalid {field} ({value})")]
    Invalid { field: &'static str, value: u64 },
}

/// What a transcode needs from an SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpsInfo {
    /// `profile_idc`, the constraint flags byte and `level_idc`, as in `avcC` and `CODECS`.
    pub profile_idc: u8,
    pub constraints: u8,
    pub level_idc: u8,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u32,
    pub bit_depth: u32,
    /// Displayed size: the coded macroblocks minus the cropping window.
    pub width: u32,
    pub height: u32,
    /// Field-coded pictures are possible (`frame_mbs_only_flag` = 0).
    pub interlaced: bool,
    /// Frames per second as (numerator, denominator), when the VUI carries timing info.
    pub fps: Option<(u32, u32)>,
}

impl SpsInfo {
    /// The RFC 6381 codec string, such as `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraints, self.level_idc
        )
    }
}

/// The RBSP of a NAL unit: emulation-prevention bytes (the 3 of `00 00 03`) removed.
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// An MSB-first bit reader over an RBSP.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self, field: &'static str) -> Result<u32, SpsError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(SpsError::Truncated(field))?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    fn bits(&mut self, n: u32, field: &'static str) -> Result<u32, SpsError> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit(field)?;
        }
        Ok(v)
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, SpsError> {
        Ok(self.bit(field)? == 1)
    }

    /// `ue(v)`: Exp-Golomb, at most 32 bits of value.
    fn ue(&mut self, field: &'static str) -> Result<u32, SpsError> {
        let mut zeros = 0u32;
        while self.bit(field)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(SpsError::Invalid {
                    field,
                    value: u64::from(zeros),
                });
            }
        }
        let rest = self.bits(zeros, field)?;
        let v = (1u64 << zeros) - 1 + u64::from(rest);
        u32::try_from(v).map_err(|_| SpsError::Invalid { field, value: v })
    }

    fn se(&mut self, field: &'static str) -> Result<i64, SpsError> {
        let k = i64::from(self.ue(field)?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    fn ue_max(&mut self, field: &'static str, max: u32) -> Result<u32, SpsError> {
        let v = self.ue(field)?;
        if v > max {
            return Err(SpsError::Invalid {
                field,
                value: u64::from(v),
            });
        }
        Ok(v)
    }
}

/// Parses an SPS NAL unit (header byte included, start code not).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, SpsError> {
    let kind = nal.first().map_or(0, |b| b & 0x1f);
    if kind != 7 {
        return Err(SpsError::NotSps(kind));
    }
    let data = rbsp(&nal[1..]);
    let mut b = Bits {
        data: &data,
        pos: 0,
    };
    let profile_idc = b.bits(8, "profile_idc")? as u8;
    let constraints = b.bits(8, "constraint flags")? as u8;
    let level_idc = b.bits(8, "level_idc")? as u8;
    b.ue_max("seq_parameter_set_id", 31)?;
    let mut chroma_format_idc = 1;
    let mut bit_depth = 8;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = b.ue_max("chroma_format_idc", 3)?;
        if chroma_format_idc == 3 {
            b.flag("separate_colour_plane_flag")?;
        }
        bit_depth = 8 + b.ue_max("bit_depth_luma_minus8", 6)?;
        b.ue_max("bit_depth_chroma_minus8", 6)?;
        b.flag("qpprime_y_zero_transform_bypass_flag")?;
        if b.flag("seq_scaling_matrix_present_flag")? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if b.flag("seq_scaling_list_present_flag")? {
                    skip_scaling_list(&mut b, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    b.ue_max("log2_max_frame_num_minus4", 12)?;
    match b.ue_max("pic_order_cnt_type", 2)? {
        0 => {
            b.ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)?;
        }
        1 => {
            b.flag("delta_pic_order_always_zero_flag")?;
            b.se("offset_for_non_ref_pic")?;
            b.se("offset_for_top_to_bottom_field")?;
            let n = b.ue_max("num_ref_frames_in_pic_order_cnt_cycle", 255)?;
            for _ in 0..n {
                b.se("offset_for_ref_frame")?;
            }
        }
        _ => {}
    }
    b.ue_max("max_num_ref_frames", 16)?;
    b.flag("gaps_in_frame_num_value_allowed_flag")?;
    let width_mbs = b.ue_max("pic_width_in_mbs_minus1", 1023)? + 1;
    let height_units = b.ue_max("pic_height_in_map_units_minus1", 1023)? + 1;
    let frame_mbs_only = b.flag("frame_mbs_only_flag")?;
    if !frame_mbs_only {
        b.flag("mb_adaptive_frame_field_flag")?;
    }
    b.flag("direct_8x8_inference_flag")?;
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let mut width = width_mbs * 16;
    let mut height = height_units * 16 * field_factor;
    if b.flag("frame_cropping_flag")? {
        let (crop_x, crop_y) = match chroma_format_idc {
            1 => (2, 2 * field_factor),
            2 => (2, field_factor),
            _ => (1, field_factor),
        };
        let left = b.ue_max("frame_crop_left_offset", 8192)?;
        let right = b.ue_max("frame_crop_right_offset", 8192)?;
        let top = b.ue_max("frame_crop_top_offset", 8192)?;
        let bottom = b.ue_max("frame_crop_bottom_offset", 8192)?;
        let cut_w = (left + right) * crop_x;
        let cut_h = (top + bottom) * crop_y;
        if cut_w >= width || cut_h >= height {
            return Err(SpsError::Invalid {
                field: "frame cropping",
                value: u64::from(cut_w.max(cut_h)),
            });
        }
        width -= cut_w;
        height -= cut_h;
    }
    let fps = if b.flag("vui_parameters_present_flag")? {
        vui_fps(&mut b)?
    } else {
        None
    };
    Ok(SpsInfo {
        profile_idc,
        constraints,
        level_idc,
        chroma_format_idc,
        bit_depth,
        width,
        height,
        interlaced: !frame_mbs_only,
        fps,
    })
}

fn skip_scaling_list(b: &mut Bits<'_>, size: usize) -> Result<(), SpsError> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = b.se("delta_scale")?;
            next = (last + delta + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// The frame rate of the VUI's timing info, read up to it (E.1.1).
fn vui_fps(b: &mut Bits<'_>) -> Result<Option<(u32, u32)>, SpsError> {
    if b.flag("aspect_ratio_info_present_flag")? && b.bits(8, "aspect_ratio_idc")? == 255 {
        b.bits(32, "sar")?;
    }
    if b.flag("overscan_info_present_flag")? {
        b.flag("overscan_appropriate_flag")?;
    }
    if b.flag("video_signal_type_present_flag")? {
        b.bits(4, "video_format")?;
        if b.flag("colour_description_present_flag")? {
            b.bits(24, "colour description")?;
        }
    }
    if b.flag("chroma_loc_info_present_flag")? {
        b.ue("chroma_sample_loc_type_top_field")?;
        b.ue("chroma_sample_loc_type_bottom_field")?;
    }
    if !b.flag("timing_info_present_flag")? {
        return Ok(None);
    }
    let units = b.bits(32, "num_units_in_tick")?;
    let scale = b.bits(32, "time_scale")?;
    if units == 0 || scale == 0 {
        return Ok(None);
    }
    // A frame is two ticks (field-based clock, E.2.1).
    let (mut num, mut den) = (u64::from(scale), 2 * u64::from(units));
    let g = gcd(num, den);
    num /= g;
    den /= g;
    match (u32::try_from(num), u32::try_from(den)) {
        (Ok(n), Ok(d)) if n / d <= 1000 => Ok(Some((n, d))),
        _ => Ok(None),
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn removes_emulation_prevention() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3]), [0, 0, 1, 0, 0]);
        assert_eq!(rbsp(&[0, 3, 0]), [0, 3, 0]);
    }

    #[test]
    fn hostile_sps_is_an_error_not_a_panic() {
        assert_eq!(parse_sps(&[0x68, 1]), Err(SpsError::NotSps(8)));
        assert!(matches!(
            parse_sps(&[0x67, 0x64]),
            Err(SpsError::Truncated(_))
        ));
        // 40 zero bits: an Exp-Golomb code too long for 32 bits.
        assert!(matches!(
            parse_sps(&[0x67, 66, 0, 30, 0, 0, 0, 0, 0, 0]),
            Err(SpsError::Invalid { .. })
        ));
        for len in 0..64 {
            let nal: Vec<u8> = (0..len).map(|i| (i * 37 + 0x67) as u8).collect();
            let _ = parse_sps(&nal);
        }
    }
}
