//! Finding the bus vpud is on: `--bus`, then `VPUD_BUS_ADDRESS`, then the system bus.

use std::fmt;

use zbus::connection::Builder;
use zbus::Connection;

use super::error::{ClientError, Result};

/// Environment variable naming the bus vpud is on (a D-Bus address).
pub const BUS_ENV: &str = "VPUD_BUS_ADDRESS";

/// Which bus to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusTarget {
    /// The system bus (production).
    System,
    /// The user's session bus.
    Session,
    /// A D-Bus address such as `unix:path=/run/vpud/bus`.
    Address(String),
}

impl BusTarget {
    /// Parses a `--bus` value: `system`, `session` or a D-Bus address.
    pub fn parse(value: &str) -> Result<BusTarget> {
        match value {
            "system" => Ok(BusTarget::System),
            "session" => Ok(BusTarget::Session),
            "" => Err(ClientError::InvalidArgument(
                "empty bus: give `system`, `session` or a D-Bus address such as unix:path=/run/bus"
                    .into(),
            )),
            addr if addr.contains(':') => Ok(BusTarget::Address(addr.to_string())),
            other => Err(ClientError::InvalidArgument(format!(
                "bus `{other}`: give `system`, `session` or a D-Bus address such as unix:path=/run/bus"
            ))),
        }
    }

    /// The bus to use: `flag` if given, else `VPUD_BUS_ADDRESS` if set and not empty, else the
    /// system bus.
    pub fn resolve(flag: Option<&str>) -> Result<BusTarget> {
        if let Some(flag) = flag {
            return BusTarget::parse(flag);
        }
        match std::env::var(BUS_ENV) {
            Ok(addr) if !addr.is_empty() => BusTarget::parse(&addr),
            _ => Ok(BusTarget::System),
        }
    }

    /// Opens a connection to this bus.
    pub async fn connect(&self) -> Result<Connection> {
        let builder = match self {
            BusTarget::System => Builder::system(),
            BusTarget::Session => Builder::session(),
            BusTarget::Address(addr) => Builder::address(addr.as_str()),
        };
        builder
            .build()
            .await
            .map_err(|source| ClientError::Connect {
                address: self.to_string(),
                source,
            })
    }
}

impl fmt::Display for BusTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusTarget::System => f.write_str("the system bus"),
            BusTarget::Session => f.write_str("the session bus"),
            BusTarget::Address(a) => f.write_str(a),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bus_values() {
        assert_eq!(BusTarget::parse("system").unwrap(), BusTarget::System);
        assert_eq!(BusTarget::parse("session").unwrap(), BusTarget::Session);
        assert_eq!(
            BusTarget::parse("unix:path=/tmp/x").unwrap(),
            BusTarget::Address("unix:path=/tmp/x".into())
        );
        assert!(matches!(
            BusTarget::parse("sytem"),
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(BusTarget::parse("").is_err());
    }

    #[test]
    fn flag_wins_over_environment() {
        assert_eq!(
            BusTarget::resolve(Some("session")).unwrap(),
            BusTarget::Session
        );
    }
}
