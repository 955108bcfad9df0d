//! Session placement across cards: the cost model ([`cost`]), admission control, policies
//! and quotas ([`book`]). Documented in `docs/scheduling.md`.

pub mod book;
pub mod cost;

pub use book::{CardState, Placement, Scheduler};
pub use cost::{demand_units, CardLimits, Demand, Priority};

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
}

#[cfg(test)]
mod tests;
