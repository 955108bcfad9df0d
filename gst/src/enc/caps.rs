//! Output caps from the stream itself: profile and level read from the session's first
//! sequence parameter set, so downstream sees what the card actually produces.

use vpud_client::annexb::{nal_type, nal_units, NAL_SPS};

/// Profile and level of an H.264 stream, as GStreamer's caps name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileLevel {
    pub profile: &'static str,
    pub level: String,
}

/// Reads profile and level from the first SPS of an Annex-B access unit.
pub fn profile_level(access_unit: &[u8]) -> Option<ProfileLevel> {
    let sps = nal_units(access_unit)
        .into_iter()
        .find(|n| nal_type(n) == Some(NAL_SPS))?;
    // NAL header, profile_idc, constraint flags, level_idc.
    let (&profile_idc, &constraints, &level_idc) = (sps.get(1)?, sps.get(2)?, sps.get(3)?);
    let constraint_set1 = constraints & 0x40 != 0;
    let constraint_set3 = constraints & 0x10 != 0;
    let profile = match profile_idc {
        66 if constraint_set1 => "constrained-baseline",
        66 => "baseline",
        77 => "main",
        88 => "extended",
        100 => "high",
        110 => "high-10",
        122 => "high-4:2:2",
        244 => "high-4:4:4",
        _ => return None,
    };
    // Level 1b is level_idc 11 with constraint_set3 in Baseline/Main, or 9.
    let level = match level_idc {
        9 => "1b".to_string(),
        11 if constraint_set3 && (profile_idc == 66 || profile_idc == 77) => "1b".to_string(),
        l if l % 10 == 0 => (l / 10).to_string(),
        l => format!("{}.{}", l / 10, l % 10),
    };
    Some(ProfileLevel { profile, level })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_profile_and_level() {
        // Constrained Baseline (66, constraint_set1), level 3.1, then a PPS.
        let au = [0, 0, 0, 1, 0x67, 66, 0xc0, 31, 0xda, 0, 0, 0, 1, 0x68, 0xce];
        let pl = profile_level(&au).unwrap();
        assert_eq!(pl.profile, "constrained-baseline");
        assert_eq!(pl.level, "3.1");
        let au = [0, 0, 1, 0x67, 100, 0, 40, 0xac];
        let pl = profile_level(&au).unwrap();
        assert_eq!((pl.profile, pl.level.as_str()), ("high", "4"));
        // No SPS, or a truncated one.
        assert!(profile_level(&[0, 0, 1, 0x65, 0x88]).is_none());
        assert!(profile_level(&[0, 0, 1, 0x67, 66]).is_none());
    }
}
