//! D-Bus argument fuzzing: a real client on a private bus sends random argument types and
//! values to every method of every vpud interface, and to the standard Properties
//! interface with good and bad names.
//!
//! Every call must be answered (within a deadline) with a method return or a proper D-Bus
//! error: vpud's own (`org.vpud.Vpud1.Error.*`) or the bus's standard ones for a wrong
//! signature or an unknown member. Afterwards the daemon still serves, and a well-formed
//! session still encodes frames over its data channel.
//!
//! The generator is a seeded PRNG: `VPUD_DBUS_FUZZ_SEED` picks the seed and
//! `VPUD_DBUS_FUZZ_CALLS` the number of calls; a failure prints both, so it can be replayed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use vpu_tests::clip::synthetic_clip;
use vpu_tests::daemon::{
    connect, create_session, eventually, params, property, reserve, start, Channel,
    BUS_NAME as DEST, CARD, MANAGER, RESERVATION, ROOT, SESSION,
};
use vpud::config::Config;
use zbus::wire::{Array, Dict, ObjectPath, Signature, StructureBuilder};
use zbus::{Connection, DBusError, Variant};

const EMULATOR: &str = "org.vpud.Vpud1.Emulator";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
/// How long one call may take before the daemon counts as hung.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Errors a reply may carry: vpud's, and those zbus's object server answers for calls
/// that do not match any method, property or signature.
const ACCEPTED_ERRORS: &[&str] = &[
    "org.vpud.Vpud1.Error.NoCapacity",
    "org.vpud.Vpud1.Error.InvalidArgument",
    "org.vpud.Vpud1.Error.NotSupported",
    "org.vpud.Vpud1.Error.AccessDenied",
    "org.vpud.Vpud1.Error.NotFound",
    "org.vpud.Vpud1.Error.CardFailed",
    "org.vpud.Vpud1.Error.QuotaExceeded",
    "org.freedesktop.DBus.Error.InvalidArgs",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownProperty",
    "org.freedesktop.DBus.Error.PropertyReadOnly",
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.NotSupported",
];

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Numbers near the edges more often than not.
    fn edgy(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.next() % 4,
            3 => u64::from(u32::MAX) - self.next() % 2,
            4 => 1 << self.below(64),
            _ => self.next(),
        }
    }
    fn string(&mut self) -> String {
        const WORDS: &[&str] = &[
            "h264",
            "hevc",
            "av1",
            "i420",
            "nv12",
            "cbr",
            "vbr",
            "cqp",
            "realtime",
            "batch",
            "spread",
            "pack",
            "hang-engine",
            "lost-interrupt",
            "fatal-status",
            "corrupt-completion",
            "slow-engine",
            "surprise-removal",
            "",
            " ",
            "H264",
            "\u{1f4a5}",
            "-1",
            "99999999999999999999",
            "../../etc/passwd",
            "%s%s%n",
            "\t\n",
        ];
        match self.below(4) {
            0 | 1 => (*self.pick(WORDS)).to_owned(),
            2 => {
                let n = self.below(24);
                (0..n)
                    .map(|_| char::from_u32(0x20 + self.below(0x7f - 0x20) as u32).unwrap_or('x'))
                    .collect()
            }
            _ => {
                // Long, and not only ASCII.
                let n = 1 + self.below(4096);
                (0..n).map(|i| if i % 7 == 0 { 'é' } else { 'a' }).collect()
            }
        }
    }
    fn object_path(&mut self) -> String {
        match self.below(5) {
            0 => "/".to_owned(),
            1 => format!("{ROOT}/card/{}", self.edgy() % 1000),
            2 => format!("{ROOT}/session/{}", self.edgy()),
            3 => ROOT.to_owned(),
            _ => format!("/x{}", self.next() % 100),
        }
    }
}

/// A D-Bus type, to generate values that match their signature.
#[derive(Debug, Clone)]
enum Ty {
    Byte,
    Bool,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Double,
    Str,
    Path,
    Sig,
    Var,
    Array(Box<Ty>),
    Dict(Box<Ty>, Box<Ty>),
    Struct(Vec<Ty>),
}

