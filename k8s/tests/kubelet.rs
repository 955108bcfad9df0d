//! The device plugin against a real vpud (emulated cards) on a private bus, driven by a
//! kubelet stand-in built from the same `api.proto`: a `Registration` server on
//! `kubelet.sock` in a temporary device plugin directory, and a `DevicePlugin` client that
//! calls `GetDevicePluginOptions`, `ListAndWatch`, `GetPreferredAllocation` and `Allocate`
//! as the kubelet does after a registration.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Code, Request, Response, Status, Streaming};
use vpu_device_plugin::api::{
    self, device_plugin_client::DevicePluginClient, registration_server::Registration,
    registration_server::RegistrationServer,
};
use vpu_device_plugin::{kubelet, units, Config, ContainerBus, KubeletOptions};
use vpud::config::Config as VpudConfig;
use vpud::service::{BusChoice, RunOptions};
use vpud_client::BusTarget;
use zbus::{Connection, ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

const ROOT: &str = "/org/vpud/Vpud1";
const BUS_NAME: &str = "org.vpud.Vpud1";

// ---------------------------------------------------------------------------------------
// A bus at a fixed address (so that it can go away and come back), vpud on it.

struct Bus {
    child: Child,
    socket: PathBuf,
}

impl Bus {
    fn start(socket: &Path) -> Bus {
        let _ = std::fs::remove_file(socket);
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon runs");
        // The address is printed once the bus listens.
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "dbus-daemon printed its address");
        Bus {
            child,
            socket: socket.to_owned(),
        }
    }

    fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Vpud {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Vpud {
    async fn start(address: &str, cards: u32) -> Vpud {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let opts = RunOptions {
            bus: BusChoice::Address(address.to_owned()),
            emulate: cards,
            ready: Some(ready_tx),
            systemd_notify: false,
        };
        let mut config = VpudConfig::default();
        config.scheduler.load_sample_interval_ms = 100;
        config.scheduler.measured_load_weight = 0.0;
        let task = tokio::spawn(async move {
            let r = vpud::service::run(config, opts, async move {
                let _ = stop_rx.await;
            })
            .await;
            if let Err(e) = r {
                eprintln!("vpud stopped: {e}");
            }
        });
        ready_rx.await.expect("vpud ready");
        Vpud {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

// ---------------------------------------------------------------------------------------
// The kubelet stand-in.

struct Recorder(mpsc::UnboundedSender<api::RegisterRequest>);

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register(
        &self,
        request: Request<api::RegisterRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(api::Empty {}))
    }
}

struct Kubelet {
    dir: PathBuf,
    registrations: mpsc::UnboundedReceiver<api::RegisterRequest>,
    server: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    fn start(dir: &Path) -> Kubelet {
        let (tx, registrations) = mpsc::unbounded_channel();
        let listener = UnixListener::bind(dir.join("kubelet.sock")).unwrap();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Recorder(tx)))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        Kubelet {
            dir: dir.to_owned(),
            registrations,
            server,
        }
    }

    /// As a restarting kubelet does: stops, removes every socket in its directory, and
    /// comes back on a new `kubelet.sock`.
    fn restart(self) -> Kubelet {
        self.server.abort();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let _ = std::fs::remove_file(e.unwrap().path());
        }
        Kubelet::start(&self.dir)
    }

    async fn registration(&mut self, within: Duration) -> api::RegisterRequest {
        tokio::time::timeout(within, self.registrations.recv())
            .await
            .expect("the plugin registers")
            .unwrap()
    }

    /// Connects to the plugin as the kubelet does after a registration.
    async fn plugin(
        &self,
        reg: &api::RegisterRequest,
    ) -> DevicePluginClient<tonic::transport::Channel> {
        let ch = kubelet::unix_channel(&self.dir.join(&reg.endpoint))
            .await
            .unwrap();
        DevicePluginClient::new(ch)
    }
}

/// The plugin's `ListAndWatch` stream, with the last list it sent.
struct Devices {
    stream: Streaming<api::ListAndWatchResponse>,
    last: Vec<api::Device>,
}

