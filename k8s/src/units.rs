//! The resource `vpud.io/encode-units` and what one unit is.
//!
//! One encode unit is 1/100 of one 1080p30 H.264 encode in vpud's cost model: 622 080
//! luma samples per second of H.264 (`1920 × 1080 × 30 / 100`). A card offers
//! `PixelRate / 622 080` units (rounded down), `PixelRate` being the H.264 luma samples
//! per second the whole card sustains (`Card.PixelRate`). `n` units are reserved in vpud
//! as `⌈n × 622 080 × Capacity / PixelRate⌉` load units, so 100 units hold exactly one
//! 1080p30 H.264 session, 25 units a 960×540 one, and HEVC/AV1 sessions cost their codec
//! factor more (2×, 3×). Every unit is one device ID, `vpuN-uK`: unit `K` of card `N`.

/// The extended resource the plugin advertises.
pub const RESOURCE_NAME: &str = "vpud.io/encode-units";

/// Luma samples per second of H.264 one encode unit stands for.
pub const UNIT_PIXEL_RATE: u64 = 1920 * 1080 * 30 / 100;

/// Encode units of a card sustaining `pixel_rate` H.264 luma samples per second.
pub fn card_units(pixel_rate: u64) -> u64 {
    pixel_rate / UNIT_PIXEL_RATE
}

/// Load units that hold `units` encode units on a card of `capacity` load units and
/// `pixel_rate` luma samples per second; `None` for a card that reports no pixel rate.
pub fn load_units(units: u64, capacity: u64, pixel_rate: u64) -> Option<u64> {
    if pixel_rate == 0 {
        return None;
    }
    let num = u128::from(units) * u128::from(UNIT_PIXEL_RATE) * u128::from(capacity);
    u64::try_from(num.div_ceil(u128::from(pixel_rate))).ok()
}

/// The device ID of unit `unit` of card `card`.
pub fn device_id(card: usize, unit: u64) -> String {
    format!("vpu{card}-u{unit}")
}

/// The card and unit a device ID names; `None` if it is not one of ours.
pub fn parse_device_id(id: &str) -> Option<(usize, u64)> {
    let rest = id.strip_prefix("vpu")?;
    let (card, unit) = rest.split_once("-u")?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(card) || !digits(unit) {
        return None;
    }
    Some((card.parse().ok()?, unit.parse().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_hundred_units_hold_a_1080p30_session() {
        // The emulated card: 2 engines of 1 000 000 load units, each 720p240.
        let (capacity, pixel_rate) = (2_000_000, 2 * 1280 * 720 * 240);
        assert_eq!(card_units(pixel_rate), 711);
        // 1080p30 costs 281 250 load units on it (vpud's cost model).
        assert_eq!(load_units(100, capacity, pixel_rate), Some(281_250));
        assert_eq!(load_units(25, capacity, pixel_rate), Some(70_313));
        // All of a card's units always fit its capacity.
        let all = load_units(card_units(pixel_rate), capacity, pixel_rate).unwrap();
        assert!(all <= capacity, "{all}");
        assert_eq!(load_units(1, capacity, 0), None);
    }

    #[test]
    fn device_ids_round_trip_and_strangers_are_refused() {
        assert_eq!(device_id(3, 42), "vpu3-u42");
        assert_eq!(parse_device_id("vpu3-u42"), Some((3, 42)));
        for bad in [
            "",
            "vpu",
            "vpu3",
            "vpu3-u",
            "vpu-u1",
            "gpu3-u1",
            "vpu3-u1x",
            "vpu+3-u1",
            "vpu3-u-1",
            "vpu99999999999999999999-u1",
        ] {
            assert_eq!(parse_device_id(bad), None, "{bad}");
        }
    }
}
