//! Transcode ladders in the book: one decode, the scaling, and every rendition's encode,
//! admitted together on one card or not at all (`docs/scheduling.md`).
//!
//! A ladder is placed like a session (policy, quotas, reservations, card states), with its
//! units on a card computed here instead of by [`demand_units`]: the sum of its renditions'
//! encode units, which count against the card's encode capacity as any session's do. Its
//! decode and scale work must also fit the card's decode and scaler engines, whose
//! capacities are kept apart (they do not add to `Card.Capacity`): a card without them,
//! or whose decoders or scalers are taken by other ladders, is not a candidate.

use std::collections::HashMap;

use super::book::Scheduler;
use super::cost::{demand_units, Demand, Priority};
use super::{Placement, SchedError};

/// What a card's decode and scale engines can do (from its engine capability table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeLimits {
    pub decode_engines: u8,
    /// Load units one decode engine provides.
    pub decode_capacity_per_engine: u32,
    /// Luma samples per second one decode engine sustains.
    pub decode_pixel_rate: u64,
    pub scale_engines: u8,
    pub scale_capacity_per_engine: u32,
    /// Output luma samples per second one scaler sustains.
    pub scale_pixel_rate: u64,
}

/// What a ladder asks of a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LadderDemand {
    /// The input: codec, size (the largest rendition's when not given), frame rate.
    pub input: Demand,
    /// One encode per rendition (at the input's frame rate).
    pub outputs: Vec<Demand>,
    pub priority: Priority,
    pub reservation: Option<u64>,
}

/// The units a ladder takes on one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LadderUnits {
    /// Against the card's encode capacity (the placement's units).
    pub encode: u64,
    pub decode: u64,
    pub scale: u64,
}

fn share(pixels_per_s: u128, rate: u64, capacity: u32) -> u64 {
    let units = (pixels_per_s * u128::from(capacity)).div_ceil(u128::from(rate.max(1)));
    units.max(1).min(u128::from(u64::MAX)) as u64
}

fn luma_rate(d: &Demand) -> u128 {
    (u128::from(d.width) * u128::from(d.height) * u128::from(d.fps_num))
        / u128::from(d.fps_den.max(1))
}

impl LadderDemand {
    /// The demand that stands for the ladder in checks and messages: the largest picture
    /// of the ladder, at the input's rate.
    pub fn representative(&self) -> Demand {
        let mut d = self.input.clone();
        for o in &self.outputs {
            d.width = d.width.max(o.width);
            d.height = d.height.max(o.height);
        }
        d.priority = self.priority;
        d.reservation = self.reservation;
        d
    }

    /// Units on a card with encode limits `limits` and transcode limits `t`; `None` when
    /// the card's single decode engine could not keep up with the input.
    pub fn units(&self, limits: &super::CardLimits, t: &TranscodeLimits) -> Option<LadderUnits> {
        let encode = self.outputs.iter().map(|o| demand_units(o, limits)).sum();
        // A stream is decoded by one engine: it must fit in one.
        let decode = share(
            luma_rate(&self.input),
            t.decode_pixel_rate,
            t.decode_capacity_per_engine,
        );
        if decode > u64::from(t.decode_capacity_per_engine) {
            return None;
        }
        // Renditions of the input's own size need no scaling.
        let scaled: u128 = self
            .outputs
            .iter()
            .filter(|o| (o.width, o.height) != (self.input.width, self.input.height))
            .map(luma_rate)
            .sum();
        let scale = if scaled == 0 {
            0
        } else {
            share(scaled, t.scale_pixel_rate, t.scale_capacity_per_engine)
        };
        Some(LadderUnits {
            encode,
            decode,
            scale,
        })
    }
}

/// The ladders on the book, by session number.
#[derive(Debug, Default)]
pub(super) struct Ladders {
    pub(super) demands: HashMap<u64, LadderDemand>,
    /// Units of each placed ladder (and, while placing, of the one being placed).
    pub(super) units: HashMap<u64, (usize, LadderUnits)>,
    pub(super) limits: HashMap<usize, TranscodeLimits>,
}

