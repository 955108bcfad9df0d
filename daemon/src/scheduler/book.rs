//! The scheduler's book: every card's reserved load, every client's use, and placement.
//!
//! Pure bookkeeping with no I/O, held under one short-lived lock by the daemon. A session
//! is admitted here (quota, then capacity) before any card is touched; the reservation is
//! released when the session ends.

use std::collections::HashMap;

use super::cost::{demand_units, CardLimits, Demand, Priority};
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
struct CardBook {
    limits: CardLimits,
    state: CardState,
    /// Sum of the demands of the sessions placed here.
    reserved: u64,
    sessions: u32,
    /// Last load the card reported (engine log), in load units.
    measured: Option<u64>,
}

#[derive(Debug, Default)]
struct ClientBook {
    sessions: u32,
    load: u64,
}

/// Where a session went and what it reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub card: usize,
    pub units: u64,
    pub client: String,
}

/// The scheduler.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    realtime_reserve_percent: u8,
    measured_weight: f64,
    quotas: Quotas,
    cards: Vec<CardBook>,
    clients: HashMap<String, ClientBook>,
    placements: HashMap<u64, Placement>,
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
        }
    }

    /// Adds a card (online); returns its index.
    pub fn add_card(&mut self, limits: CardLimits) -> usize {
        self.cards.push(CardBook {
            limits,
            state: CardState::Online,
            reserved: 0,
            sessions: 0,
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
            .filter(|&c| {
                let l = &self.cards[c].limits;
                l.codecs.contains(&demand.codec)
                    && demand.width <= l.max_width
                    && demand.height <= l.max_height
            })
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
            let units = demand_units(demand, &card.limits);
            if self.quotas.load_per_client != 0 && held_load + units > self.quotas.load_per_client {
                quota_hit = Some(units);
                continue;
            }
            if card.reserved + units > self.limit(c, demand.priority) {
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
        };
        self.cards[card].reserved += units;
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
        let card = &self.cards[p.card];
        let units = demand_units(demand, &card.limits);
        let reserved_without = card.reserved.saturating_sub(p.units);
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
        if reserved_without + units > self.limit(p.card, demand.priority) {
            return Err(SchedError::NoCapacity {
                demand: demand.clone(),
                free: self.free_summary(demand.priority),
            });
        }
        self.cards[p.card].reserved = reserved_without + units;
        if let Some(book) = self.clients.get_mut(&p.client) {
            book.load = client_without + units;
        }
        let placement = Placement { units, ..p };
        self.placements.insert(session, placement.clone());
        Ok(placement)
    }

    /// Releases a session's reservation; returns where it was.
    pub fn release(&mut self, session: u64) -> Option<Placement> {
        let p = self.placements.remove(&session)?;
        if let Some(card) = self.cards.get_mut(p.card) {
            card.reserved = card.reserved.saturating_sub(p.units);
            card.sessions = card.sessions.saturating_sub(1);
        }
        if let Some(book) = self.clients.get_mut(&p.client) {
            book.sessions = book.sessions.saturating_sub(1);
            book.load = book.load.saturating_sub(p.units);
            if book.sessions == 0 {
                self.clients.remove(&p.client);
            }
        }
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
    fn limit(&self, card: usize, priority: Priority) -> u64 {
        let cap = self.cards[card].limits.capacity();
        match priority {
            Priority::Realtime => cap,
            Priority::Batch => cap - cap * u64::from(self.realtime_reserve_percent) / 100,
        }
    }

    fn free_summary(&self, priority: Priority) -> String {
        let parts: Vec<String> = (0..self.cards.len())
            .map(|c| {
                let card = &self.cards[c];
                let free = self.limit(c, priority).saturating_sub(card.reserved);
                format!("card {c} {}: {free} units free", card.state.as_str())
            })
            .collect();
        if parts.is_empty() {
            "no cards".into()
        } else {
            parts.join(", ")
        }
    }

    fn supported_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .cards
            .iter()
            .map(|c| {
                format!(
                    "{} up to {}x{}",
                    c.limits
                        .codecs
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join("/"),
                    c.limits.max_width,
                    c.limits.max_height
                )
            })
            .collect();
        parts.dedup();
        if parts.is_empty() {
            "no cards".into()
        } else {
            parts.join("; ")
        }
    }
}
