//! The cost model: how many load units a session needs on a given card
//! (`docs/scheduling.md`).
//!
//! A card declares, per encode engine, its capacity in load units and the H.264 pixel rate
//! (luma samples per second) that capacity stands for. A session's demand is its pixel
//! rate (`width × height × fps`) as a share of one engine's pixel rate, times a codec
//! factor, in that engine's load units; at least one unit, and at most one engine's
//! capacity, since a session runs on one engine.

use vpu_driver::card::Codec;

/// What a session asks of a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps_num: u32,
    pub fps_den: u32,
    pub priority: Priority,
    /// The reservation (`Manager.Reserve`) the session draws on, if any: it is placed on
    /// the reservation's card, within the reservation's units.
    pub reservation: Option<u64>,
}

/// Realtime sessions may use all of a card; batch sessions leave a reserve to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    Realtime,
    Batch,
}

impl Priority {
    /// Every priority.
    pub const ALL: &'static [Priority] = &[Priority::Realtime, Priority::Batch];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Realtime => "realtime",
            Priority::Batch => "batch",
        }
    }
}

/// What the scheduler knows about a card, from its Identify data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardLimits {
    pub engines: u8,
    pub capacity_per_engine: u32,
    /// H.264 luma samples per second one engine sustains.
    pub pixel_rate_per_engine: u64,
    /// Codecs the card encodes.
    pub codecs: Vec<Codec>,
    pub max_width: u32,
    pub max_height: u32,
    /// Concurrent sessions, all engines together.
    pub max_sessions: u32,
}

impl CardLimits {
    /// Load units of the whole card.
    pub fn capacity(&self) -> u64 {
        u64::from(self.engines) * u64::from(self.capacity_per_engine)
    }
}

/// Relative cost of a codec against H.264 at the same pixel rate, in percent.
pub fn codec_factor_percent(codec: Codec) -> u64 {
    match codec {
        Codec::H264 => 100,
        Codec::Hevc => 200,
        Codec::Av1 => 300,
    }
}

/// Load units `demand` takes on a card with `limits`.
pub fn demand_units(demand: &Demand, limits: &CardLimits) -> u64 {
    let per_engine = u128::from(limits.capacity_per_engine);
    let den = u128::from(demand.fps_den.max(1)) * u128::from(limits.pixel_rate_per_engine.max(1));
    let pixel_rate_num =
        u128::from(demand.width) * u128::from(demand.height) * u128::from(demand.fps_num);
    let units = (pixel_rate_num * per_engine * u128::from(codec_factor_percent(demand.codec)))
        .div_ceil(den * 100);
    units.clamp(1, per_engine.max(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CardLimits {
        CardLimits {
            engines: 2,
            capacity_per_engine: 1_000_000,
            pixel_rate_per_engine: 1280 * 720 * 240,
            codecs: vec![Codec::H264],
            max_width: 4096,
            max_height: 2304,
            max_sessions: 32,
        }
    }

    fn demand(w: u32, h: u32, fps: u32) -> Demand {
        Demand {
            codec: Codec::H264,
            width: w,
            height: h,
            fps_num: fps,
            fps_den: 1,
            priority: Priority::Realtime,
            reservation: None,
        }
    }

    #[test]
    fn demand_is_the_share_of_an_engines_pixel_rate() {
        // 720p30 is an eighth of 720p240.
        assert_eq!(demand_units(&demand(1280, 720, 30), &limits()), 125_000);
        // 1080p60 is 2.25× 720p60: 0.5625 of an engine.
        assert_eq!(demand_units(&demand(1920, 1080, 60), &limits()), 562_500);
    }

    #[test]
    fn demand_is_capped_at_one_engine_and_at_least_one_unit() {
        assert_eq!(demand_units(&demand(3840, 2160, 120), &limits()), 1_000_000);
        assert_eq!(demand_units(&demand(2, 2, 1), &limits()), 1);
    }

    #[test]
    fn fractional_frame_rates_and_codecs_count() {
        let mut d = demand(1280, 720, 30000);
        d.fps_den = 1001;
        assert_eq!(demand_units(&d, &limits()), 124_876);
        d.codec = Codec::Hevc;
        assert_eq!(demand_units(&d, &limits()), 249_751);
    }
}
