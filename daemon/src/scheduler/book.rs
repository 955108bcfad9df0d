//! The scheduler's book: every card's reserved load, every client's use, and placement.
//!
//! Pure bookkeeping with no I/O, held under one short-lived lock by the daemon. A session
//! is admitted here (quota, then capacity) before any card is touched; the reservation is
//! released when the session ends. Reservations (`Manager.Reserve`, [`super::reserve`])
//! set load units of a card aside for one consumer: sessions outside them cannot take
//! those units, sessions inside draw on them.

use std::collections::HashMap;

use vpu_driver::card::Codec;

use super::cost::{demand_units, CardLimits, Demand, Priority};
use super::reserve::Reservation;
use super::SchedError;
use crate::config::{Policy, Quotas};

/// A card's administrative state (`Card.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardState {
    Online,
    Draining,
    Resetting,
    Failed,
    Offline,
}

impl CardState {
    pub fn as_str(self) -> &'static str {
        match self {
            CardState::Online => "online",
            CardState::Draining => "draining",
            CardState::Resetting => "resetting",
            CardState::Failed => "failed",
            CardState::Offline => "offline",
        }
    }
}

#[derive(Debug)]
pub(super) struct CardBook {
    pub(super) limits: CardLimits,
    pub(super) state: CardState,
    /// Sum of the demands of the sessions placed here (inside reservations or not).
    pub(super) reserved: u64,
    /// Units of the reservations on this card, whether drawn on or not.
    pub(super) set_aside: u64,
    /// Sum of the demands of the sessions placed here inside reservations: they are part
    /// of `set_aside` as well as of `reserved`.
    pub(super) drawn: u64,
    pub(super) sessions: u32,
    /// `reserved` by codec: what the sessions of each codec take of the engines that
    /// encode it.
    pub(super) by_codec: Vec<(Codec, u64)>,
    /// Last load the card reported (engine log), in load units.
    measured: Option<u64>,
}

impl CardBook {
    /// Units no new session outside a reservation can take: the sessions outside
    /// reservations and every reservation's units.
    pub(super) fn committed(&self) -> u64 {
        (self.reserved.saturating_sub(self.drawn)).saturating_add(self.set_aside)
    }

    /// Load units the sessions of `codec` take here.
    pub(super) fn codec_reserved(&self, codec: Codec) -> u64 {
        self.by_codec
            .iter()
            .find(|(c, _)| *c == codec)
            .map_or(0, |(_, u)| *u)
    }

    /// Adds `units` (or takes them away) for a session of `codec`.
    pub(super) fn count_codec(&mut self, codec: Codec, add: u64, sub: u64) {
        match self.by_codec.iter_mut().find(|(c, _)| *c == codec) {
            Some((_, u)) => *u = u.saturating_sub(sub) + add,
            None => self.by_codec.push((codec, add)),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct ClientBook {
    pub(super) sessions: u32,
    /// Units of the client's sessions outside reservations and of its reservations.
    pub(super) load: u64,
    pub(super) reservations: u32,
}

/// Where a session went and what it reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub card: usize,
    pub units: u64,
    pub client: String,
    /// The reservation the units are drawn from; `None` for a session outside any.
    pub reservation: Option<u64>,
    /// The session's codec: its units are taken from the engines that encode it.
    pub codec: Codec,
}

/// The scheduler.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    realtime_reserve_percent: u8,
    measured_weight: f64,
    pub(super) quotas: Quotas,
    pub(super) cards: Vec<CardBook>,
    pub(super) clients: HashMap<String, ClientBook>,
    pub(super) placements: HashMap<u64, Placement>,
    pub(super) reservations: std::collections::BTreeMap<u64, Reservation>,
    /// The number of the next reservation; never reused.
    pub(super) next_reservation: u64,
    /// Transcode ladders and the cards' decode and scale engines.
    pub(super) ladders: super::ladder::Ladders,
}

impl Scheduler {
    pub fn new(
        policy: Policy,
        realtime_reserve_percent: u8,
        measured_weight: f64,
        quotas: Quotas,
    ) -> Scheduler {
        Scheduler {
            policy,
            realtime_reserve_percent: realtime_reserve_percent.min(100),
            measured_weight: measured_weight.clamp(0.0, 1.0),
            quotas,
            cards: Vec::new(),
            clients: HashMap::new(),
            placements: HashMap::new(),
            reservations: std::collections::BTreeMap::new(),
            next_reservation: 0,
            ladders: Default::default(),
        }
    }

