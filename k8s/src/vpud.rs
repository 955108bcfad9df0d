//! The plugin's view of vpud: its cards (capacity, pixel rate, state) kept current from
//! `PropertiesChanged` signals, whether vpud is on the bus at all, and reservations made
//! and released on one bus connection.
//!
//! [`Vpud::run`] connects, follows the owner of `org.vpud.Vpud1` (vpud restarting is a new
//! owner) and the cards' `State`, and publishes an [`Inventory`] on every change. When
//! vpud leaves the bus, or the bus goes away, the inventory says so (every unit is then
//! unhealthy) and the loop reconnects by itself. Reservations belong to the connection
//! that made them: when it ends, or vpud restarts, they are gone, and the inventory's
//! `generation` moves on so that the plugin forgets them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use vpud_client::proxy::{CardProxy, ManagerProxy, BUS_NAME, CARD_PATH_PREFIX};
use vpud_client::{BusTarget, ClientError};
use zbus::message::Type;
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Variant};

use crate::units;

/// One card as vpud reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardView {
    /// `N` of `/org/vpud/Vpud1/card/N`.
    pub index: usize,
    pub path: OwnedObjectPath,
    /// `Card.Capacity`, load units.
    pub capacity: u64,
    /// `Card.PixelRate`, H.264 luma samples per second.
    pub pixel_rate: u64,
    /// `Card.State`.
    pub state: String,
}

impl CardView {
    /// Encode units the card offers.
    pub fn units(&self) -> u64 {
        units::card_units(self.pixel_rate)
    }
}

/// What the plugin advertises from: the cards last seen, and whether vpud is reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Kept while vpud is away, so that its units stay listed (as unhealthy).
    pub cards: Vec<CardView>,
    /// vpud owns its name on the bus and the cards were read.
    pub connected: bool,
    /// Moves on each time the plugin starts following a vpud instance on a connection;
    /// reservations of an earlier generation are gone.
    pub generation: u64,
}

impl Inventory {
    /// Whether units of card `card` can be handed out now.
    pub fn healthy(&self, card: usize) -> bool {
        self.connected && self.card(card).is_some_and(|c| c.state == "online")
    }

    /// Card `index`, if vpud reported it.
    pub fn card(&self, index: usize) -> Option<&CardView> {
        self.cards.iter().find(|c| c.index == index)
    }
}

/// Why a request to vpud failed.
#[derive(Debug, thiserror::Error)]
pub enum VpudError {
    #[error("vpud is not reachable on the bus")]
    NotConnected,
    #[error(transparent)]
    Call(#[from] ClientError),
}

#[derive(Debug, Clone)]
struct Link {
    conn: Connection,
    generation: u64,
}

/// The shared view of vpud, and the connection reservations are made on.
#[derive(Debug)]
pub struct Vpud {
    inventory: watch::Sender<Inventory>,
    link: Mutex<Option<Link>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long to wait before connecting again after the bus or vpud went away.
const RETRY: Duration = Duration::from_millis(250);

impl Vpud {
    /// A view with no cards, not connected; [`Vpud::run`] fills it.
    pub fn new() -> Arc<Vpud> {
        Arc::new(Vpud {
            inventory: watch::Sender::new(Inventory::default()),
            link: Mutex::new(None),
        })
    }

    /// Follows every change of the inventory.
    pub fn subscribe(&self) -> watch::Receiver<Inventory> {
        self.inventory.subscribe()
    }

    /// The inventory now.
    pub fn inventory(&self) -> Inventory {
        self.inventory.borrow().clone()
    }

    /// Reserves `load_units` load units on card `card`; returns the reservation and the
    /// generation it belongs to.
    pub async fn reserve(
        &self,
        card: &OwnedObjectPath,
        load_units: u64,
    ) -> Result<(OwnedObjectPath, u64), VpudError> {
        let link = lock(&self.link).clone().ok_or(VpudError::NotConnected)?;
        let manager = ManagerProxy::builder(&link.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_call("Manager", e))?;
        let mut params = HashMap::new();
        params.insert("units", Variant::U64(load_units));
        params.insert("card", Variant::ObjectPath(card.as_ref()));
        let path = manager
            .reserve(params)
            .await
            .map_err(|e| ClientError::from_call("Reserve", e))?;
        Ok((path, link.generation))
    }