impl Devices {
    async fn open(client: &mut DevicePluginClient<tonic::transport::Channel>) -> Devices {
        let stream = client
            .list_and_watch(api::Empty {})
            .await
            .unwrap()
            .into_inner();
        Devices {
            stream,
            last: Vec::new(),
        }
    }

    /// Waits until the list satisfies `pred`; returns how long that took.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[api::Device]) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !pred(&self.last) {
            let left = within.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(r))) => self.last = r.devices,
                Ok(other) => panic!("ListAndWatch ended waiting for {what}: {other:?}"),
                Err(_) => panic!(
                    "not {what} within {within:?}; last list: {}",
                    summary(&self.last)
                ),
            }
        }
        start.elapsed()
    }
}

fn summary(devices: &[api::Device]) -> String {
    let mut by: HashMap<(String, String), usize> = HashMap::new();
    for d in devices {
        let card = d.id.split('-').next().unwrap_or("").to_owned();
        *by.entry((card, d.health.clone())).or_default() += 1;
    }
    format!("{by:?}")
}

fn card_health(devices: &[api::Device], card: usize, health: &str) -> bool {
    let prefix = format!("vpu{card}-");
    let on: Vec<_> = devices
        .iter()
        .filter(|d| d.id.starts_with(&prefix))
        .collect();
    !on.is_empty() && on.iter().all(|d| d.health == health)
}

fn all(devices: &[api::Device], count: usize, health: &str) -> bool {
    devices.len() == count && devices.iter().all(|d| d.health == health)
}

// ---------------------------------------------------------------------------------------
// Set-up and vpud calls.

/// The emulated card: 2 engines of 720p240, so 711 units.
const UNITS_PER_CARD: usize = 711;

struct World {
    _dir: tempfile::TempDir,
    bus: Bus,
    vpud: Option<Vpud>,
    kubelet: Kubelet,
    plugin: tokio::task::JoinHandle<()>,
    stop_plugin: Option<oneshot::Sender<()>>,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("device-plugins");
        std::fs::create_dir(&plugins).unwrap();
        let bus = Bus::start(&dir.path().join("bus"));
        let vpud = Vpud::start(&bus.address(), 2).await;
        let kubelet = Kubelet::start(&plugins);
        let (stop_plugin, stop_rx) = oneshot::channel::<()>();
        let config = Config {
            bus: BusTarget::Address(bus.address()),
            kubelet: KubeletOptions {
                dir: plugins,
                ..KubeletOptions::default()
            },
            container_bus: ContainerBus::default(),
        };
        let plugin = tokio::spawn(async move {
            vpu_device_plugin::run(config, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
        World {
            _dir: dir,
            bus,
            vpud: Some(vpud),
            kubelet,
            plugin,
            stop_plugin: Some(stop_plugin),
        }
    }

    async fn client(&self) -> Connection {
        zbus::connection::Builder::address(self.bus.address().as_str())
            .build()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop_plugin.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.plugin).await;
        if let Some(v) = self.vpud.take() {
            v.stop().await;
        }
    }
}

fn owned(v: Variant<'_>) -> OwnedVariant {
    OwnedVariant::try_from(v).unwrap()
}

async fn create_session(
    conn: &Connection,
    w: u32,
    h: u32,
    reservation: Option<&str>,
) -> zbus::Result<(OwnedObjectPath, OwnedFd)> {
    let mut p: HashMap<String, OwnedVariant> = HashMap::new();
    p.insert("codec".into(), owned(Variant::from("h264")));
    p.insert("width".into(), owned(Variant::U32(w)));
    p.insert("height".into(), owned(Variant::U32(h)));
    p.insert("framerate_num".into(), owned(Variant::U32(30)));
    p.insert("bitrate".into(), owned(Variant::U32(1_000_000)));
    if let Some(r) = reservation {
        p.insert(
            "reservation".into(),
            owned(Variant::ObjectPath(ObjectPath::try_from(r).unwrap())),
        );
    }
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            ROOT,
            Some("org.vpud.Vpud1.Manager"),
            "CreateSession",
            &(p,),
        )
        .await?;
    let (path, fd): (OwnedObjectPath, zbus::OwnedFd) = reply.body().deserialize()?;
    Ok((path, fd.into()))
}