    /// Adds a card (online); returns its index.
    pub fn add_card(&mut self, limits: CardLimits) -> usize {
        self.cards.push(CardBook {
            limits,
            state: CardState::Online,
            reserved: 0,
            set_aside: 0,
            drawn: 0,
            sessions: 0,
            by_codec: Vec::new(),
            measured: None,
        });
        self.cards.len() - 1
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Admits and places a session: quota first, then the card chosen by the policy among
    /// those that fit (or `pinned`). Nothing is reserved on error.
    pub fn place(
        &mut self,
        session: u64,
        client: &str,
        demand: &Demand,
        pinned: Option<usize>,
        exclude: &[usize],
    ) -> Result<Placement, SchedError> {
        if let Some(r) = demand.reservation {
            return self.place_in_reservation(session, client, demand, r, pinned, exclude);
        }
        let candidates: Vec<usize> = match pinned {
            Some(c) if c >= self.cards.len() => return Err(SchedError::NoSuchCard { card: c }),
            Some(c) => vec![c],
            None => (0..self.cards.len())
                .filter(|c| !exclude.contains(c))
                .collect(),
        };
        // Codec and size first: a request no card can ever serve is NotSupported, not
        // NoCapacity.
        let able: Vec<usize> = candidates
            .into_iter()
            .filter(|&c| self.cards[c].limits.supports(demand))
            .collect();
        if able.is_empty() {
            return Err(SchedError::NotSupported {
                what: format!("{} {}x{}", demand.codec, demand.width, demand.height),
                accepted: self.supported_summary(),
            });
        }
        let client_book = self.clients.get(client);
        let (held_sessions, held_load) = client_book.map_or((0, 0), |b| (b.sessions, b.load));
        if self.quotas.sessions_per_client != 0 && held_sessions >= self.quotas.sessions_per_client
        {
            return Err(SchedError::QuotaExceeded {
                client: client.to_owned(),
                what: format!(
                    "{held_sessions} sessions held, quota is {}",
                    self.quotas.sessions_per_client
                ),
            });
        }
        let mut best: Option<(usize, u64, u64)> = None; // (card, units, ranking load)
        let mut quota_hit = None;
        for c in able {
            let card = &self.cards[c];
            if card.state != CardState::Online || card.sessions >= card.limits.max_sessions {
                continue;
            }
            let Some(units) = self.units_on(session, demand, c) else {
                continue;
            };
            if self.quotas.load_per_client != 0 && held_load + units > self.quotas.load_per_client {
                quota_hit = Some(units);
                continue;
            }
            if card.committed() + units > self.limit(c, demand.priority)
                || !self.codec_fits(c, demand.codec, units, 0, demand.priority)
            {
                continue;
            }
            let rank = self.card_load(c);
            let better = match (best, self.policy) {
                (None, _) => true,
                (Some((_, _, r)), Policy::Spread) => rank < r,
                (Some((_, _, r)), Policy::Pack) => rank > r,
            };
            if better {
                best = Some((c, units, rank));
            }
        }
        let Some((card, units, _)) = best else {
            if let Some(units) = quota_hit {
                return Err(SchedError::QuotaExceeded {
                    client: client.to_owned(),
                    what: format!(
                        "{held_load} load units held, {units} more asked, quota is {}",
                        self.quotas.load_per_client
                    ),
                });
            }
            return Err(SchedError::NoCapacity {
                demand: demand.clone(),
                free: self.free_summary(demand.priority),
            });
        };
        let placement = Placement {
            card,
            units,
            client: client.to_owned(),
            reservation: None,
            codec: demand.codec,
        };
        self.cards[card].reserved += units;
        self.cards[card].count_codec(demand.codec, units, 0);
        self.cards[card].sessions += 1;
        let book = self.clients.entry(client.to_owned()).or_default();
        book.sessions += 1;
        book.load += units;
        self.placements.insert(session, placement.clone());
        Ok(placement)
    }

    /// Changes a placed session's demand on the card it runs on (a new frame rate). On
    /// `NoCapacity` or a quota error the old reservation stands.
    pub fn resize(&mut self, session: u64, demand: &Demand) -> Result<Placement, SchedError> {
        let Some(p) = self.placements.get(&session).cloned() else {
            return Err(SchedError::NoSuchSession { session });
        };
        if let Some(r) = p.reservation {
            return self.resize_in_reservation(session, p, r, demand);
        }
        let card = &self.cards[p.card];
        let units = demand_units(demand, &card.limits);
        let reserved_without = card.reserved.saturating_sub(p.units);
        let committed_without = card.committed().saturating_sub(p.units);
        let (_, held_load) = self.client_usage(&p.client);
        let client_without = held_load.saturating_sub(p.units);
        if self.quotas.load_per_client != 0 && client_without + units > self.quotas.load_per_client
        {
            return Err(SchedError::QuotaExceeded {
                client: p.client.clone(),
                what: format!(
                    "{units} load units asked with {client_without} held, quota is {}",
                    self.quotas.load_per_client
                ),
            });
        }
        if committed_without + units > self.limit(p.card, demand.priority)
            || !self.codec_fits(p.card, p.codec, units, p.units, demand.priority)
        {
            return Err(SchedError::NoCapacity {
                demand: demand.clone(),
                free: self.free_summary(demand.priority),
            });
        }
        self.cards[p.card].reserved = reserved_without + units;
        self.cards[p.card].count_codec(p.codec, units, p.units);
        if let Some(book) = self.clients.get_mut(&p.client) {
            book.load = client_without + units;
        }
        let placement = Placement { units, ..p };
        self.placements.insert(session, placement.clone());
        Ok(placement)
    }

    /// Releases a session's reservation; returns where it was.
    pub fn release(&mut self, session: u64) -> Option<Placement> {
        self.forget_ladder(session);
        let p = self.placements.remove(&session)?;
        if let Some(card) = self.cards.get_mut(p.card) {
            card.reserved = card.reserved.saturating_sub(p.units);
            card.count_codec(p.codec, 0, p.units);
            card.sessions = card.sessions.saturating_sub(1);
            if p.reservation.is_some() {
                card.drawn = card.drawn.saturating_sub(p.units);
            }
        }
        if let Some(r) = p.reservation.and_then(|r| self.reservations.get_mut(&r)) {
            r.used = r.used.saturating_sub(p.units);
            r.sessions = r.sessions.saturating_sub(1);
        }
        if let Some(book) = self.clients.get_mut(&p.client) {
            book.sessions = book.sessions.saturating_sub(1);
            if p.reservation.is_none() {
                book.load = book.load.saturating_sub(p.units);
            }
        }
        self.forget_idle_client(&p.client);
        Some(p)
    }

    /// Where a session is placed.
    pub fn placement(&self, session: u64) -> Option<&Placement> {
        self.placements.get(&session)
    }

    /// Sets a card's state; returns the previous one.
    pub fn set_state(&mut self, card: usize, state: CardState) -> Option<CardState> {
        let c = self.cards.get_mut(card)?;
        Some(std::mem::replace(&mut c.state, state))
    }

    pub fn state(&self, card: usize) -> Option<CardState> {
        self.cards.get(card).map(|c| c.state)
    }

    /// Records the load a card measured (sum of its engines' load).
    pub fn set_measured(&mut self, card: usize, load: u64) {
        if let Some(c) = self.cards.get_mut(card) {
            c.measured = Some(load);
        }
    }

    /// A card's load: the modelled reservations blended with the measured load. A card
    /// with no sessions has load 0.
    pub fn card_load(&self, card: usize) -> u64 {
        let Some(c) = self.cards.get(card) else {
            return 0;
        };
        if c.sessions == 0 {
            return 0;
        }
        match c.measured {
            Some(m) => {
                let w = self.measured_weight;
                ((1.0 - w) * c.reserved as f64 + w * m.min(c.limits.capacity()) as f64).round()
                    as u64
            }
            None => c.reserved,
        }
    }

    /// Load units reserved on a card by its sessions.
    pub fn card_reserved(&self, card: usize) -> u64 {
        self.cards.get(card).map_or(0, |c| c.reserved)
    }

    pub fn card_sessions(&self, card: usize) -> u32 {
        self.cards.get(card).map_or(0, |c| c.sessions)
    }

    pub fn card_capacity(&self, card: usize) -> u64 {
        self.cards.get(card).map_or(0, |c| c.limits.capacity())
    }

    /// Capacity of every card that is not failed or offline.
    pub fn total_capacity(&self) -> u64 {
        self.cards
            .iter()
            .filter(|c| !matches!(c.state, CardState::Failed | CardState::Offline))
            .map(|c| c.limits.capacity())
            .sum()
    }

    pub fn total_load(&self) -> u64 {
        (0..self.cards.len()).map(|c| self.card_load(c)).sum()
    }

    /// Sessions and load a client holds.
    pub fn client_usage(&self, client: &str) -> (u32, u64) {
        self.clients
            .get(client)
            .map_or((0, 0), |b| (b.sessions, b.load))
    }

    /// Highest reservation a card accepts for a priority.
    pub(super) fn limit(&self, card: usize, priority: Priority) -> u64 {
        let cap = self.cards[card].limits.capacity();
        match priority {
            Priority::Realtime => cap,
            Priority::Batch => cap - cap * u64::from(self.realtime_reserve_percent) / 100,
        }
    }

    /// Whether `units` more for a session of `codec` (replacing `replacing` units it held)
    /// fit the engines of card `card` that encode it: for every set of the card's codecs
    /// that includes `codec`, what their sessions take must fit the engines that encode
    /// any of them (so engines that encode only one codec are never counted twice, and
    /// engines that encode several are shared).
    pub(super) fn codec_fits(
        &self,
        card: usize,
        codec: Codec,
        units: u64,
        replacing: u64,
        priority: Priority,
    ) -> bool {
        let c = &self.cards[card];
        let offered = c.limits.encode_codecs();
        let Some(at) = offered.iter().position(|&k| k == codec) else {
            return false;
        };
        let keep = match priority {
            Priority::Realtime => 0,
            Priority::Batch => u64::from(self.realtime_reserve_percent),
        };
        (1u32..1 << offered.len())
            .filter(|mask| mask & (1 << at) != 0)
            .all(|mask| {
                let set: Vec<Codec> = (0..offered.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| offered[i])
                    .collect();
                let taken: u64 = set.iter().map(|&k| c.codec_reserved(k)).sum();
                let cap = c.limits.capacity_for(&set);
                let cap = cap - cap * keep / 100;
                taken.saturating_sub(replacing) + units <= cap
            })
    }

    pub(super) fn free_summary(&self, priority: Priority) -> String {
        let parts: Vec<String> = (0..self.cards.len())
            .map(|c| {
                let card = &self.cards[c];
                let free = self.limit(c, priority).saturating_sub(card.committed());
                format!("card {c} {}: {free} units free", card.state.as_str())
            })
            .collect();
        if parts.is_empty() {
            "no cards".into()
        } else {
            parts.join(", ")
        }
    }

    pub(super) fn supported_summary(&self) -> String {
        let mut parts: Vec<String> = self.cards.iter().map(|c| c.limits.offer()).collect();
        parts.dedup();
        if parts.is_empty() {
            "no cards".into()
        } else {
            parts.join("; ")
        }
    }
}