    /// Releases reservation `path` of generation `generation`; a reservation of an earlier
    /// generation is gone already, which is not an error.
    pub async fn release(&self, path: &OwnedObjectPath, generation: u64) -> Result<(), VpudError> {
        let Some(link) = lock(&self.link).clone() else {
            return Ok(());
        };
        if link.generation != generation {
            return Ok(());
        }
        let r = link
            .conn
            .call_method(
                Some(BUS_NAME),
                path.as_str(),
                Some("org.vpud.Vpud1.Reservation"),
                "Release",
                &(),
            )
            .await;
        match r.map_err(|e| ClientError::from_call("Release", e)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_unknown_object() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn publish(&self, change: impl FnOnce(&mut Inventory)) {
        self.inventory.send_if_modified(|inv| {
            let before = inv.clone();
            change(inv);
            *inv != before
        });
    }

    fn disconnected(&self) {
        *lock(&self.link) = None;
        self.publish(|inv| inv.connected = false);
    }

    /// Follows vpud on `target` until `shutdown` resolves, reconnecting whenever the bus
    /// or vpud goes away.
    pub async fn run(self: Arc<Self>, target: BusTarget, shutdown: impl std::future::Future) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.follow(&target) => {
                    if let Err(e) = r {
                        tracing::warn!(bus = %target, error = %e, "lost vpud; units are unhealthy until it is back");
                    }
                }
            }
            self.disconnected();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        self.disconnected();
    }

    /// One connection: returns when it ends.
    async fn follow(&self, target: &BusTarget) -> Result<(), ClientError> {
        let conn = target.connect().await?;
        let bus = |e| ClientError::from_call("org.freedesktop.DBus", e);
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.map_err(bus)?;
        // Subscribed before anything is read, so that no change is missed.
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await
            .map_err(bus)?;
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/vpud/Vpud1/card")
            .build()
            .map_err(bus)?;
        let mut changes =
            MessageStream::for_match_rule(rule, &conn, std::num::NonZeroUsize::new(256))
                .await
                .map_err(bus)?;
        let mut owner = dbus
            .get_name_owner(BUS_NAME.try_into().map_err(bus)?)
            .await
            .ok()
            .map(|o| o.to_string());
        loop {
            if let Some(o) = &owner {
                match read_cards(&conn).await {
                    Ok(cards) => {
                        let generation = {
                            let mut link = lock(&self.link);
                            let generation = self.inventory.borrow().generation + 1;
                            *link = Some(Link {
                                conn: conn.clone(),
                                generation,
                            });
                            generation
                        };
                        tracing::info!(owner = %o, cards = cards.len(), "following vpud");
                        self.publish(|inv| {
                            inv.cards = cards;
                            inv.connected = true;
                            inv.generation = generation;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading vpud's cards failed");
                        return Err(e);
                    }
                }
            }
            // Wait for the owner to change (vpud leaving, or a new vpud), applying card
            // state changes meanwhile.
            loop {
                tokio::select! {
                    sig = owners.next() => {
                        let Some(sig) = sig else { return Ok(()) };
                        let Ok(args) = sig.args() else { continue };
                        let new = args.new_owner().as_ref().map(|n| n.to_string());
                        if new == owner {
                            continue;
                        }
                        tracing::info!(old = ?owner, new = ?new, "vpud changed on the bus");
                        self.disconnected();
                        owner = new;
                        break;
                    }
                    msg = changes.next() => {
                        let Some(msg) = msg else { return Ok(()) };
                        let Ok(msg) = msg else { return Ok(()) };
                        self.apply_change(&msg, owner.as_deref());
                    }
                }
            }
        }
    }

    /// Applies a `PropertiesChanged` of a card that carries `State`.
    fn apply_change(&self, msg: &zbus::Message, owner: Option<&str>) {
        let header = msg.header();
        let from_vpud = header.sender().is_some_and(|s| Some(s.as_str()) == owner);
        let Some(path) = header.path() else { return };
        let Some(index) = path
            .as_str()
            .strip_prefix(CARD_PATH_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        if !from_vpud {
            return;
        }
        let body = msg.body();
        let Ok((iface, props, _)) =
            body.deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
        else {
            return;
        };
        if iface != "org.vpud.Vpud1.Card" {
            return;
        }
        let Some(state) = props
            .get("State")
            .and_then(|v| String::try_from(v.clone()).ok())
        else {
            return;
        };
        tracing::info!(card = index, state = %state, "card state");
        self.publish(|inv| {
            if let Some(c) = inv.cards.iter_mut().find(|c| c.index == index) {
                c.state = state;
            }
        });
    }
}

async fn read_cards(conn: &Connection) -> Result<Vec<CardView>, ClientError> {
    let manager = ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| ClientError::from_call("Manager", e))?;
    let paths = manager
        .cards()
        .await
        .map_err(|e| ClientError::from_call("Manager.Cards", e))?;
    let mut cards = Vec::with_capacity(paths.len());
    for path in paths {
        let Some(index) = path
            .as_str()
            .strip_prefix(CARD_PATH_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let card = CardProxy::builder(conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_call("Card", e))?;
        let get = |e| ClientError::from_call("Card properties", e);
        cards.push(CardView {
            index,
            path: path.clone(),
            capacity: card.capacity().await.map_err(get)?,
            pixel_rate: card.pixel_rate().await.map_err(get)?,
            state: card.state().await.map_err(get)?,
        });
    }
    cards.sort_by_key(|c| c.index);
    Ok(cards)
}
