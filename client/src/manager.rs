//! [`Client`]: one connection to vpud, with typed views of its manager, cards and sessions.

use std::collections::HashMap;

use serde::Serialize;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, Variant};

use super::connect::BusTarget;
use super::error::{ClientError, Result};
use super::params::SessionParams;
use super::proxy::{
    CardProxy, EmulatorProxy, ManagerProxy, SessionProxy, BUS_NAME, CARD_PATH_PREFIX,
};
use super::session::Session;
use super::transcode::Transcode;
use super::transcode_params::TranscodeParams;

/// A connection to vpud.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Connection,
    manager: ManagerProxy<'static>,
    bus: String,
}

/// The daemon as a whole (`Manager` properties).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ManagerInfo {
    pub version: String,
    pub policy: String,
    pub cards: usize,
    pub sessions: usize,
    pub capacity: u64,
    pub load: u64,
}

/// One card (`Card` properties).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CardInfo {
    pub path: String,
    pub name: String,
    pub backend: String,
    pub pci_address: String,
    pub model: String,
    pub serial: String,
    pub firmware_version: String,
    pub codecs: Vec<String>,
    pub engines: u32,
    pub capacity: u64,
    pub load: u64,
    pub active_sessions: u32,
    pub state: String,
    pub errors: u64,
}

/// One session (`Session` properties).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub path: String,
    pub owner: String,
    pub card: String,
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub bitrate: u32,
    pub state: String,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub keyframes: u64,
}

/// Options of `Emulator.InjectFault`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultOptions {
    pub engine: Option<u32>,
    pub count: Option<u32>,
    pub duration_ms: Option<u32>,
}

impl Client {
    /// Connects to the bus named by `bus` (a `--bus` value), else `VPUD_BUS_ADDRESS`, else
    /// the system bus, and checks that vpud is there.
    pub async fn connect(bus: Option<&str>) -> Result<Client> {
        Client::connect_to(&BusTarget::resolve(bus)?).await
    }

    /// Connects to `target` and checks that vpud is there.
    pub async fn connect_to(target: &BusTarget) -> Result<Client> {
        let conn = target.connect().await?;
        Client::from_connection(conn, target.to_string()).await
    }