impl Ty {
    fn basic(rng: &mut Rng) -> Ty {
        match rng.below(12) {
            0 => Ty::Byte,
            1 => Ty::Bool,
            2 => Ty::I16,
            3 => Ty::U16,
            4 => Ty::I32,
            5 | 6 => Ty::U32,
            7 => Ty::I64,
            8 => Ty::U64,
            9 => Ty::Double,
            10 => Ty::Path,
            _ => Ty::Str,
        }
    }

    fn random(rng: &mut Rng, depth: u32) -> Ty {
        if depth >= 3 || rng.chance(60) {
            return match rng.below(8) {
                0 => Ty::Sig,
                1 => Ty::Var,
                _ => Ty::basic(rng),
            };
        }
        match rng.below(3) {
            0 => Ty::Array(Box::new(Ty::random(rng, depth + 1))),
            1 => Ty::Dict(
                Box::new(Ty::basic(rng)),
                Box::new(Ty::random(rng, depth + 1)),
            ),
            _ => Ty::Struct(
                (0..1 + rng.below(3))
                    .map(|_| Ty::random(rng, depth + 1))
                    .collect(),
            ),
        }
    }

    fn signature(&self) -> String {
        match self {
            Ty::Byte => "y".into(),
            Ty::Bool => "b".into(),
            Ty::I16 => "n".into(),
            Ty::U16 => "q".into(),
            Ty::I32 => "i".into(),
            Ty::U32 => "u".into(),
            Ty::I64 => "x".into(),
            Ty::U64 => "t".into(),
            Ty::Double => "d".into(),
            Ty::Str => "s".into(),
            Ty::Path => "o".into(),
            Ty::Sig => "g".into(),
            Ty::Var => "v".into(),
            Ty::Array(t) => format!("a{}", t.signature()),
            Ty::Dict(k, v) => format!("a{{{}{}}}", k.signature(), v.signature()),
            Ty::Struct(f) => format!("({})", f.iter().map(Ty::signature).collect::<String>()),
        }
    }

    fn sig(&self) -> Signature {
        Signature::from_str(&self.signature()).expect("generated signatures are valid")
    }

    fn value(&self, rng: &mut Rng, depth: u32) -> Variant<'static> {
        let n = rng.edgy();
        match self {
            Ty::Byte => Variant::U8(n as u8),
            Ty::Bool => Variant::Bool(n & 1 == 1),
            Ty::I16 => Variant::I16(n as i16),
            Ty::U16 => Variant::U16(n as u16),
            Ty::I32 => Variant::I32(n as i32),
            Ty::U32 => Variant::U32(n as u32),
            Ty::I64 => Variant::I64(n as i64),
            Ty::U64 => Variant::U64(n),
            Ty::Double => Variant::F64(*rng.pick(&[
                0.0,
                -1.0,
                f64::NAN,
                f64::INFINITY,
                f64::MAX,
                1e-300,
                n as f64,
            ])),
            Ty::Str => Variant::from(rng.string()),
            Ty::Path => Variant::ObjectPath(
                ObjectPath::try_from(rng.object_path()).expect("generated paths are valid"),
            ),
            Ty::Sig => Variant::Signature(Ty::random(rng, 1).sig()),
            Ty::Var => {
                let inner = Ty::random(rng, depth + 1);
                Variant::Variant(Box::new(inner.value(rng, depth + 1)))
            }
            Ty::Array(t) => {
                let mut a = Array::new(&t.sig());
                for _ in 0..rng.below(4) {
                    a.append(t.value(rng, depth + 1))
                        .expect("element of the array's type");
                }
                Variant::Array(a)
            }
            Ty::Dict(k, v) => {
                let mut d = Dict::new(&k.sig(), &v.sig());
                for _ in 0..rng.below(4) {
                    d.append(k.value(rng, depth + 1), v.value(rng, depth + 1))
                        .expect("entry of the dict's types");
                }
                Variant::Dict(d)
            }
            Ty::Struct(fields) => {
                let mut b = StructureBuilder::new();
                for f in fields {
                    b = b.append_field(f.value(rng, depth + 1));
                }
                Variant::Structure(b.build().expect("a structure with fields"))
            }
        }
    }
}

