//! Session placement across cards: the cost model ([`cost`]), admission control, policies
//! and quotas ([`book`]), reservations of capacity ([`reserve`]). Documented in
//! `docs/scheduling.md`.

pub mod book;
pub mod cost;
pub mod ladder;
pub mod reserve;

pub use book::{CardState, Placement, Scheduler};
pub use cost::{demand_units, CardLimits, Demand, Priority};
pub use ladder::{LadderDemand, LadderUnits, TranscodeLimits};
pub use reserve::{Released, Reservation};

/// Why a session could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("no card has capacity for {} {}x{} at {}/{} fps ({}): {free}", demand.codec, demand.width, demand.height, demand.fps_num, demand.fps_den, demand.priority.as_str())]
    NoCapacity { demand: Demand, free: String },
    #[error("client {client} is over its quota: {what}")]
    QuotaExceeded { client: String, what: String },
    #[error("no card supports {what}; cards offer {accepted}")]
    NotSupported { what: String, accepted: String },
    #[error("no card {card}")]
    NoSuchCard { card: usize },
    #[error("no session {session} is placed")]
    NoSuchSession { session: u64 },
    #[error("no card has {units} load units free to set aside: {free}")]
    NoRoomToReserve { units: u64, free: String },
    #[error("no reservation {reservation}")]
    NoSuchReservation { reservation: u64 },
    #[error("reservation {reservation} is on card {card}, not on card {asked}")]
    ReservationElsewhere {
        reservation: u64,
        card: usize,
        asked: usize,
    },
    #[error("reservation {reservation} is on card {card}, which is {state} or full of sessions")]
    ReservationUnavailable {
        reservation: u64,
        card: usize,
        state: &'static str,
    },
    #[error(
        "reservation {reservation} has {used} of its {units} load units in use; {asked} more asked"
    )]
    ReservationFull {
        reservation: u64,
        used: u64,
        units: u64,
        asked: u64,
    },
}

#[cfg(test)]
mod tests;
