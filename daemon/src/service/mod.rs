//! The daemon as a library: [`run`] serves the D-Bus API until a shutdown future
//! resolves; [`Embedded`] runs a private bus and the daemon inside the caller's process
//! (for `vpuctl --emulate`, `vpuctl demo` and tests).

use std::future::Future;
use std::str::FromStr;

use tokio::sync::oneshot;

use crate::bus::{BusError, PrivateBus};
use crate::config::Config;

/// Which message bus the daemon serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    /// The system bus (production).
    System,
    /// The user's session bus.
    Session,
    /// A private `dbus-daemon` started for this daemon; its address is reported through
    /// [`RunOptions::ready`].
    Private,
    /// A bus at this D-Bus address (`unix:path=…`).
    Address(String),
}

impl FromStr for BusChoice {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "system" => BusChoice::System,
            "session" => BusChoice::Session,
            "private" => BusChoice::Private,
            a if a.contains(':') && a.contains('=') => BusChoice::Address(a.to_owned()),
            other => {
                return Err(ServiceError::BadBus {
                    given: other.to_owned(),
                })
            }
        })
    }
}

/// What the daemon reports once it owns its bus name.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The address of the bus it serves on.
    pub address: String,
}

/// Options of one daemon run that do not come from the configuration file.
#[derive(Debug)]
pub struct RunOptions {
    pub bus: BusChoice,
    /// Emulated cards to add to those of the configuration (`--emulate N`).
    pub emulate: u32,
    /// Told once the bus name is owned and the daemon serves requests.
    pub ready: Option<oneshot::Sender<Ready>>,
    /// Send `READY=1` and watchdog pings to systemd (`NOTIFY_SOCKET`).
    pub systemd_notify: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            bus: BusChoice::System,
            emulate: 0,
            ready: None,
            systemd_notify: true,
        }
    }
}

/// Errors of the daemon as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("--bus {given:?}: expected system, session, private or a D-Bus address such as unix:path=/run/bus")]
    BadBus { given: String },
    #[error("starting a private bus failed")]
    PrivateBus(#[from] BusError),
    #[error("connecting to the {bus} bus failed")]
    Connect {
        bus: String,
        #[source]
        source: zbus::Error,
    },
    #[error("the daemon stopped before it was ready")]
    NotReady,
    #[error("the card layer is not available in this build")]
    CardLayerMissing,
}

/// Runs the daemon until `shutdown` resolves (SIGTERM in the service binary), then closes
/// every session and shuts the cards down.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let _ = (config, opts, shutdown);
    Err(ServiceError::CardLayerMissing)
}

/// A private bus with the daemon running on it, inside this process. Dropping it stops
/// the daemon and the bus.
#[derive(Debug)]
pub struct Embedded {
    bus: PrivateBus,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServiceError>>>,
}

impl Embedded {
    /// Starts a private bus and a daemon with `emulated_cards` emulated cards (added to
    /// those of `config`) on it; returns once the daemon serves requests.
    pub async fn start(emulated_cards: u32, config: Config) -> Result<Embedded, ServiceError> {
        let bus = PrivateBus::start()?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let opts = RunOptions {
            bus: BusChoice::Address(bus.address().to_owned()),
            emulate: emulated_cards,
            ready: Some(ready_tx),
            systemd_notify: false,
        };
        let task = tokio::spawn(run(config, opts, async move {
            let _ = stop_rx.await;
        }));
        let mut embedded = Embedded {
            bus,
            stop: Some(stop_tx),
            task: Some(task),
        };
        if ready_rx.await.is_err() {
            // The daemon ended before it was ready: report its own error.
            return Err(match embedded.task.take() {
                Some(task) => match task.await {
                    Ok(Err(e)) => e,
                    _ => ServiceError::NotReady,
                },
                None => ServiceError::NotReady,
            });
        }
        Ok(embedded)
    }

    /// The private bus's address.
    pub fn address(&self) -> &str {
        self.bus.address()
    }

    /// Stops the daemon (sessions closed, cards shut down) and waits for it.
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Err(ServiceError::NotReady)),
            None => Ok(()),
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
