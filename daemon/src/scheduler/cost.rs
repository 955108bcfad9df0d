//! The cost model: how many load units a session needs on a given card
//! (`docs/scheduling.md`).
//!
//! A card declares, per encode engine and codec (Identify's engine table), its capacity
//! in load units and the pixel rate (luma samples per second) that capacity stands for
//! with that codec. A session's demand is its pixel rate (`width × height × fps`) as a
//! share of the pixel rate of the engines that encode its codec, in their load units; at
//! least one unit, and at most one engine's capacity, since a session runs on one engine.
//! Each codec is costed from its own entries: an AV1 session on an engine that codes AV1
//! at a tenth of its H.264 rate costs ten times the H.264 session of the same size.
//!
//! A card without an engine table (older firmware) declares one pixel rate for all its
//! engines, which encode every codec it lists at that rate (`vpu.h`); the driver
//! synthesises its table so (`CardIdentity::engines`).

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

/// What one encode engine offers for one codec (an entry of Identify's engine table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderLimits {
    /// The engine's index among the card's encode engines.
    pub engine: u8,
    pub codec: Codec,
    /// Load units the engine provides (shared by all its codecs).
    pub capacity: u32,
    /// Luma samples per second it sustains with this codec.
    pub pixel_rate: u64,
    pub max_width: u32,
    pub max_height: u32,
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
    /// Per engine and codec, from the engine table; empty for a card without one (the
    /// fields above then describe every engine).
    pub encoders: Vec<EncoderLimits>,
}

impl CardLimits {
    /// Load units of the whole card.
    pub fn capacity(&self) -> u64 {
        u64::from(self.engines) * u64::from(self.capacity_per_engine)
    }

    /// What the card's engines offer for `codec`: its engine table's entries or, for
    /// limits without entries, every engine at `pixel_rate_per_engine`.
    pub fn encoders_for(&self, codec: Codec) -> Vec<EncoderLimits> {
        if !self.encoders.is_empty() {
            return self
                .encoders
                .iter()
                .filter(|e| e.codec == codec)
                .cloned()
                .collect();
        }
        if !self.codecs.contains(&codec) {
            return Vec::new();
        }
        let pixel_rate = self.pixel_rate_per_engine;
        (0..self.engines)
            .map(|engine| EncoderLimits {
                engine,
                codec,
                capacity: self.capacity_per_engine,
                pixel_rate,
                max_width: self.max_width,
                max_height: self.max_height,
            })
            .collect()
    }

    /// Codecs some engine of the card encodes, in `Codec::ALL` order.
    pub fn encode_codecs(&self) -> Vec<Codec> {
        Codec::ALL
            .iter()
            .copied()
            .filter(|&c| !self.encoders_for(c).is_empty())
            .collect()
    }

    /// Load units of the engines that encode any of `codecs` (each engine once).
    pub fn capacity_for(&self, codecs: &[Codec]) -> u64 {
        let mut engines: Vec<(u8, u32)> = codecs
            .iter()
            .flat_map(|&c| self.encoders_for(c))
            .map(|e| (e.engine, e.capacity))
            .collect();
        engines.sort_unstable();
        engines.dedup_by_key(|e| e.0);
        engines.iter().map(|e| u64::from(e.1)).sum()
    }

    /// Whether an engine of the card encodes `demand`'s codec at its size.
    pub fn supports(&self, demand: &Demand) -> bool {
        self.encoders_for(demand.codec)
            .iter()
            .any(|e| demand.width <= e.max_width && demand.height <= e.max_height)
    }

    /// What the card encodes, for error messages: `h264 up to 3840x2160, av1 up to …`.
    pub fn offer(&self) -> String {
        let parts: Vec<String> = self
            .encode_codecs()
            .into_iter()
            .map(|c| {
                let e = self.encoders_for(c);
                let w = e.iter().map(|e| e.max_width).max().unwrap_or(0);
                let h = e.iter().map(|e| e.max_height).max().unwrap_or(0);
                format!("{c} up to {w}x{h}")
            })
            .collect();
        if parts.is_empty() {
            "no codec".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Load units `demand` takes on a card with `limits`: its pixel rate over the pixel rate
/// of the engines that encode its codec, times their capacity. A card that does not
/// encode the codec gives one engine's capacity (it is never placed there).
pub fn demand_units(demand: &Demand, limits: &CardLimits) -> u64 {
    let encoders = limits.encoders_for(demand.codec);
    let capacity: u128 = encoders.iter().map(|e| u128::from(e.capacity)).sum();
    let pixel_rate: u128 = encoders.iter().map(|e| u128::from(e.pixel_rate)).sum();
    let per_engine = encoders
        .iter()
        .map(|e| u128::from(e.capacity))
        .max()
        .unwrap_or(u128::from(limits.capacity_per_engine));
    if encoders.is_empty() {
        return per_engine.max(1) as u64;
    }
    let den = u128::from(demand.fps_den.max(1)) * pixel_rate.max(1);
    let pixel_rate_num =
        u128::from(demand.width) * u128::from(demand.height) * u128::from(demand.fps_num);
    let units = (pixel_rate_num * capacity).div_ceil(den);
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
            encoders: Vec::new(),
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
        // A codec the card lists without its own figures costs what its engines declare.
        d.codec = Codec::Hevc;
        assert_eq!(demand_units(&d, &limits()), 1_000_000);
        let mut l = limits();
        l.codecs.push(Codec::Hevc);
        assert_eq!(demand_units(&d, &l), 124_876);
    }

    /// One H.264 engine and one AV1 engine that codes 720p at 24 frames/s.
    fn mixed() -> CardLimits {
        let e = |engine, codec, pixel_rate| EncoderLimits {
            engine,
            codec,
            capacity: 1_000_000,
            pixel_rate,
            max_width: 3840,
            max_height: 2160,
        };
        CardLimits {
            codecs: vec![Codec::H264, Codec::Av1],
            encoders: vec![
                e(0, Codec::H264, 1280 * 720 * 240),
                e(1, Codec::Av1, 1280 * 720 * 24),
            ],
            ..limits()
        }
    }

    #[test]
    fn each_codec_is_costed_from_its_own_engines() {
        let l = mixed();
        assert_eq!(demand_units(&demand(1280, 720, 30), &l), 125_000);
        let mut d = demand(640, 360, 12);
        d.codec = Codec::Av1;
        // A quarter of the picture at half the rate: an eighth of the AV1 engine.
        assert_eq!(demand_units(&d, &l), 125_000);
        d.width = 1280;
        d.height = 720;
        d.fps_num = 30;
        // More than the AV1 engine sustains: capped at one engine.
        assert_eq!(demand_units(&d, &l), 1_000_000);
        assert_eq!(l.encode_codecs(), vec![Codec::H264, Codec::Av1]);
        assert_eq!(l.capacity_for(&[Codec::Av1]), 1_000_000);
        assert_eq!(l.capacity_for(&[Codec::H264, Codec::Av1]), 2_000_000);
        assert!(!l.supports(&Demand {
            codec: Codec::Hevc,
            ..demand(64, 64, 30)
        }));
        assert_eq!(
            l.offer(),
            "h264 up to 3840x2160, av1 up to 3840x2160".to_string()
        );
    }
}
