//! The `DevicePlugin` service the kubelet calls.
//!
//! - `ListAndWatch`: every unit of every card (`vpuN-uK`), `Healthy` while vpud reports the
//!   card `online`, `Unhealthy` when it is draining, resetting, failed or offline, or when
//!   vpud or the bus is away; a new list on every change.
//! - `GetPreferredAllocation`: a container's units on one card where they fit
//!   ([`crate::prefer`]).
//! - `Allocate`: per container, one reservation in vpud per card its units are on
//!   (`Manager.Reserve`, the units' load), and what the container needs to use it: the
//!   system bus's socket directory mounted, `VPUD_RESERVATION` naming the reservation
//!   (the largest one, when the units span cards; `VPUD_RESERVATIONS` lists them all).
//!   The kubelet never hands a unit to two live containers, so a unit allocated again
//!   means its earlier container is gone: the reservation that held it is released first.
//! - `PreStartContainer`: nothing to do (not required).
//!
//! Bad requests (unknown or repeated IDs, no IDs, more units than there are) are gRPC
//! errors; nothing is reserved for a request that fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use zbus::OwnedObjectPath;

use crate::api::{self, device_plugin_server::DevicePlugin};
use crate::prefer::{self, PreferError};
use crate::units;
use crate::vpud::{Inventory, Vpud, VpudError};

/// The environment variable naming a container's reservation.
pub const RESERVATION_ENV: &str = vpud_client::RESERVATION_ENV;
/// The environment variable listing all of a container's reservations, comma-separated.
pub const RESERVATIONS_ENV: &str = "VPUD_RESERVATIONS";

/// How containers reach the system bus vpud is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerBus {
    /// The host directory holding the bus socket, mounted into the container.
    pub host_dir: String,
    /// Where it is mounted in the container.
    pub container_dir: String,
    /// The socket's name in that directory.
    pub socket: String,
}

impl Default for ContainerBus {
    fn default() -> Self {
        ContainerBus {
            host_dir: "/run/dbus".into(),
            container_dir: "/run/dbus".into(),
            socket: "system_bus_socket".into(),
        }
    }
}

/// Reservations made for allocated units, of one generation of the vpud link.
#[derive(Debug, Default)]
struct Allocations {
    generation: u64,
    /// Which reservation holds a unit.
    by_device: HashMap<String, OwnedObjectPath>,
    /// The units each reservation holds.
    devices: HashMap<OwnedObjectPath, Vec<String>>,
}

impl Allocations {
    fn record(&mut self, path: OwnedObjectPath, ids: Vec<String>) {
        for id in &ids {
            self.by_device.insert(id.clone(), path.clone());
        }
        self.devices.insert(path, ids);
    }

    fn forget(&mut self, path: &OwnedObjectPath) {
        for id in self.devices.remove(path).unwrap_or_default() {
            if self.by_device.get(&id) == Some(path) {
                self.by_device.remove(&id);
            }
        }
    }
}

/// The device plugin.
#[derive(Debug)]
pub struct Plugin {
    vpud: Arc<Vpud>,
    bus: ContainerBus,
    /// Serialises `Allocate` (the kubelet calls it one container at a time anyway).
    allocations: tokio::sync::Mutex<Allocations>,
}

/// The units advertised for `inv`.
pub fn devices(inv: &Inventory) -> Vec<api::Device> {
    let mut out = Vec::new();
    for card in &inv.cards {
        let health = if inv.healthy(card.index) {
            api::HEALTHY
        } else {
            api::UNHEALTHY
        };
        for unit in 0..card.units() {
            out.push(api::Device {
                id: units::device_id(card.index, unit),
                health: health.to_owned(),
                topology: None,
            });
        }
    }
    out
}

fn status_of(e: VpudError) -> Status {
    use vpud_client::ClientError as C;
    match e {
        VpudError::NotConnected => Status::unavailable(e.to_string()),
        VpudError::Call(C::NoCapacity(m)) | VpudError::Call(C::QuotaExceeded(m)) => {
            Status::resource_exhausted(format!("vpud cannot set the units aside: {m}"))
        }
        VpudError::Call(C::NotFound(m)) => Status::not_found(m),
        VpudError::Call(C::InvalidArgument(m)) => Status::invalid_argument(m),
        VpudError::Call(C::AccessDenied(m)) => Status::permission_denied(m),
        VpudError::Call(other) => Status::unavailable(other.to_string()),
    }
}

impl Plugin {
    /// A plugin advertising what `vpud` reports and reserving through it.
    pub fn new(vpud: Arc<Vpud>, bus: ContainerBus) -> Plugin {
        Plugin {
            vpud,
            bus,
            allocations: tokio::sync::Mutex::new(Allocations::default()),
        }
    }

