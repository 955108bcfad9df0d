//! The D-Bus API (`dbus-api.md`, `daemon/dist/org.vpud.Vpud1.xml`): a thin layer that
//! validates arguments ([`params`]), checks the caller ([`access`]) and delegates to the
//! scheduler and sessions; typed errors ([`error`]); change signals ([`signals`]).

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
use zbus::Connection;

use crate::service::state::{Daemon, ROOT_PATH};
use error::VpudError;

/// The well-known bus name.
pub const BUS_NAME: &str = "org.vpud.Vpud1";

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
pub async fn serve_objects(daemon: &Arc<Daemon>, conn: &Connection) -> zbus::Result<()> {
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
pub async fn watch_clients(daemon: Arc<Daemon>, conn: Connection) -> zbus::Result<()> {
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