/// A value for option `key`: plausible (sometimes in range, sometimes not) or of a random
/// type.
fn option_value(rng: &mut Rng, key: &str) -> Variant<'static> {
    let ty = if rng.chance(50) {
        Ty::U32
    } else if rng.chance(30) {
        Ty::Str
    } else {
        Ty::random(rng, 1)
    };
    match (key, &ty) {
        ("codec", Ty::Str) => Variant::from(*rng.pick(&["h264", "hevc", "mjpeg"])),
        ("pixel_format", Ty::Str) => Variant::from(*rng.pick(&["i420", "nv12", "yuyv"])),
        ("rate_control", Ty::Str) => Variant::from(*rng.pick(&["cbr", "vbr", "cqp", "abr"])),
        ("priority", Ty::Str) => Variant::from(*rng.pick(&["realtime", "batch", "idle"])),
        ("units", _) if rng.chance(60) => {
            Variant::U64(*rng.pick(&[0, 1, 1000, 70_313, 2_000_000, 2_000_001, u64::MAX]))
        }
        ("card" | "reservation", _) if rng.chance(50) => Variant::ObjectPath(
            ObjectPath::try_from(rng.object_path()).expect("generated paths are valid"),
        ),
        ("width" | "height", Ty::U32) if rng.chance(50) => {
            Variant::U32(*rng.pick(&[0, 1, 15, 16, 64, 176, 1280, 1920, 8192, 65535]))
        }
        _ => ty.value(rng, 1),
    }
}

/// An `a{sv}`: random known keys and junk, or (half the time) a valid session request
/// with one or two entries changed, removed or added, so that checks deep in validation
/// and admission are reached too.
fn options(rng: &mut Rng, keys: &[&str]) -> Variant<'static> {
    let mut map: BTreeMap<String, Variant<'static>> = BTreeMap::new();
    let valid: &[(&str, Variant<'static>)] = if keys == SESSION_KEYS {
        &[
            ("codec", Variant::Str("h264".into())),
            ("width", Variant::U32(64)),
            ("height", Variant::U32(48)),
            ("framerate_num", Variant::U32(30)),
        ]
    } else if keys == RESERVE_KEYS {
        &[("units", Variant::U64(1000))]
    } else {
        &[("bitrate", Variant::U32(400_000))]
    };
    if rng.chance(50) {
        for (k, v) in valid {
            map.insert((*k).to_owned(), v.try_clone().expect("plain values clone"));
        }
        for _ in 0..1 + rng.below(2) {
            let key = if rng.chance(90) {
                (*rng.pick(keys)).to_owned()
            } else {
                rng.string()
            };
            if rng.chance(20) {
                map.remove(&key);
            } else {
                let value = option_value(rng, &key);
                map.insert(key, value);
            }
        }
    } else {
        for _ in 0..rng.below(keys.len() + 2) {
            let key = if rng.chance(80) {
                (*rng.pick(keys)).to_owned()
            } else {
                rng.string()
            };
            let value = option_value(rng, &key);
            map.insert(key, value);
        }
    }
    let mut d = Dict::new(&Signature::Str, &Signature::Variant);
    for (k, v) in map {
        d.append(Variant::from(k), Variant::Variant(Box::new(v)))
            .expect("a{sv} entry");
    }
    Variant::Dict(d)
}

const SESSION_KEYS: &[&str] = &[
    "codec",
    "width",
    "height",
    "framerate_num",
    "framerate_den",
    "pixel_format",
    "rate_control",
    "bitrate",
    "max_bitrate",
    "qp",
    "gop",
    "priority",
    "card",
    "reservation",
];
const RESERVE_KEYS: &[&str] = &["units", "card"];
const RECONFIGURE_KEYS: &[&str] = &["bitrate", "framerate_num", "framerate_den", "max_bitrate"];
const FAULT_KEYS: &[&str] = &["engine", "count", "duration_ms"];

