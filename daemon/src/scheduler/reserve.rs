//! Reservations: load units of one card set aside for one consumer (`Manager.Reserve`),
//! such as a Kubernetes pod.
//!
//! A reservation's units count against its card for every session outside it, whether
//! they are drawn on or not, so nothing else can take them. Sessions created in a
//! reservation go to its card and draw on its units; past them they are refused with
//! [`SchedError::ReservationFull`]. Their load counts toward the reservation, not toward
//! their client's load quota (the reservation's owner holds that load); they count toward
//! their client's session quota as any session does. When a reservation ends, its sessions
//! carry on as sessions outside any reservation.

use super::book::{Placement, Scheduler};
use super::cost::{demand_units, Demand};
use super::SchedError;
use crate::config::Policy;

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique bus name of the consumer that made it.
    pub owner: String,
    /// The card the units are set aside on.
    pub card: usize,
    /// Load units set aside.
    pub units: u64,
    /// Load units its sessions take now.
    pub used: u64,
    /// Sessions drawing on it now.
    pub sessions: u32,
}

/// What ending a reservation left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub reservation: Reservation,
    /// Sessions that drew on it; they now run outside any reservation.
    pub sessions: Vec<u64>,
}

impl Scheduler {
    /// Sets `units` load units aside for `owner`, on `pinned` or on the card the policy
    /// chooses among the online ones with that much room (`spread`: the least committed,
    /// `pack`: the most). Returns the reservation's number. The units count toward the
    /// owner's load quota.
    pub fn reserve(
        &mut self,
        owner: &str,
        units: u64,
        pinned: Option<usize>,
    ) -> Result<u64, SchedError> {
        if let Some(c) = pinned {
            if c >= self.cards.len() {
                return Err(SchedError::NoSuchCard { card: c });
            }
        }
        let held = self.clients.get(owner).map_or(0, |b| b.load);
        let quota = self.quotas.load_per_client;
        if quota != 0 && held.saturating_add(units) > quota {
            return Err(SchedError::QuotaExceeded {
                client: owner.to_owned(),
                what: format!("{held} load units held, {units} more asked, quota is {quota}"),
            });
        }
        let mut best: Option<(usize, u64)> = None;
        for (c, card) in self.cards.iter().enumerate() {
            if pinned.is_some_and(|p| p != c) || card.state != super::CardState::Online {
                continue;
            }
            let committed = card.committed();
            if committed.saturating_add(units) > card.limits.capacity() {
                continue;
            }
            let better = match (best, self.policy()) {
                (None, _) => true,
                (Some((_, r)), Policy::Spread) => committed < r,
                (Some((_, r)), Policy::Pack) => committed > r,
            };
            if better {
                best = Some((c, committed));
            }
        }
        let Some((card, _)) = best else {
            return Err(SchedError::NoRoomToReserve {
                units,
                free: self.free_summary(super::Priority::Realtime),
            });
        };
        let id = self.next_reservation;
        self.next_reservation += 1;
        self.cards[card].set_aside += units;
        let book = self.clients.entry(owner.to_owned()).or_default();
        book.load += units;
        book.reservations += 1;
        self.reservations.insert(
            id,
            Reservation {
                owner: owner.to_owned(),
                card,
                units,
                used: 0,
                sessions: 0,
            },
        );
        Ok(id)
    }

    /// Ends reservation `id`: its units are free again and its sessions carry on outside
    /// any reservation (their load now counts toward their clients). `None` if there is no
    /// such reservation.
    pub fn unreserve(&mut self, id: u64) -> Option<Released> {
        let r = self.reservations.remove(&id)?;
        if let Some(card) = self.cards.get_mut(r.card) {
            card.set_aside = card.set_aside.saturating_sub(r.units);
            card.drawn = card.drawn.saturating_sub(r.used);
        }
        if let Some(book) = self.clients.get_mut(&r.owner) {
            book.load = book.load.saturating_sub(r.units);
            book.reservations = book.reservations.saturating_sub(1);
        }
        self.forget_idle_client(&r.owner);
        let mut sessions = Vec::new();
        for (&s, p) in self.placements.iter_mut() {
            if p.reservation == Some(id) {
                p.reservation = None;
                self.clients.entry(p.client.clone()).or_default().load += p.units;
                sessions.push(s);
            }
        }
        sessions.sort_unstable();
        Some(Released {
            reservation: r,
            sessions,
        })
    }

