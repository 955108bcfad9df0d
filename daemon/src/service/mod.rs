//! The daemon as a library: [`run`] serves the D-Bus API until a shutdown future
//! resolves; [`Embedded`] runs a private bus and the daemon inside the caller's process
//! (for `vpuctl --emulate`, `vpuctl demo` and tests).
//!
//! [`state`] holds the daemon's state, [`health`] recovery and monitoring, [`admin`]
//! draining and resuming cards, [`changes`] what must be announced (the D-Bus layer's
//! publisher takes it from there).

pub mod admin;
pub mod changes;
pub mod health;
pub mod memory;
pub mod reservation;
pub mod state;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use zbus::OwnedObjectPath;

use crate::bus::{BusError, PrivateBus};
use crate::channel::proto::ErrorCode;
use crate::config::{Config, ConfigError};
use crate::dbus;
use crate::discovery::{self, DiscoveryError};
use crate::metrics::http::{Endpoint, HttpError};
use crate::metrics::{exposition, Metrics};
use crate::notify::{self, Notifier};
use state::{CardEntry, Daemon, ROOT_PATH};

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
    /// The daemon's state (cards, sessions, metrics), for embedders and tests.
    pub daemon: Arc<Daemon>,
    /// Where the Prometheus endpoint listens, if `[metrics] enabled = true`.
    pub metrics: Option<std::net::SocketAddr>,
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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("starting a private bus failed")]
    PrivateBus(#[from] BusError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("no VPU cards found. Bind cards to vfio-pci (install udev/70-vpud.rules, or: echo vfio-pci > /sys/bus/pci/devices/ADDRESS/driver_override; echo ADDRESS > /sys/bus/pci/drivers_probe), or run emulated cards with --emulate N (or [emulated] count = N in the configuration)")]
    NoCards,
    #[error(transparent)]
    Bus(#[from] dbus::FrontendError),
    #[error(transparent)]
    Metrics(#[from] HttpError),
    #[error("the daemon stopped before it was ready")]
    NotReady,
}

/// Runs the daemon until `shutdown` resolves (SIGTERM in the service binary), then closes
/// every session and shuts the cards down.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    config.validate("configuration")?;
    let notifier = if opts.systemd_notify {
        match Notifier::from_env() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "systemd notification socket unusable");
                None
            }
        }
    } else {
        None
    };
    let found = discovery::discover(&config, opts.emulate).await?;
    if found.is_empty() {
        return Err(ServiceError::NoCards);
    }
    let cards = found
        .into_iter()
        .enumerate()
        .map(|(index, f)| {
            Arc::new(CardEntry {
                index,
                path: card_path(index),
                name: f.info.name.clone(),
                backend: f.info.backend,
                pci_address: f.info.pci_address.clone(),
                card: f.card,
                emulator: f.emulator,
                errors: AtomicU64::new(0),
                error_kinds: std::sync::Mutex::default(),
                errors_announced: AtomicU64::new(0),
                reset_lock: tokio::sync::Mutex::new(()),
                resets: tokio::sync::watch::Sender::new(0),
            })
        })
        .collect::<Vec<_>>();
    for c in &cards {
        tracing::info!(card = %c.name, index = c.index, backend = %c.backend,
            capacity = c.card.identity().capacity(), "card online");
    }
    let endpoint = match config.metrics.socket_address() {
        Some(address) => Some(Endpoint::bind(address).await?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new(endpoint.is_some()));
    let mut codecs: Vec<&'static str> = cards
        .iter()
        .flat_map(|c| c.card.identity().codecs.iter().map(|c| c.as_str()))
        .collect();
    codecs.sort_unstable();
    codecs.dedup();
    metrics.prepare_codecs(codecs);
    let daemon = Arc::new(Daemon::new(config, cards, metrics));
    daemon.spare_channels.fill();
    let metrics_address = endpoint.as_ref().map(Endpoint::address);
    let exporter = endpoint.map(|e| {
        tracing::info!(address = %e.address(), "metrics served at http://{}/metrics", e.address());
        tokio::spawn(e.serve(exposition::registry(&daemon)))
    });

    let frontend = dbus::Frontend::start(&daemon, &opts.bus).await?;
    if let Some(n) = &notifier {
        if let Err(e) = n.send("READY=1\nSTATUS=serving") {
            tracing::warn!(error = %e, "telling systemd we are ready failed");
        }
    }
    if let Some(tx) = opts.ready {
        let _ = tx.send(Ready {
            address: frontend.address().to_owned(),
            daemon: Arc::clone(&daemon),
            metrics: metrics_address,
        });
    }
    let monitor = tokio::spawn(health::monitor(Arc::clone(&daemon)));
    let trimmer = tokio::spawn(memory::trimmer(Arc::clone(&daemon)));

    let watchdog = notifier.as_ref().and(notify::watchdog_interval());
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ping.tick(), if watchdog.is_some() => {
                if let Some(n) = &notifier {
                    if let Err(e) = n.send("WATCHDOG=1") {
                        tracing::warn!(error = %e, "watchdog ping failed");
                    }
                }
            }
        }
    }

    tracing::info!("shutting down");
    if let Some(n) = &notifier {
        let _ = n.send("STOPPING=1");
    }
    daemon.shutting_down.store(true, Ordering::Release);
    monitor.abort();
    trimmer.abort();
    if let Some(e) = &exporter {
        e.abort();
    }
    let sessions = daemon.all_sessions();
    for s in &sessions {
        s.request_close(Some(ErrorCode::Shutdown), "the daemon is stopping");
    }
    for s in &sessions {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.wait_finished()).await;
    }
    frontend.stop().await;
    daemon.spare_channels.clear();
    for c in &daemon.cards {
        match tokio::time::timeout(Duration::from_secs(5), c.card.shutdown()).await {
            Ok(Ok(())) => tracing::info!(card = %c.name, "card shut down"),
            Ok(Err(e)) => tracing::warn!(card = %c.name, error = %e, "card shutdown failed"),
            Err(_) => tracing::warn!(card = %c.name, "card shutdown timed out"),
        }
    }
    Ok(())
}

fn card_path(index: usize) -> OwnedObjectPath {
    // A path of the fixed root plus a decimal number is always valid.
    OwnedObjectPath::try_from(format!("{ROOT_PATH}/card/{index}")).unwrap_or_else(|_| {
        OwnedObjectPath::from(zbus::ObjectPath::from_static_str_unchecked(ROOT_PATH))
    })
}

/// A private bus with the daemon running on it, inside this process. Dropping it stops
/// the daemon and the bus.
#[derive(Debug)]
pub struct Embedded {
    bus: PrivateBus,
    daemon: Arc<Daemon>,
    metrics: Option<std::net::SocketAddr>,
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
        let ready = match ready_rx.await {
            Ok(r) => r,
            // The daemon ended before it was ready: report its own error.
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => e,
                    _ => ServiceError::NotReady,
                })
            }
        };
        Ok(Embedded {
            bus,
            daemon: ready.daemon,
            metrics: ready.metrics,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The private bus's address.
    pub fn address(&self) -> &str {
        self.bus.address()
    }

    /// The daemon's state: cards (with their emulators), sessions, metrics.
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Where the Prometheus endpoint listens, if the configuration enabled it.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics
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