/// The arguments of one call: sometimes the method's own signature with random values,
/// sometimes random types altogether.
fn arguments(rng: &mut Rng, path: &str, iface: &str, method: &str) -> Vec<Variant<'static>> {
    if rng.chance(25) {
        return (0..rng.below(4))
            .map(|_| Ty::random(rng, 0).value(rng, 0))
            .collect();
    }
    match (iface, method) {
        (MANAGER, "CreateSession") => vec![options(rng, SESSION_KEYS)],
        (MANAGER, "Reserve") => vec![options(rng, RESERVE_KEYS)],
        (SESSION, "Reconfigure") => vec![options(rng, RECONFIGURE_KEYS)],
        (EMULATOR, "InjectFault") => {
            // A real kind only with options that must be refused, so the cards stay
            // usable: an unknown key or a value of the wrong type.
            let kind = if rng.chance(50) {
                rng.string()
            } else {
                (*rng.pick(&[
                    "hang-engine",
                    "lost-interrupt",
                    "fatal-status",
                    "corrupt-completion",
                    "slow-engine",
                    "surprise-removal",
                ]))
                .to_owned()
            };
            let mut d = Dict::new(&Signature::Str, &Signature::Variant);
            let bad_key = if rng.chance(50) {
                format!("no_such_option_{}", rng.next() % 10)
            } else {
                (*rng.pick(FAULT_KEYS)).to_owned()
            };
            let bad_value = if bad_key.starts_with("no_such") {
                Variant::U32(1)
            } else {
                Variant::from(rng.string())
            };
            d.append(
                Variant::from(bad_key),
                Variant::Variant(Box::new(bad_value)),
            )
            .expect("a{sv} entry");
            vec![Variant::from(kind), Variant::Dict(d)]
        }
        (PROPERTIES, "Get") => {
            let (target, name) = property_target(rng, path);
            vec![Variant::from(target), Variant::from(name)]
        }
        (PROPERTIES, "GetAll") => vec![Variant::from(property_target(rng, path).0)],
        (PROPERTIES, "Set") => {
            let (target, name) = property_target(rng, path);
            let value = Ty::random(rng, 1).value(rng, 1);
            vec![
                Variant::from(target),
                Variant::from(name),
                Variant::Variant(Box::new(value)),
            ]
        }
        _ => Vec::new(),
    }
}

/// An interface and property name for the Properties interface on `path`: mostly the
/// object's own interface and one of its properties, sometimes anything.
fn property_target(rng: &mut Rng, path: &str) -> (String, String) {
    const MANAGER_PROPS: &[&str] = &[
        "Version",
        "Cards",
        "Sessions",
        "Policy",
        "Capacity",
        "Load",
        "ErrorCounts",
    ];
    const CARD_PROPS: &[&str] = &[
        "Name",
        "Backend",
        "PciAddress",
        "Model",
        "Serial",
        "FirmwareVersion",
        "Codecs",
        "Engines",
        "Capacity",
        "Load",
        "ActiveSessions",
        "State",
        "Errors",
    ];
    const EMULATOR_PROPS: &[&str] = &["FaultKinds"];
    const SESSION_PROPS: &[&str] = &[
        "Owner",
        "Card",
        "Codec",
        "Width",
        "Height",
        "Bitrate",
        "State",
        "FramesIn",
        "FramesOut",
        "BytesOut",
        "Keyframes",
    ];
    let own = if path == ROOT {
        Some((MANAGER, MANAGER_PROPS))
    } else if path.contains("/card/") {
        Some(*rng.pick(&[(CARD, CARD_PROPS), (EMULATOR, EMULATOR_PROPS)]))
    } else if path.contains("/session/") {
        Some((SESSION, SESSION_PROPS))
    } else {
        None
    };
    let (iface, names) = match own {
        Some(o) if rng.chance(70) => o,
        _ => *rng.pick(&[
            (MANAGER, MANAGER_PROPS),
            (CARD, CARD_PROPS),
            (SESSION, SESSION_PROPS),
            (EMULATOR, EMULATOR_PROPS),
            ("org.vpud.Vpud1.NoSuchInterface", &["Version"][..]),
            ("", &[""][..]),
        ]),
    };
    let name = match rng.below(10) {
        0 => rng.string(),
        1 => names[rng.below(names.len())].to_lowercase(),
        _ => (*rng.pick(names)).to_owned(),
    };
    (iface.to_owned(), name)
}