    /// Reservation `id`, if it is live.
    pub fn reservation(&self, id: u64) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    /// The numbers of `owner`'s reservations.
    pub fn reservations_of(&self, owner: &str) -> Vec<u64> {
        self.reservations
            .iter()
            .filter(|(_, r)| r.owner == owner)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The numbers of the reservations on card `card`.
    pub fn reservations_on(&self, card: usize) -> Vec<u64> {
        self.reservations
            .iter()
            .filter(|(_, r)| r.card == card)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Load units set aside on card `card` by reservations.
    pub fn card_set_aside(&self, card: usize) -> u64 {
        self.cards.get(card).map_or(0, |c| c.set_aside)
    }

    /// Places a session inside reservation `r`: on its card, within its units.
    pub(super) fn place_in_reservation(
        &mut self,
        session: u64,
        client: &str,
        demand: &Demand,
        r: u64,
        pinned: Option<usize>,
        exclude: &[usize],
    ) -> Result<Placement, SchedError> {
        let Some(res) = self.reservations.get(&r) else {
            return Err(SchedError::NoSuchReservation { reservation: r });
        };
        let c = res.card;
        if let Some(p) = pinned.filter(|&p| p != c) {
            return Err(SchedError::ReservationElsewhere {
                reservation: r,
                card: c,
                asked: p,
            });
        }
        let card = &self.cards[c];
        let l = &card.limits;
        if !l.supports(demand) {
            return Err(SchedError::NotSupported {
                what: format!("{} {}x{}", demand.codec, demand.width, demand.height),
                accepted: format!("{} on card {c}, the card of reservation {r}", l.offer()),
            });
        }
        let held_sessions = self.clients.get(client).map_or(0, |b| b.sessions);
        let quota = self.quotas.sessions_per_client;
        if quota != 0 && held_sessions >= quota {
            return Err(SchedError::QuotaExceeded {
                client: client.to_owned(),
                what: format!("{held_sessions} sessions held, quota is {quota}"),
            });
        }
        if exclude.contains(&c)
            || card.state != super::CardState::Online
            || card.sessions >= l.max_sessions
        {
            return Err(SchedError::ReservationUnavailable {
                reservation: r,
                card: c,
                state: card.state.as_str(),
            });
        }
        let Some(units) = self.units_on(session, demand, c) else {
            return Err(SchedError::ReservationUnavailable {
                reservation: r,
                card: c,
                state: "without room in its decode or scale engines",
            });
        };
        if res.used + units > res.units {
            return Err(SchedError::ReservationFull {
                reservation: r,
                used: res.used,
                units: res.units,
                asked: units,
            });
        }
        if !self.codec_fits(c, demand.codec, units, 0, demand.priority) {
            return Err(SchedError::NoCapacity {
                demand: demand.clone(),
                free: self.free_summary(demand.priority),
            });
        }
        let placement = Placement {
            card: c,
            units,
            client: client.to_owned(),
            reservation: Some(r),
            codec: demand.codec,
        };
        if let Some(res) = self.reservations.get_mut(&r) {
            res.used += units;
            res.sessions += 1;
        }
        let card = &mut self.cards[c];
        card.reserved += units;
        card.count_codec(demand.codec, units, 0);
        card.drawn += units;
        card.sessions += 1;
        self.clients.entry(client.to_owned()).or_default().sessions += 1;
        self.placements.insert(session, placement.clone());
        Ok(placement)
    }

    /// Changes the demand of a session placed in reservation `r`; on error the old
    /// placement stands.
    pub(super) fn resize_in_reservation(
        &mut self,
        session: u64,
        p: Placement,
        r: u64,
        demand: &Demand,
    ) -> Result<Placement, SchedError> {
        let units = demand_units(demand, &self.cards[p.card].limits);
        let Some(res) = self.reservations.get_mut(&r) else {
            return Err(SchedError::NoSuchReservation { reservation: r });
        };
        let used_without = res.used.saturating_sub(p.units);
        if used_without + units > res.units {
            return Err(SchedError::ReservationFull {
                reservation: r,
                used: used_without,
                units: res.units,
                asked: units,
            });
        }
        res.used = used_without + units;
        let card = &mut self.cards[p.card];
        card.reserved = card.reserved.saturating_sub(p.units) + units;
        card.count_codec(p.codec, units, p.units);
        card.drawn = card.drawn.saturating_sub(p.units) + units;
        let placement = Placement { units, ..p };
        self.placements.insert(session, placement.clone());
        Ok(placement)
    }

    /// Drops the book of a client that holds nothing any more.
    pub(super) fn forget_idle_client(&mut self, client: &str) {
        if self
            .clients
            .get(client)
            .is_some_and(|b| b.sessions == 0 && b.reservations == 0)
        {
            self.clients.remove(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Quotas;
    use crate::scheduler::{CardLimits, CardState, Priority};

    fn limits() -> CardLimits {
        CardLimits {
            engines: 2,
            capacity_per_engine: 1_000_000,
            pixel_rate_per_engine: 1280 * 720 * 240,
            codecs: vec![vpu_driver::card::Codec::H264],
            max_width: 4096,
            max_height: 2304,
            max_sessions: 32,
            encoders: Vec::new(),
        }
    }

    /// 720p30: 125 000 units on these cards.
    fn d720(reservation: Option<u64>) -> Demand {
        Demand {
            codec: vpu_driver::card::Codec::H264,
            width: 1280,
            height: 720,
            fps_num: 30,
            fps_den: 1,
            priority: Priority::Realtime,
            reservation,
        }
    }

    fn sched(load_quota: u64) -> Scheduler {
        let mut s = Scheduler::new(
            Policy::Spread,
            20,
            0.0,
            Quotas {
                sessions_per_client: 0,
                load_per_client: load_quota,
            },
        );
        s.add_card(limits());
        s.add_card(limits());
        s
    }

    #[test]
    fn reserved_units_are_kept_from_other_sessions() {
        let mut s = sched(0);
        let r = s.reserve("plugin", 1_500_000, Some(0)).unwrap();
        assert_eq!(s.card_set_aside(0), 1_500_000);
        // 500 000 units are left on card 0: four 720p30 sessions, then card 1.
        let cards: Vec<usize> = (0..8)
            .map(|i| s.place(i, "c", &d720(None), Some(0), &[]).map(|p| p.card))
            .filter_map(Result::ok)
            .collect();
        assert_eq!(cards, vec![0, 0, 0, 0]);
        assert!(matches!(
            s.place(9, "c", &d720(None), Some(0), &[]),
            Err(SchedError::NoCapacity { .. })
        ));
        // Inside the reservation: twelve sessions (1 500 000 units), not a thirteenth.
        for i in 10..22 {
            let p = s.place(i, "pod", &d720(Some(r)), None, &[]).unwrap();
            assert_eq!((p.card, p.reservation), (0, Some(r)));
        }
        assert!(matches!(
            s.place(22, "pod", &d720(Some(r)), None, &[]),
            Err(SchedError::ReservationFull {
                used: 1_500_000,
                ..
            })
        ));
        assert_eq!(s.reservation(r).unwrap().used, 1_500_000);
        assert_eq!(s.card_reserved(0), 2_000_000);
        // A session leaving gives its units back to the reservation, not to the card.
        s.release(10).unwrap();
        assert_eq!(s.reservation(r).unwrap().used, 1_375_000);
        assert!(s.place(9, "c", &d720(None), Some(0), &[]).is_err());
        s.place(22, "pod", &d720(Some(r)), None, &[]).unwrap();
    }

    #[test]
    fn placement_picks_a_card_with_room_and_refuses_too_much() {
        let mut s = sched(0);
        let a = s.reserve("p", 1_200_000, None).unwrap();
        let b = s.reserve("p", 1_200_000, None).unwrap();
        assert_ne!(
            s.reservation(a).unwrap().card,
            s.reservation(b).unwrap().card
        );
        assert!(matches!(
            s.reserve("p", 900_000, None),
            Err(SchedError::NoRoomToReserve { .. })
        ));
        assert!(matches!(
            s.reserve("p", 1, Some(7)),
            Err(SchedError::NoSuchCard { card: 7 })
        ));
        s.set_state(0, CardState::Draining);
        let c = s.reserve("p", 700_000, None).unwrap();
        assert_eq!(s.reservation(c).unwrap().card, 1);
    }

    #[test]
    fn reservations_count_toward_the_owners_load_quota() {
        let mut s = sched(1_000_000);
        s.reserve("p", 800_000, None).unwrap();
        assert!(matches!(
            s.reserve("p", 300_000, None),
            Err(SchedError::QuotaExceeded { .. })
        ));
        assert_eq!(s.client_usage("p"), (0, 800_000));
    }

    #[test]
    fn unreserve_frees_the_units_and_keeps_the_sessions() {
        let mut s = sched(0);
        let r = s.reserve("plugin", 2_000_000, Some(0)).unwrap();
        s.place(1, "pod", &d720(Some(r)), None, &[]).unwrap();
        assert_eq!(s.client_usage("pod"), (1, 0));
        let gone = s.unreserve(r).unwrap();
        assert_eq!(gone.sessions, vec![1]);
        assert_eq!(s.card_set_aside(0), 0);
        assert_eq!(s.client_usage("pod"), (1, 125_000));
        assert_eq!(s.client_usage("plugin"), (0, 0));
        assert!(s.unreserve(r).is_none());
        assert!(matches!(
            s.place(2, "pod", &d720(Some(r)), None, &[]),
            Err(SchedError::NoSuchReservation { .. })
        ));
        // The session now holds its units as any other: releasing it frees the card.
        s.release(1).unwrap();
        assert_eq!((s.card_reserved(0), s.client_usage("pod")), (0, (0, 0)));
    }

    #[test]
    fn sessions_in_a_reservation_stay_on_its_card() {
        let mut s = sched(0);
        let r = s.reserve("plugin", 500_000, Some(1)).unwrap();
        assert!(matches!(
            s.place(1, "pod", &d720(Some(r)), Some(0), &[]),
            Err(SchedError::ReservationElsewhere { .. })
        ));
        // Moving off its card (exclude) is not possible: it waits for the card.
        assert!(matches!(
            s.place(1, "pod", &d720(Some(r)), None, &[1]),
            Err(SchedError::ReservationUnavailable { .. })
        ));
        s.place(1, "pod", &d720(Some(r)), None, &[]).unwrap();
        // Reconfiguring to 60 fps doubles the demand: within the 500 000 units.
        let mut d = d720(Some(r));
        d.fps_num = 60;
        assert_eq!(s.resize(1, &d).unwrap().units, 250_000);
        d.fps_num = 150;
        assert!(matches!(
            s.resize(1, &d),
            Err(SchedError::ReservationFull { .. })
        ));
        assert_eq!(s.reservation(r).unwrap().used, 250_000);
    }
}