async fn property<T>(conn: &Connection, path: &str, iface: &str, name: &str) -> zbus::Result<T>
where
    T: TryFrom<OwnedVariant>,
    <T as TryFrom<OwnedVariant>>::Error: Into<zbus::Error>,
{
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface, name),
        )
        .await?;
    let v: OwnedVariant = reply.body().deserialize()?;
    T::try_from(v).map_err(Into::into)
}

async fn card_call(conn: &Connection, card: usize, iface: &str, method: &str) {
    let path = format!("{ROOT}/card/{card}");
    if iface == "org.vpud.Vpud1.Emulator" {
        conn.call_method(
            Some(BUS_NAME),
            path.as_str(),
            Some(iface),
            "InjectFault",
            &(method, HashMap::<String, OwnedVariant>::new()),
        )
        .await
        .unwrap();
    } else {
        conn.call_method(Some(BUS_NAME), path.as_str(), Some(iface), method, &())
            .await
            .unwrap();
    }
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other}"),
    }
}

async fn allocate(
    client: &mut DevicePluginClient<tonic::transport::Channel>,
    ids: Vec<String>,
) -> Result<api::ContainerAllocateResponse, Status> {
    client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids }],
        })
        .await
        .map(|r| r.into_inner().container_responses.remove(0))
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_advertises_units_and_allocates_into_vpud() {
    let mut w = World::start().await;
    let reg = w.kubelet.registration(Duration::from_secs(5)).await;
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.resource_name, "vpud.io/encode-units");
    assert_eq!(reg.endpoint, "vpud-encode-units.sock");
    let options = reg.options.unwrap();
    assert!(options.get_preferred_allocation_available && !options.pre_start_required);
    let mut client = w.kubelet.plugin(&reg).await;
    let served = client
        .get_device_plugin_options(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served, options);

    // 711 units per card (2 × 720p240 of pixel rate), all healthy.
    let mut devices = Devices::open(&mut client).await;
    devices
        .until(Duration::from_secs(5), "all healthy", |d| {
            all(d, 2 * UNITS_PER_CARD, api::HEALTHY)
        })
        .await;
    let available: Vec<String> = devices.last.iter().map(|d| d.id.clone()).collect();
    let conn = w.client().await;
    for card in 0..2 {
        let pixel_rate: u64 = property(
            &conn,
            &format!("{ROOT}/card/{card}"),
            "org.vpud.Vpud1.Card",
            "PixelRate",
        )
        .await
        .unwrap();
        assert_eq!(units::card_units(pixel_rate) as usize, UNITS_PER_CARD);
    }

    // 25 units, preferred on one card.
    let preferred = client
        .get_preferred_allocation(api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: available.clone(),
                must_include_device_i_ds: vec![],
                allocation_size: 25,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .container_responses
        .remove(0)
        .device_i_ds;
    assert_eq!(preferred.len(), 25);
    let card = units::parse_device_id(&preferred[0]).unwrap().0;
    assert!(preferred
        .iter()
        .all(|id| units::parse_device_id(id).unwrap().0 == card));

    // Allocate reserves the units' load in vpud: 25 units are a 960x540p30 encode.
    let t = Instant::now();
    let resp = allocate(&mut client, preferred.clone()).await.unwrap();
    eprintln!("Allocate of 25 units took {:?}", t.elapsed());
    let reservation = resp.envs["VPUD_RESERVATION"].clone();
    assert_eq!(resp.envs["VPUD_RESERVATIONS"], reservation);
    assert_eq!(
        resp.envs["DBUS_SYSTEM_BUS_ADDRESS"],
        "unix:path=/run/dbus/system_bus_socket"
    );
    assert_eq!(resp.mounts.len(), 1);
    assert_eq!(
        (
            resp.mounts[0].host_path.as_str(),
            resp.mounts[0].container_path.as_str()
        ),
        ("/run/dbus", "/run/dbus")
    );
    let r_units: u64 = property(&conn, &reservation, "org.vpud.Vpud1.Reservation", "Units")
        .await
        .unwrap();
    let r_card: OwnedObjectPath =
        property(&conn, &reservation, "org.vpud.Vpud1.Reservation", "Card")
            .await
            .unwrap();
    assert_eq!(r_units, 70_313);
    assert_eq!(r_card.as_str(), format!("{ROOT}/card/{card}"));

    // A pod's sessions: one of 960x540p30 fits the reservation exactly, one more does not.
    let (s1, _c1) = create_session(&conn, 960, 540, Some(&reservation))
        .await
        .unwrap();
    let on: OwnedObjectPath = property(&conn, s1.as_str(), "org.vpud.Vpud1.Session", "Card")
        .await
        .unwrap();
    assert_eq!(on, r_card);
    let e = create_session(&conn, 320, 240, Some(&reservation))
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "org.vpud.Vpud1.Error.QuotaExceeded");
    // Sessions outside reservations work as before.
    let (_s2, _c2) = create_session(&conn, 320, 240, None).await.unwrap();

    // The same units allocated again (their pod is gone): the old reservation goes.
    let again = allocate(&mut client, preferred.clone()).await.unwrap();
    let second = again.envs["VPUD_RESERVATION"].clone();
    assert_ne!(second, reservation);
    assert!(
        property::<u64>(&conn, &reservation, "org.vpud.Vpud1.Reservation", "Units")
            .await
            .is_err(),
        "the earlier reservation is released"
    );

    // Bad input is a gRPC error, and the plugin carries on.
    let bad: Vec<(Vec<String>, Code)> = vec![
        (vec![], Code::InvalidArgument),
        (vec!["vpu9-u0".into()], Code::InvalidArgument),
        (vec!["vpu0-u711".into()], Code::InvalidArgument),
        (vec!["nvidia0".into()], Code::InvalidArgument),
        (
            vec!["vpu1-u1".into(), "vpu1-u1".into()],
            Code::InvalidArgument,
        ),
    ];
    for (ids, code) in bad {
        let e = allocate(&mut client, ids.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{ids:?}: {e}");
    }
    let e = client
        .allocate(api::AllocateRequest {
            container_requests: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for (size, code) in [(2000, Code::ResourceExhausted), (0, Code::InvalidArgument)] {
        let e = client
            .get_preferred_allocation(api::PreferredAllocationRequest {
                container_requests: vec![api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: available.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: size,
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "size {size}: {e}");
    }
    // More units than the card has room for (a session outside reservations holds half
    // of card 1): vpud refuses, the plugin answers ResourceExhausted, nothing is held.
    let other = 1 - card;
    let (_big, _cb) = {
        let mut p = None;
        for _ in 0..2 {
            let (s, c) = create_session(&conn, 3840, 2160, None).await.unwrap();
            let on: OwnedObjectPath = property(&conn, s.as_str(), "org.vpud.Vpud1.Session", "Card")
                .await
                .unwrap();
            if on.as_str().ends_with(&format!("/{other}")) {
                p = Some((s, c));
                break;
            }
        }
        p.expect("a 2160p60 session on the other card")
    };
    let whole: Vec<String> = (0..UNITS_PER_CARD as u64)
        .map(|u| units::device_id(other, u))
        .collect();
    let e = allocate(&mut client, whole).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // The plugin still serves.
    let ok = allocate(&mut client, vec![units::device_id(other, 0)]).await;
    assert!(ok.is_ok(), "{ok:?}");
    drop(devices);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_faults_and_draining_are_unhealthy_within_a_second() {
    let mut w = World::start().await;
    let reg = w.kubelet.registration(Duration::from_secs(5)).await;
    let mut client = w.kubelet.plugin(&reg).await;
    let mut devices = Devices::open(&mut client).await;
    devices
        .until(Duration::from_secs(5), "all healthy", |d| {
            all(d, 2 * UNITS_PER_CARD, api::HEALTHY)
        })
        .await;
    let conn = w.client().await;

    // Draining: unhealthy at once, healthy again on Resume.
    card_call(&conn, 1, "org.vpud.Vpud1.Card", "Drain").await;
    let took = devices
        .until(Duration::from_secs(1), "card 1 unhealthy", |d| {
            card_health(d, 1, api::UNHEALTHY) && card_health(d, 0, api::HEALTHY)
        })
        .await;
    eprintln!("draining card seen as Unhealthy after {took:?}");
    card_call(&conn, 1, "org.vpud.Vpud1.Card", "Resume").await;
    devices
        .until(Duration::from_secs(1), "card 1 healthy again", |d| {
            card_health(d, 1, api::HEALTHY)
        })
        .await;

    // A controller fatal status: vpud resets the card. Its units are unhealthy within a
    // second of vpud announcing it, and healthy after the reset.
    let path = format!("{ROOT}/card/0");
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path(path.as_str())
        .build()
        .unwrap();
    let mut states = zbus::MessageStream::for_match_rule(rule, &conn, None)
        .await
        .unwrap();
    // vpud reads the card's status every 100 ms; a session on the card, frames flowing,
    // has to move when it fails.
    let (_s, channel) = {
        let mut p: HashMap<String, OwnedVariant> = HashMap::new();
        for (k, v) in [("width", 640u32), ("height", 360), ("framerate_num", 30)] {
            p.insert(k.into(), owned(Variant::U32(v)));
        }
        p.insert("codec".into(), owned(Variant::from("h264")));
        p.insert(
            "card".into(),
            owned(Variant::ObjectPath(
                ObjectPath::try_from(path.as_str()).unwrap(),
            )),
        );
        let reply = conn
            .call_method(
                Some(BUS_NAME),
                ROOT,
                Some("org.vpud.Vpud1.Manager"),
                "CreateSession",
                &(p,),
            )
            .await
            .unwrap();
        let (s, fd): (OwnedObjectPath, zbus::OwnedFd) = reply.body().deserialize().unwrap();
        (s, OwnedFd::from(fd))
    };
    // Frames flowing: the card fails with commands in flight.
    let encoder = tokio::spawn(async move {
        let Ok(mut ch) = vpud_client::DataChannel::open(channel, "fault".into()).await else {
            return;
        };
        let frame = vec![128u8; ch.frame_size()];
        for pts in 0..600u64 {
            if ch.send_frame(&frame, pts, false).await.is_err() {
                return;
            }
            if ch.next_packet().await.is_err() {
                return;
            }
        }
    });
    card_call(&conn, 0, "org.vpud.Vpud1.Emulator", "fatal-status").await;
    let announced = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), states.next())
            .await
            .expect("vpud announces the card's state")
            .unwrap()
            .unwrap();
        let (_, props, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
            m.body().deserialize().unwrap();
        if let Some(s) = props.get("State") {
            let s = String::try_from(s.clone()).unwrap();
            if s != "online" {
                break Instant::now();
            }
        }
    };
    // Every list the plugin sends is looked at: the reset of an idle emulated card is
    // quick, and the unhealthy list must have been sent before the healthy one.
    let mut unhealthy_at = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if unhealthy_at.is_none() && card_health(&devices.last, 0, api::UNHEALTHY) {
            unhealthy_at = Some(announced.elapsed());
        }
        if unhealthy_at.is_some() && card_health(&devices.last, 0, api::HEALTHY) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, devices.stream.next()).await {
            Ok(Some(Ok(r))) => devices.last = r.devices,
            other => panic!(
                "card 0 not unhealthy then healthy ({other:?}); last list {}",
                summary(&devices.last)
            ),
        }
    }
    let after = unhealthy_at.unwrap();
    eprintln!("failed card seen as Unhealthy {after:?} after vpud announced it");
    assert!(after < Duration::from_secs(1), "{after:?}");
    encoder.abort();
    let errors: u64 = property(&conn, &path, "org.vpud.Vpud1.Card", "Errors")
        .await
        .unwrap();
    assert!(errors > 0);
    drop(devices);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_means_registering_again() {
    let mut w = World::start().await;
    let reg = w.kubelet.registration(Duration::from_secs(5)).await;
    let socket = w.kubelet.dir.join(&reg.endpoint);
    assert!(socket.exists());
    w.kubelet = w.kubelet.restart();
    assert!(!socket.exists());
    let t = Instant::now();
    let again = w.kubelet.registration(Duration::from_secs(5)).await;
    eprintln!(
        "registered again {:?} after the kubelet restarted",
        t.elapsed()
    );
    assert_eq!(again.resource_name, "vpud.io/encode-units");
    assert!(socket.exists(), "the plugin serves on a new socket");
    let mut client = w.kubelet.plugin(&again).await;
    let mut devices = Devices::open(&mut client).await;
    devices
        .until(Duration::from_secs(5), "all healthy", |d| {
            all(d, 2 * UNITS_PER_CARD, api::HEALTHY)
        })
        .await;
    // And an allocation works through the new socket.
    allocate(&mut client, vec![units::device_id(0, 3)])
        .await
        .unwrap();
    drop(devices);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpud_restart_and_bus_loss_are_unhealthy_then_recover() {
    let mut w = World::start().await;
    let reg = w.kubelet.registration(Duration::from_secs(5)).await;
    let mut client = w.kubelet.plugin(&reg).await;
    let mut devices = Devices::open(&mut client).await;
    let count = 2 * UNITS_PER_CARD;
    devices
        .until(Duration::from_secs(5), "all healthy", |d| {
            all(d, count, api::HEALTHY)
        })
        .await;
    let first = allocate(&mut client, vec![units::device_id(0, 0)])
        .await
        .unwrap();

    // vpud stops: everything unhealthy; Allocate is refused, not hung.
    w.vpud.take().unwrap().stop().await;
    let took = devices
        .until(Duration::from_secs(1), "all unhealthy", |d| {
            all(d, count, api::UNHEALTHY)
        })
        .await;
    eprintln!("vpud gone: all Unhealthy after {took:?}");
    let e = allocate(&mut client, vec![units::device_id(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    // vpud back: healthy again, and units (even ones allocated before) can be allocated.
    w.vpud = Some(Vpud::start(&w.bus.address(), 2).await);
    let took = devices
        .until(Duration::from_secs(5), "all healthy again", |d| {
            all(d, count, api::HEALTHY)
        })
        .await;
    eprintln!("vpud back: all Healthy after {took:?}");
    let again = allocate(&mut client, vec![units::device_id(0, 0)])
        .await
        .unwrap();
    assert!(again.envs.contains_key("VPUD_RESERVATION"));
    drop(first);

    // The bus goes away (vpud with it), and comes back.
    w.vpud.take().unwrap().stop().await;
    let address = w.bus.address();
    let socket = w.bus.socket.clone();
    let _ = w.bus.child.kill();
    let _ = w.bus.child.wait();
    w.bus = Bus::start(&socket);
    devices
        .until(Duration::from_secs(2), "all unhealthy", |d| {
            all(d, count, api::UNHEALTHY)
        })
        .await;
    assert_eq!(w.bus.address(), address);
    w.vpud = Some(Vpud::start(&address, 2).await);
    let took = devices
        .until(
            Duration::from_secs(5),
            "all healthy after the bus came back",
            |d| all(d, count, api::HEALTHY),
        )
        .await;
    eprintln!("bus back: all Healthy after {took:?}");
    allocate(&mut client, vec![units::device_id(1, 0)])
        .await
        .unwrap();
    drop(devices);
    w.stop().await;
}