/// What the fuzzer saw, for the test's output.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    returns: u64,
    errors: BTreeMap<String, u64>,
    /// Per method: (returns, errors).
    methods: BTreeMap<String, (u64, u64)>,
}

async fn call(
    conn: &Connection,
    path: &str,
    iface: &str,
    method: &str,
    args: Vec<Variant<'static>>,
) -> Result<zbus::Message, zbus::Error> {
    let call = async {
        if args.is_empty() {
            conn.call_method(Some(DEST), path, Some(iface), method, &())
                .await
        } else {
            let mut b = StructureBuilder::new();
            for a in args {
                b = b.append_field(a);
            }
            let body = b.build().expect("a structure with fields");
            conn.call_method(Some(DEST), path, Some(iface), method, &body)
                .await
        }
    };
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| panic!("{iface}.{method} on {path}: no reply in {CALL_DEADLINE:?}"))
}

fn paths(v: Vec<zbus::OwnedObjectPath>) -> Vec<String> {
    v.into_iter().map(|p| p.as_str().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_arguments_to_every_method_get_typed_replies() {
    let seed = std::env::var("VPUD_DBUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fdb_0005);
    let calls: u64 = std::env::var("VPUD_DBUS_FUZZ_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    eprintln!("dbus fuzz: seed {seed}, {calls} calls (VPUD_DBUS_FUZZ_SEED, VPUD_DBUS_FUZZ_CALLS)");
    let daemon = start(2, Config::default())
        .await
        .expect("daemon on a private bus");
    let conn = connect(&daemon).await.expect("client connection");
    // Another client: the sessions are not its own.
    let stranger = connect(&daemon).await.expect("second client connection");
    let cards = paths(
        property(&conn, ROOT, MANAGER, "Cards")
            .await
            .expect("Cards"),
    );
    assert_eq!(cards.len(), 2, "{cards:?}");
    // A live session to aim Session methods at (its channel kept open).
    let (live, live_channel) = create_session(&conn, &params(64, 48, 30))
        .await
        .expect("a well-formed CreateSession succeeds");
    let mut live = live.as_str().to_owned();
    // Channels of the live sessions, kept open (closing one closes its session).
    let mut kept = vec![live_channel];
    // A live reservation to aim Reservation methods at; every one made is released at the
    // end.
    let mut reservation = reserve(&conn, 1000, None)
        .await
        .expect("a well-formed Reserve succeeds")
        .as_str()
        .to_owned();
    let mut reservations = vec![reservation.clone()];

    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let methods: &[(&str, &[&str])] = &[
        (MANAGER, &["CreateSession", "Reserve"]),
        (RESERVATION, &["Release"]),
        (CARD, &["Drain", "Resume", "Reset"]),
        (EMULATOR, &["InjectFault"]),
        (SESSION, &["Reconfigure", "RequestKeyframe", "Close"]),
        (PROPERTIES, &["Get", "GetAll", "Set"]),
        (OBJECT_MANAGER, &["GetManagedObjects"]),
        (INTROSPECTABLE, &["Introspect"]),
        (MANAGER, &["NoSuchMethod", "createsession"]),
    ];
    for i in 0..calls {
        let (iface, names) = *rng.pick(methods);
        let method = *rng.pick(names);
        let path = match iface {
            CARD | EMULATOR => rng.pick(&cards).clone(),
            SESSION => {
                if rng.chance(50) {
                    live.clone()
                } else {
                    rng.object_path()
                }
            }
            RESERVATION => {
                if rng.chance(60) {
                    reservation.clone()
                } else {
                    rng.object_path()
                }
            }
            PROPERTIES => match rng.below(4) {
                0 => ROOT.to_owned(),
                1 => rng.pick(&cards).clone(),
                2 => live.clone(),
                _ => rng.object_path(),
            },
            _ if rng.chance(90) => ROOT.to_owned(),
            _ => rng.object_path(),
        };
        let args = arguments(&mut rng, &path, iface, method);
        let shown = format!("#{i} {iface}.{method} on {path} with {args:?}");
        tally.calls += 1;
        let per_method = tally
            .methods
            .entry(format!("{iface}.{method}"))
            .or_default();
        let caller = if rng.chance(15) { &stranger } else { &conn };
        let reply = call(caller, &path, iface, method, args).await;
        let gone = match &reply {
            Ok(_) => matches!(
                (iface, method),
                (SESSION, "Close") | (RESERVATION, "Release")
            ),
            Err(zbus::Error::FDO(e)) => e.name().as_str().ends_with(".UnknownObject"),
            Err(zbus::Error::MethodError(name, _, _)) => name.as_str().ends_with(".NotFound"),
            Err(_) => false,
        };
        if path == live && gone {
            // Keep a live session to aim at (it may have been closed, or ended with its
            // card); draining cards may leave no room for a new one for a while.
            if let Ok((p, fd)) = create_session(&conn, &params(64, 48, 30)).await {
                live = p.as_str().to_owned();
                kept.push(fd);
            }
        }
        if let (Ok(m), (MANAGER, "Reserve")) = (&reply, (iface, method)) {
            if let Ok(p) = m.body().deserialize::<zbus::OwnedObjectPath>() {
                reservations.push(p.as_str().to_owned());
            }
        }
        if path == reservation && gone {
            if let Ok(p) = reserve(&conn, 1000, None).await {
                reservation = p.as_str().to_owned();
                reservations.push(reservation.clone());
            }
        }
        if reply.is_ok() {
            per_method.0 += 1;
        } else {
            per_method.1 += 1;
        }
        let (name, message) = match reply {
            Ok(_) => {
                tally.returns += 1;
                continue;
            }
            Err(zbus::Error::MethodError(name, message, _)) => (name.as_str().to_owned(), message),
            // zbus turns the standard errors into `fdo::Error`s.
            Err(zbus::Error::FDO(e)) => (
                e.name().as_str().to_owned(),
                e.description().map(str::to_owned),
            ),
            Err(e) => panic!("seed {seed}: {shown}: not a D-Bus reply: {e}"),
        };
        assert!(
            ACCEPTED_ERRORS.contains(&name.as_str()),
            "seed {seed}: {shown}: unexpected error {name}: {message:?}"
        );
        if name.starts_with("org.vpud.") {
            let text = message.unwrap_or_default();
            assert!(
                !text.is_empty(),
                "seed {seed}: {shown}: {name} without a message"
            );
        }
        *tally.errors.entry(name).or_default() += 1;
    }
    eprintln!("dbus fuzz: {tally:#?}");
    assert!(tally.returns > 0, "nothing succeeded: {tally:?}");
    assert!(
        tally
            .errors
            .get("org.vpud.Vpud1.Error.InvalidArgument")
            .is_some_and(|&n| n > 0),
        "no call was refused as invalid: {tally:?}"
    );

    // The daemon still serves, its cards can be brought back, and sessions encode. The
    // reservations the calls made are released by their owners (one of the two clients).
    for r in &reservations {
        for c in [&conn, &stranger] {
            let _ = call(c, r, RESERVATION, "Release", Vec::new()).await;
        }
    }
    for card in &cards {
        call(&conn, card, CARD, "Resume", Vec::new())
            .await
            .expect("Resume");
    }
    let version: String = property(&conn, ROOT, MANAGER, "Version")
        .await
        .expect("Version");
    assert!(!version.is_empty());
    // Nothing the calls created outlives its channel: every session the fuzzer got was
    // closed with its descriptor (at once, or now for the ones kept).
    drop(kept);
    eventually(Duration::from_secs(5), || async {
        let s: Vec<zbus::OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await?;
        Ok(s.is_empty())
    })
    .await
    .expect("every session ends with its channel");
    let (_, fd) = create_session(&conn, &params(64, 48, 30))
        .await
        .expect("a well-formed CreateSession still succeeds");
    let mut channel = Channel::open(fd).await.expect("hello");
    let clip = synthetic_clip(64, 48, 10);
    let packets = channel.encode(&clip).await.expect("frames encode");
    assert_eq!(packets.len(), clip.len());
    assert!(packets.iter().map(|p| p.pts).eq(0..clip.len() as u64));
    assert_eq!(channel.finish().await.expect("end of stream"), (10, 10));
    daemon.stop().await.expect("clean shutdown");
}