impl Scheduler {
    /// Records what card `card`'s decoders and scalers can do (`None`: it has none).
    pub fn set_transcode_limits(&mut self, card: usize, limits: Option<TranscodeLimits>) {
        match limits {
            Some(l) => self.ladders.limits.insert(card, l),
            None => self.ladders.limits.remove(&card),
        };
    }

    /// Whether any card can transcode at all.
    pub fn can_transcode(&self) -> bool {
        !self.ladders.limits.is_empty()
    }

    /// Admits and places a ladder as session `session`: all of it on one card, or
    /// nothing. `NoCapacity` when no single card can take it; `NotSupported` when no card
    /// transcodes.
    pub fn place_ladder(
        &mut self,
        session: u64,
        client: &str,
        ladder: &LadderDemand,
        pinned: Option<usize>,
        exclude: &[usize],
    ) -> Result<Placement, SchedError> {
        if !self.can_transcode() {
            return Err(SchedError::NotSupported {
                what: "transcoding (decode and scale engines)".into(),
                accepted: "encoding only".into(),
            });
        }
        // Cards without transcoding engines are left out from the start.
        let mut excluded: Vec<usize> = exclude.to_vec();
        excluded.extend((0..self.cards.len()).filter(|c| !self.ladders.limits.contains_key(c)));
        if let Some(p) = pinned {
            if !self.ladders.limits.contains_key(&p) && p < self.cards.len() {
                return Err(SchedError::NotSupported {
                    what: format!("transcoding on card {p}"),
                    accepted: "cards with decode and scale engines".into(),
                });
            }
        }
        self.ladders.demands.insert(session, ladder.clone());
        let placed = self.place(session, client, &ladder.representative(), pinned, &excluded);
        match &placed {
            Ok(p) => {
                let units = self.ladder_units(session, p.card).unwrap_or_default();
                self.ladders.units.insert(session, (p.card, units));
            }
            Err(_) => {
                self.ladders.demands.remove(&session);
            }
        }
        placed
    }

    /// The units of ladder `session` on card `card`, if it fits the card's decode and
    /// scale engines beside the ladders already there.
    fn ladder_units(&self, session: u64, card: usize) -> Option<LadderUnits> {
        let ladder = self.ladders.demands.get(&session)?;
        let t = self.ladders.limits.get(&card)?;
        let units = ladder.units(&self.cards.get(card)?.limits, t)?;
        let (mut decode, mut scale) = (units.decode, units.scale);
        for (s, (c, u)) in &self.ladders.units {
            if *c == card && *s != session {
                decode += u.decode;
                scale += u.scale;
            }
        }
        let decode_cap = u64::from(t.decode_engines) * u64::from(t.decode_capacity_per_engine);
        let scale_cap = u64::from(t.scale_engines) * u64::from(t.scale_capacity_per_engine);
        (decode <= decode_cap && scale <= scale_cap).then_some(units)
    }

    /// A session's units on card `card`: its ladder's encode units if it is a ladder (`None`
    /// when the ladder does not fit the card), otherwise its demand's.
    pub(super) fn units_on(&self, session: u64, demand: &Demand, card: usize) -> Option<u64> {
        if self.ladders.demands.contains_key(&session) {
            return self.ladder_units(session, card).map(|u| u.encode);
        }
        let limits = &self.cards.get(card)?.limits;
        Some(demand_units(demand, limits))
    }

    /// Forgets a released session's ladder.
    pub(super) fn forget_ladder(&mut self, session: u64) {
        self.ladders.demands.remove(&session);
        self.ladders.units.remove(&session);
    }