    /// Checks one container's device IDs: known, healthy, listed once. Returns them by card.
    fn group(inv: &Inventory, ids: &[String]) -> Result<BTreeMap<usize, Vec<String>>, Status> {
        if ids.is_empty() {
            return Err(Status::invalid_argument(format!(
                "no device IDs; ask for at least one {}",
                units::RESOURCE_NAME
            )));
        }
        let mut seen = HashSet::new();
        let mut by_card: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for id in ids {
            let known = units::parse_device_id(id)
                .and_then(|(card, unit)| inv.card(card).filter(|c| unit < c.units()).map(|_| card));
            let Some(card) = known else {
                return Err(Status::invalid_argument(format!(
                    "unknown device ID {id:?}; this node has {}",
                    summary(inv)
                )));
            };
            if !seen.insert(id.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "device ID {id:?} is listed twice"
                )));
            }
            if !inv.healthy(card) {
                return Err(Status::unavailable(format!(
                    "device {id:?} is on card {card}, which is not online"
                )));
            }
            by_card.entry(card).or_default().push(id.clone());
        }
        Ok(by_card)
    }

    /// Releases every reservation that holds one of `ids`.
    async fn release_holding(&self, allocations: &mut Allocations, ids: &[String]) {
        let holding: HashSet<OwnedObjectPath> = ids
            .iter()
            .filter_map(|id| allocations.by_device.get(id).cloned())
            .collect();
        for path in holding {
            tracing::info!(reservation = %path, "units allocated again: releasing their earlier reservation");
            if let Err(e) = self.vpud.release(&path, allocations.generation).await {
                tracing::warn!(reservation = %path, error = %e, "release failed");
            }
            allocations.forget(&path);
        }
    }

    /// Reserves for one container; on error, what it reserved is released again.
    async fn allocate_container(
        &self,
        inv: &Inventory,
        allocations: &mut Allocations,
        by_card: BTreeMap<usize, Vec<String>>,
    ) -> Result<api::ContainerAllocateResponse, Status> {
        let mut groups: Vec<(usize, Vec<String>)> = by_card.into_iter().collect();
        // The card with the most units first: its reservation is VPUD_RESERVATION.
        groups.sort_by_key(|(c, ids)| (std::cmp::Reverse(ids.len()), *c));
        let mut made: Vec<(OwnedObjectPath, Vec<String>)> = Vec::new();
        for (card, ids) in groups {
            self.release_holding(allocations, &ids).await;
            let result = match inv.card(card) {
                None => Err(Status::not_found(format!("no card {card}"))),
                Some(c) => match units::load_units(ids.len() as u64, c.capacity, c.pixel_rate) {
                    None => Err(Status::unavailable(format!(
                        "card {card} reports no pixel rate"
                    ))),
                    Some(load) => self
                        .vpud
                        .reserve(&c.path, load)
                        .await
                        .map_err(status_of)
                        .map(|(path, _)| {
                            tracing::info!(reservation = %path, card, units = ids.len(),
                                load_units = load, "reserved");
                            path
                        }),
                },
            };
            match result {
                Ok(path) => made.push((path, ids)),
                Err(status) => {
                    for (path, _) in &made {
                        let _ = self.vpud.release(path, allocations.generation).await;
                    }
                    return Err(status);
                }
            }
        }
        let paths: Vec<String> = made.iter().map(|(p, _)| p.to_string()).collect();
        let mut envs = HashMap::new();
        if let Some(first) = paths.first() {
            envs.insert(RESERVATION_ENV.to_owned(), first.clone());
        }
        envs.insert(RESERVATIONS_ENV.to_owned(), paths.join(","));
        envs.insert(
            "DBUS_SYSTEM_BUS_ADDRESS".to_owned(),
            format!(
                "unix:path={}/{}",
                self.bus.container_dir.trim_end_matches('/'),
                self.bus.socket
            ),
        );
        for (path, ids) in made {
            allocations.record(path, ids);
        }
        Ok(api::ContainerAllocateResponse {
            envs,
            mounts: vec![api::Mount {
                container_path: self.bus.container_dir.clone(),
                host_path: self.bus.host_dir.clone(),
                read_only: true,
            }],
            devices: Vec::new(),
            annotations: HashMap::new(),
        })
    }
}

fn summary(inv: &Inventory) -> String {
    if inv.cards.is_empty() {
        return "no cards".into();
    }
    inv.cards
        .iter()
        .map(|c| {
            format!(
                "vpu{}-u0 to vpu{}-u{}",
                c.index,
                c.index,
                c.units().saturating_sub(1)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<api::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _request: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(api::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _request: Request<api::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let stream = WatchStream::new(self.vpud.subscribe()).map(|inv| {
            Ok(api::ListAndWatchResponse {
                devices: devices(&inv),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in request.into_inner().container_requests {
            let ids = prefer::preferred(
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                c.allocation_size,
            )
            .map_err(|e| match e {
                PreferError::TooFew { .. } => Status::resource_exhausted(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            })?;
            container_responses
                .push(api::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(api::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let inv = self.vpud.inventory();
        if !inv.connected {
            return Err(Status::unavailable(
                "vpud is not on the bus; no units can be reserved",
            ));
        }
        let requests = request.into_inner().container_requests;
        if requests.is_empty() {
            return Err(Status::invalid_argument("no container requests"));
        }
        // Everything is checked before anything is reserved.
        let mut grouped = Vec::with_capacity(requests.len());
        let mut all = HashSet::new();
        for r in &requests {
            let g = Plugin::group(&inv, &r.devices_ids)?;
            for id in &r.devices_ids {
                if !all.insert(id.clone()) {
                    return Err(Status::invalid_argument(format!(
                        "device ID {id:?} is asked for by two containers"
                    )));
                }
            }
            grouped.push(g);
        }
        let mut allocations = self.allocations.lock().await;
        if allocations.generation != inv.generation {
            // Reservations of an earlier vpud (or connection) are gone with it.
            *allocations = Allocations {
                generation: inv.generation,
                ..Allocations::default()
            };
        }
        let mut container_responses = Vec::with_capacity(grouped.len());
        for g in grouped {
            match self.allocate_container(&inv, &mut allocations, g).await {
                Ok(r) => container_responses.push(r),
                Err(status) => {
                    // Earlier containers of this request are released too.
                    for r in &container_responses {
                        if let Some(list) = r.envs.get(RESERVATIONS_ENV) {
                            for p in list.split(',') {
                                if let Ok(path) = OwnedObjectPath::try_from(p.to_owned()) {
                                    let _ = self.vpud.release(&path, allocations.generation).await;
                                    allocations.forget(&path);
                                }
                            }
                        }
                    }
                    return Err(status);
                }
            }
        }
        Ok(Response::new(api::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}