    /// Uses an existing connection; `bus` names it in error messages.
    pub async fn from_connection(conn: Connection, bus: String) -> Result<Client> {
        let dbus = zbus::fdo::DBusProxy::new(&conn)
            .await
            .map_err(|e| ClientError::from_call("org.freedesktop.DBus", e))?;
        let name = zbus::names::BusName::try_from(BUS_NAME)
            .map_err(|e| ClientError::from_call("NameHasOwner", e))?;
        let present = dbus
            .name_has_owner(name)
            .await
            .map_err(|e| ClientError::from_call("NameHasOwner", e.into()))?;
        if !present {
            return Err(ClientError::DaemonNotFound { bus });
        }
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_call("Manager", e))?;
        Ok(Client { conn, manager, bus })
    }

    /// The underlying bus connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The bus this client is on, for messages.
    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// The manager proxy.
    pub fn manager(&self) -> &ManagerProxy<'static> {
        &self.manager
    }

    /// The daemon's overall state.
    pub async fn manager_info(&self) -> Result<ManagerInfo> {
        let m = &self.manager;
        let call = |e| ClientError::from_call("Manager properties", e);
        Ok(ManagerInfo {
            version: m.version().await.map_err(call)?,
            policy: m.policy().await.map_err(call)?,
            cards: m.cards().await.map_err(call)?.len(),
            sessions: m.sessions().await.map_err(call)?.len(),
            capacity: m.capacity().await.map_err(call)?,
            load: m.load().await.map_err(call)?,
        })
    }

    /// Creates an encode session (`Manager.CreateSession`) and sets up its data channel.
    pub async fn create_session(&self, params: &SessionParams) -> Result<Session> {
        let (path, channel) = self
            .manager
            .create_session(params.to_dict())
            .await
            .map_err(|e| ClientError::from_call("Manager.CreateSession", e))?;
        let proxy = self.session_proxy(&path).await?;
        Session::open(path, proxy, channel.into()).await
    }

    /// Creates a transcode session (`Manager.CreateTranscode`) and sets up its data channel.
    pub async fn create_transcode(&self, params: &TranscodeParams) -> Result<Transcode> {
        let outputs = params.outputs.iter().map(|o| o.to_dict()).collect();
        let (path, channel) = self
            .manager
            .create_transcode(params.input.to_dict(), outputs)
            .await
            .map_err(|e| ClientError::from_call("Manager.CreateTranscode", e))?;
        let proxy = self.session_proxy(&path).await?;
        Transcode::open(path, proxy, channel.into()).await
    }

    /// Object paths of all cards.
    pub async fn card_paths(&self) -> Result<Vec<OwnedObjectPath>> {
        self.manager
            .cards()
            .await
            .map_err(|e| ClientError::from_call("Manager.Cards", e))
    }

    /// A proxy for the card at `path`.
    pub async fn card_proxy(&self, path: &OwnedObjectPath) -> Result<CardProxy<'static>> {
        CardProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_call("Card", e))
    }

    /// A proxy for the session at `path`.
    pub async fn session_proxy(&self, path: &OwnedObjectPath) -> Result<SessionProxy<'static>> {
        SessionProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_call("Session", e))
    }

    /// Properties of one card.
    pub async fn card_info(&self, path: &OwnedObjectPath) -> Result<CardInfo> {
        let c = self.card_proxy(path).await?;
        let call = |e| ClientError::from_call("Card properties", e);
        Ok(CardInfo {
            path: path.to_string(),
            name: c.name().await.map_err(call)?,
            backend: c.backend().await.map_err(call)?,
            pci_address: c.pci_address().await.map_err(call)?,
            model: c.model().await.map_err(call)?,
            serial: c.serial().await.map_err(call)?,
            firmware_version: c.firmware_version().await.map_err(call)?,
            codecs: c.codecs().await.map_err(call)?,
            engines: c.engines().await.map_err(call)?,
            capacity: c.capacity().await.map_err(call)?,
            load: c.load().await.map_err(call)?,
            active_sessions: c.active_sessions().await.map_err(call)?,
            state: c.state().await.map_err(call)?,
            errors: c.errors().await.map_err(call)?,
        })
    }

    /// Properties of every card, in path order.
    pub async fn cards(&self) -> Result<Vec<CardInfo>> {
        let mut out = Vec::new();
        for path in self.card_paths().await? {
            out.push(self.card_info(&path).await?);
        }
        Ok(out)
    }

    /// Properties of one session.
    pub async fn session_info(&self, path: &OwnedObjectPath) -> Result<SessionInfo> {
        let s = self.session_proxy(path).await?;
        let call = |e| ClientError::from_call("Session properties", e);
        Ok(SessionInfo {
            path: path.to_string(),
            owner: s.owner().await.map_err(call)?,
            card: s.card().await.map_err(call)?.to_string(),
            codec: s.codec().await.map_err(call)?,
            width: s.width().await.map_err(call)?,
            height: s.height().await.map_err(call)?,
            bitrate: s.bitrate().await.map_err(call)?,
            state: s.state().await.map_err(call)?,
            frames_in: s.frames_in().await.map_err(call)?,
            frames_out: s.frames_out().await.map_err(call)?,
            bytes_out: s.bytes_out().await.map_err(call)?,
            keyframes: s.keyframes().await.map_err(call)?,
        })
    }

    /// Properties of every open session. A session that closes while being listed is left
    /// out.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>> {
        let paths = self
            .manager
            .sessions()
            .await
            .map_err(|e| ClientError::from_call("Manager.Sessions", e))?;
        let mut out = Vec::new();
        for path in paths {
            match self.session_info(&path).await {
                Ok(info) => out.push(info),
                Err(e) if e.is_unknown_object() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Resolves a card given as an index (`0`) or an object path.
    pub async fn resolve_card(&self, spec: &str) -> Result<OwnedObjectPath> {
        let paths = self.card_paths().await?;
        let wanted = if spec.starts_with('/') {
            spec.to_string()
        } else if spec.parse::<u32>().is_ok() {
            format!("{CARD_PATH_PREFIX}{spec}")
        } else {
            return Err(ClientError::UnknownCard(spec.to_string()));
        };
        paths
            .into_iter()
            .find(|p| p.as_str() == wanted)
            .ok_or_else(|| ClientError::UnknownCard(spec.to_string()))
    }

    /// Fault kinds an emulated card accepts.
    pub async fn fault_kinds(&self, card: &OwnedObjectPath) -> Result<Vec<String>> {
        self.emulator_proxy(card)
            .await?
            .fault_kinds()
            .await
            .map_err(|e| ClientError::from_call("Emulator.FaultKinds", e))
    }

    /// DMA mappings the host holds on an emulated card now (`Emulator.DmaMappings`).
    pub async fn dma_mappings(&self, card: &OwnedObjectPath) -> Result<u32> {
        self.emulator_proxy(card)
            .await?
            .dma_mappings()
            .await
            .map_err(|e| ClientError::from_call("Emulator.DmaMappings", e))
    }

    /// Injects a fault into an emulated card (`Emulator.InjectFault`).
    pub async fn inject_fault(
        &self,
        card: &OwnedObjectPath,
        kind: &str,
        options: FaultOptions,
    ) -> Result<()> {
        let mut opts: HashMap<&str, Variant<'_>> = HashMap::new();
        if let Some(v) = options.engine {
            opts.insert("engine", Variant::from(v));
        }
        if let Some(v) = options.count {
            opts.insert("count", Variant::from(v));
        }
        if let Some(v) = options.duration_ms {
            opts.insert("duration_ms", Variant::from(v));
        }
        self.emulator_proxy(card)
            .await?
            .inject_fault(kind, opts)
            .await
            .map_err(|e| ClientError::from_call("Emulator.InjectFault", e))
    }

    async fn emulator_proxy(&self, card: &OwnedObjectPath) -> Result<EmulatorProxy<'static>> {
        EmulatorProxy::builder(&self.conn)
            .path(card.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_call("Emulator", e))
    }
}
