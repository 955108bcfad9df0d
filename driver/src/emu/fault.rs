//! Faults that can be injected into an emulated card, as real cards fail.

use std::time::Duration;

use super::EmuError;

/// A fault to inject with [`EmulatedCard::inject`](super::EmulatedCard::inject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The engine (all engines when `None`) stops taking work; queued commands stay
    /// queued until `duration` passes (forever when `None`) or the controller is reset.
    HangEngine {
        engine: Option<u8>,
        duration: Option<Duration>,
    },
    /// The next `count` interrupts are not signalled (the completions are still posted).
    LostInterrupt { count: u32 },
    /// CSTS.CFS is set and the controller stops processing until it is reset
    /// (CC.EN 1→0→1 or a function-level reset).
    FatalStatus,
    /// The next `count` completions carry a wrong command id, or for a successful Encode
    /// Frame a byte count larger than the output buffer.
    CorruptCompletion { count: u32 },
    /// The engine (all when `None`) runs `factor` times slower for `duration` (until reset
    /// when `None`).
    SlowEngine {
        engine: Option<u8>,
        factor: u32,
        duration: Option<Duration>,
    },
    /// The card falls off the bus: register and config reads return all ones, nothing
    /// completes, DMA stops. Only dropping the card ends it.
    SurpriseRemoval,
}

const KINDS: &[&str] = &[
    "hang-engine",
    "lost-interrupt",
    "fatal-status",
    "corrupt-completion",
    "slow-engine",
    "surprise-removal",
];

/// The factor a slow-engine fault uses when no count is given.
const DEFAULT_SLOW_FACTOR: u32 = 4;

impl Fault {
    /// The fault kinds [`Fault::parse`] accepts, in the names the D-Bus API and `vpuctl` use.
    pub fn kinds() -> &'static [&'static str] {
        KINDS
    }

    /// The kind name of this fault.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::HangEngine { .. } => "hang-engine",
            Fault::LostInterrupt { .. } => "lost-interrupt",
            Fault::FatalStatus => "fatal-status",
            Fault::CorruptCompletion { .. } => "corrupt-completion",
            Fault::SlowEngine { .. } => "slow-engine",
            Fault::SurpriseRemoval => "surprise-removal",
        }
    }

    /// Builds a fault from its kind name and optional arguments: `engine` for the engine
    /// faults, `count` (interrupts or completions, default 1; the slow-down factor for
    /// slow-engine, default 4), `duration_ms` for the engine faults.
    pub fn parse(
        kind: &str,
        engine: Option<u8>,
        count: Option<u32>,
        duration_ms: Option<u32>,
    ) -> Result<Fault, EmuError> {
        let duration = duration_ms.map(|ms| Duration::from_millis(u64::from(ms)));
        let no_engine = |kind: &'static str| {
            if engine.is_some() {
                Err(EmuError::InvalidFault {
                    kind,
                    reason: "takes no engine".into(),
                })
            } else {
                Ok(())
            }
        };
        let no_duration = |kind: &'static str| {
            if duration.is_some() {
                Err(EmuError::InvalidFault {
                    kind,
                    reason: "takes no duration".into(),
                })
            } else {
                Ok(())
            }
        };
        let positive = |kind: &'static str, n: u32| {
            if n == 0 {
                Err(EmuError::InvalidFault {
                    kind,
                    reason: "count must be at least 1".into(),
                })
            } else {
                Ok(n)
            }
        };
        match kind {
            "hang-engine" => {
                if count.is_some() {
                    return Err(EmuError::InvalidFault {
                        kind: "hang-engine",
                        reason: "takes no count".into(),
                    });
                }
                Ok(Fault::HangEngine { engine, duration })
            }
            "lost-interrupt" => {
                no_engine("lost-interrupt")?;
                no_duration("lost-interrupt")?;
                Ok(Fault::LostInterrupt {
                    count: positive("lost-interrupt", count.unwrap_or(1))?,
                })
            }
            "fatal-status" | "surprise-removal" => {
                let k = if kind == "fatal-status" {
                    "fatal-status"
                } else {
                    "surprise-removal"
                };
                no_engine(k)?;
                no_duration(k)?;
                if count.is_some() {
                    return Err(EmuError::InvalidFault {
                        kind: k,
                        reason: "takes no count".into(),
                    });
                }
                Ok(if k == "fatal-status" {
                    Fault::FatalStatus
                } else {
                    Fault::SurpriseRemoval
                })
            }
            "corrupt-completion" => {
                no_engine("corrupt-completion")?;
                no_duration("corrupt-completion")?;
                Ok(Fault::CorruptCompletion {
                    count: positive("corrupt-completion", count.unwrap_or(1))?,
                })
            }
            "slow-engine" => {
                let factor = count.unwrap_or(DEFAULT_SLOW_FACTOR);
                if factor < 2 {
                    return Err(EmuError::InvalidFault {
                        kind: "slow-engine",
                        reason: format!("factor must be at least 2, got {factor}"),
                    });
                }
                Ok(Fault::SlowEngine {
                    engine,
                    factor,
                    duration,
                })
            }
            other => Err(EmuError::UnknownFault {
                kind: other.to_string(),
                known: KINDS.join(", "),
            }),
        }
    }
}
