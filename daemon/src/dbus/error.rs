//! The typed D-Bus errors of the API, `org.vpud.Vpud1.Error.*`. Each carries a message
//! saying what was wrong and what would be accepted.

use crate::scheduler::SchedError;

use super::params::ParamError;

/// Errors returned to D-Bus callers.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.vpud.Vpud1.Error")]
pub enum VpudError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Nothing fits: every card is full, draining or failed.
    NoCapacity(String),
    /// An argument was missing, of the wrong type, unknown or out of range.
    InvalidArgument(String),
    /// No card offers what was asked (codec, size, emulator feature).
    NotSupported(String),
    /// The caller may not do this.
    AccessDenied(String),
    /// No such card, session or reservation.
    NotFound(String),
    /// The card failed the operation.
    CardFailed(String),
    /// The caller holds as many sessions or as much load as its quota allows, or the
    /// session does not fit in the reservation it draws on.
    QuotaExceeded(String),
}

impl From<ParamError> for VpudError {
    fn from(e: ParamError) -> Self {
        VpudError::InvalidArgument(e.0)
    }
}

impl From<SchedError> for VpudError {
    fn from(e: SchedError) -> Self {
        let msg = e.to_string();
        match e {
            SchedError::NoCapacity { .. } => VpudError::NoCapacity(msg),
            SchedError::QuotaExceeded { .. } => VpudError::QuotaExceeded(msg),
            SchedError::NotSupported { .. } => VpudError::NotSupported(msg),
            SchedError::NoSuchCard { .. }
            | SchedError::NoSuchSession { .. }
            | SchedError::NoSuchReservation { .. } => VpudError::NotFound(msg),
            SchedError::NoRoomToReserve { .. } | SchedError::ReservationUnavailable { .. } => {
                VpudError::NoCapacity(msg)
            }
            SchedError::ReservationElsewhere { .. } => VpudError::InvalidArgument(msg),
            SchedError::ReservationFull { .. } => VpudError::QuotaExceeded(msg),
        }
    }
}

impl VpudError {
    /// Every short name [`VpudError::kind`] returns for an error of the API (not `ZBus`).
    pub const KINDS: [&'static str; 7] = [
        "NoCapacity",
        "InvalidArgument",
        "NotSupported",
        "AccessDenied",
        "NotFound",
        "CardFailed",
        "QuotaExceeded",
    ];

    /// The error's short name (`NoCapacity`, …), for the per-kind error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            VpudError::ZBus(_) => "ZBus",
            VpudError::NoCapacity(_) => "NoCapacity",
            VpudError::InvalidArgument(_) => "InvalidArgument",
            VpudError::NotSupported(_) => "NotSupported",
            VpudError::AccessDenied(_) => "AccessDenied",
            VpudError::NotFound(_) => "NotFound",
            VpudError::CardFailed(_) => "CardFailed",
            VpudError::QuotaExceeded(_) => "QuotaExceeded",
        }
    }
}

#[cfg(test)]
mod kinds_tests {
    use super::VpudError;

    #[test]
    fn kinds_lists_every_api_error() {
        let all = [
            VpudError::NoCapacity(String::new()),
            VpudError::InvalidArgument(String::new()),
            VpudError::NotSupported(String::new()),
            VpudError::AccessDenied(String::new()),
            VpudError::NotFound(String::new()),
            VpudError::CardFailed(String::new()),
            VpudError::QuotaExceeded(String::new()),
        ];
        let kinds: Vec<&str> = all.iter().map(VpudError::kind).collect();
        assert_eq!(kinds, VpudError::KINDS);
    }
}
