//! The D-Bus API (`dbus-api.md`, `daemon/dist/org.vpud.Vpud1.xml`): a thin layer that
//! validates arguments ([`params`]), checks the caller ([`access`]) and delegates to the
//! scheduler and sessions; typed errors ([`error`]); change signals ([`signals`]). The
//! daemon goes on its bus through [`Frontend`].

pub mod access;
pub mod card;
pub mod error;
pub mod manager;
pub mod params;
pub mod reservation;
pub mod session;
pub mod signals;
pub mod transcode_params;

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use zbus::Connection;

use crate::bus::{BusError, PrivateBus};
use crate::service::state::{Daemon, ROOT_PATH};
use crate::service::BusChoice;
use error::VpudError;

/// The well-known bus name.
pub const BUS_NAME: &str = "org.vpud.Vpud1";

/// How long stopping waits for the last change signals to go out.
const PUBLISH_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the daemon could not go on its bus.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("starting a private bus failed")]
    PrivateBus(#[from] BusError),
    #[error("connecting to the {bus} bus failed")]
    Connect {
        bus: String,
        #[source]
        source: zbus::Error,
    },
    #[error("publishing the D-Bus objects failed")]
    Serve(#[source] zbus::Error),
    #[error("requesting the bus name {name} failed")]
    Name {
        name: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("the bus name {name} is taken (is another vpud running?)")]
    NameTaken { name: &'static str },
}

/// The daemon on its bus: its objects served, clients that leave watched, the changes
/// its core records announced, and the well-known name owned. All the daemon's start-up
/// takes from this layer.
#[derive(Debug)]
pub struct Frontend {
    conn: Connection,
    address: String,
    watcher: JoinHandle<zbus::Result<()>>,
    publisher: JoinHandle<()>,
    stop_publishing: tokio::sync::watch::Sender<bool>,
    /// The bus itself, when the daemon started its own (`--bus private`).
    _private: Option<PrivateBus>,
}

impl Frontend {
    /// Connects to `bus`, serves the daemon's objects, starts watching clients and
    /// announcing changes, and takes [`BUS_NAME`]: from here on, requests come in.
    pub async fn start(daemon: &Arc<Daemon>, bus: &BusChoice) -> Result<Frontend, FrontendError> {
        let (builder, address, private) = match bus {
            BusChoice::System => (
                zbus::connection::Builder::system(),
                std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                    .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into()),
                None,
            ),
            BusChoice::Session => (
                zbus::connection::Builder::session(),
                std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_default(),
                None,
            ),
            BusChoice::Private => {
                let bus = PrivateBus::start()?;
                let address = bus.address().to_owned();
                (
                    zbus::connection::Builder::address(address.as_str()),
                    address,
                    Some(bus),
                )
            }
            BusChoice::Address(a) => (
                zbus::connection::Builder::address(a.as_str()),
                a.clone(),
                None,
            ),
        };
        let bus_name = match bus {
            BusChoice::System => "system".to_owned(),
            BusChoice::Session => "session".to_owned(),
            _ => address.clone(),
        };
        let conn = builder
            .build()
            .await
            .map_err(|source| FrontendError::Connect {
                bus: bus_name.clone(),
                source,
            })?;
        daemon.metrics.prepare_refusals(&VpudError::KINDS);
        daemon.set_connection(conn.clone());
        serve_objects(daemon, &conn)
            .await
            .map_err(FrontendError::Serve)?;
        let watcher = tokio::spawn(watch_clients(Arc::clone(daemon), conn.clone()));
        let (stop_publishing, stop) = tokio::sync::watch::channel(false);
        let publisher = tokio::spawn(signals::publish(Arc::clone(daemon), stop));
        let frontend = Frontend {
            conn,
            address,
            watcher,
            publisher,
            stop_publishing,
            _private: private,
        };
        let reply = frontend
            .conn
            .request_name_with_flags(BUS_NAME, zbus::fdo::RequestNameFlags::DO_NOT_QUEUE)
            .await
            .map_err(|source| match source {
                // zbus reports an owner that will not queue us as an error.
                zbus::Error::NameTaken => FrontendError::NameTaken { name: BUS_NAME },
                source => FrontendError::Name {
                    name: BUS_NAME,
                    source,
                },
            })?;
        if !matches!(
            reply,
            zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner
        ) {
            return Err(FrontendError::NameTaken { name: BUS_NAME });
        }
        tracing::info!(bus = %bus_name, name = BUS_NAME, cards = daemon.cards.len(), "serving");
        Ok(frontend)
    }

    /// The address of the bus the daemon serves on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Announces what is still recorded (the caller closed the sessions first, so their
    /// `Closed` signals go out), then gives up the bus name and stops watching.
    pub async fn stop(mut self) {
        self.stop_publishing.send_replace(true);
        if tokio::time::timeout(PUBLISH_DRAIN, &mut self.publisher)
            .await
            .is_err()
        {
            tracing::warn!("the last change signals were not all sent");
        }
        let _ = self.conn.release_name(BUS_NAME).await;
        self.watcher.abort();
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        self.watcher.abort();
        self.publisher.abort();
    }
}

/// Runs a method body and counts its error, if any, under the error's D-Bus name.
pub async fn counted<T>(
    daemon: &Daemon,
    body: impl Future<Output = Result<T, VpudError>>,
) -> Result<T, VpudError> {
    let r = body.await;
    if let Err(e) = &r {
        daemon.metrics.error(e.kind());
        tracing::debug!(error = ?e, "method failed");
    }
    r
}

/// Serves the root (ObjectManager, Manager) and every card object on `conn`.
async fn serve_objects(daemon: &Arc<Daemon>, conn: &Connection) -> zbus::Result<()> {
    let server = conn.object_server();
    server.at(ROOT_PATH, zbus::fdo::ObjectManager).await?;
    server
        .at(
            ROOT_PATH,
            manager::ManagerIface {
                daemon: Arc::clone(daemon),
            },
        )
        .await?;
    for c in &daemon.cards {
        server
            .at(
                c.path.clone(),
                card::CardIface {
                    daemon: Arc::clone(daemon),
                    card: Arc::clone(c),
                },
            )
            .await?;
        if let Some(emu) = &c.emulator {
            server
                .at(
                    c.path.clone(),
                    card::EmulatorIface {
                        daemon: Arc::clone(daemon),
                        card: Arc::clone(c),
                        emulator: Arc::clone(emu),
                    },
                )
                .await?;
        }
    }
    Ok(())
}

/// Ends the sessions and reservations of every client that leaves the bus (including by crashing: the bus
/// notices the closed socket). Runs until the connection closes.
async fn watch_clients(daemon: Arc<Daemon>, conn: Connection) -> zbus::Result<()> {
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut changes = dbus.receive_name_owner_changed().await?;
    while let Some(signal) = changes.next().await {
        let Ok(args) = signal.args() else { continue };
        if args.new_owner().is_some() {
            continue;
        }
        let name = args.name().to_string();
        if !name.starts_with(':') {
            continue;
        }
        crate::session::owner_left(&daemon, &name);
        crate::service::reservation::owner_left(&daemon, &name);
    }
    Ok(())
}