    /// Decode and scale units in use on a card (for status and tests).
    pub fn transcode_load(&self, card: usize) -> (u64, u64) {
        self.ladders
            .units
            .values()
            .filter(|(c, _)| *c == card)
            .fold((0, 0), |(d, s), (_, u)| (d + u.decode, s + u.scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Policy, Quotas};
    use crate::scheduler::CardLimits;
    use vpu_driver::card::Codec;

    fn demand(w: u32, h: u32) -> Demand {
        Demand {
            codec: Codec::H264,
            width: w,
            height: h,
            fps_num: 30,
            fps_den: 1,
            priority: Priority::Realtime,
            reservation: None,
        }
    }

    fn ladder() -> LadderDemand {
        LadderDemand {
            input: demand(1920, 1080),
            outputs: vec![
                demand(1920, 1080),
                demand(1280, 720),
                demand(854, 480),
                demand(640, 360),
            ],
            priority: Priority::Realtime,
            reservation: None,
        }
    }

    fn limits() -> CardLimits {
        CardLimits {
            engines: 2,
            capacity_per_engine: 1_000_000,
            pixel_rate_per_engine: 1280 * 720 * 240,
            codecs: vec![Codec::H264],
            max_width: 3840,
            max_height: 2160,
            max_sessions: 32,
            encoders: Vec::new(),
        }
    }

    fn transcode() -> TranscodeLimits {
        TranscodeLimits {
            decode_engines: 1,
            decode_capacity_per_engine: 1_000_000,
            decode_pixel_rate: 1920 * 1080 * 240,
            scale_engines: 1,
            scale_capacity_per_engine: 1_000_000,
            scale_pixel_rate: 1920 * 1080 * 480,
        }
    }

    fn scheduler(cards: usize, transcoding: &[usize]) -> Scheduler {
        let mut s = Scheduler::new(Policy::Spread, 0, 0.0, Quotas::default());
        for c in 0..cards {
            s.add_card(limits());
            if transcoding.contains(&c) {
                s.set_transcode_limits(c, Some(transcode()));
            }
        }
        s
    }

    #[test]
    fn a_ladder_costs_every_encode_its_decode_and_its_scaling() {
        let u = ladder().units(&limits(), &transcode()).expect("fits");
        // 1080p30 is 0.28125 of a 720p240 engine, 720p30 0.125, 480p 0.0556, 360p 0.03125.
        let encodes: u64 = ladder()
            .outputs
            .iter()
            .map(|o| demand_units(o, &limits()))
            .sum();
        assert_eq!(u.encode, encodes);
        assert_eq!(u.decode, 125_000); // 1080p30 of a 1080p240 decoder
        assert_eq!(u.encode, 493_099);
        assert_eq!(u.scale, 47_078);
    }

    #[test]
    fn ladders_go_whole_onto_a_transcoding_card_or_nowhere() {
        let mut s = scheduler(2, &[1]);
        let p = s
            .place_ladder(1, "a", &ladder(), None, &[])
            .expect("placed");
        assert_eq!(p.card, 1);
        assert!(s.transcode_load(1).0 > 0);
        // 493 099 units of encodes each: four ladders fit on two engines.
        let placed = (2..10)
            .filter(|&id| s.place_ladder(id, "a", &ladder(), None, &[]).is_ok())
            .count();
        assert_eq!(placed, 3);
        for id in 2..5 {
            s.release(id);
        }
        s.release(1);
        assert_eq!(s.transcode_load(1), (0, 0));
        assert_eq!(s.card_reserved(1), 0);
        let mut none = scheduler(1, &[]);
        assert!(matches!(
            none.place_ladder(1, "a", &ladder(), None, &[]),
            Err(SchedError::NotSupported { .. })
        ));
    }

    #[test]
    fn decode_capacity_is_kept_apart_from_encode_capacity() {
        let mut s = scheduler(1, &[0]);
        let mut small = ladder();
        small.outputs = vec![demand(320, 180)];
        // 1080p30 decode is 1/8 of the decoder: eight such ladders fit, the ninth does not,
        // though the encoders would have room.
        for id in 0..8 {
            s.place_ladder(id, "a", &small, None, &[]).expect("fits");
        }
        assert!(matches!(
            s.place_ladder(8, "a", &small, None, &[]),
            Err(SchedError::NoCapacity { .. })
        ));
    }
}
