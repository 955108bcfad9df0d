//! A D-Bus argument fuzzer: a real client sends random keys, types and values to every
//! method of the API. Each call must get a reply (success or a typed
//! `org.vpud.Vpud1.Error.*`), and the daemon must keep serving normal clients.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use vpu_tests::daemon::*;
use vpud::config::Config;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

/// A small deterministic generator (xorshift), so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: &[&str] = &[
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
    "engine",
    "count",
    "duration_ms",
    "",
    "Width",
    "\u{e9}",
    "x",
];

fn value(rng: &mut Rng) -> OwnedVariant {
    let interesting = [
        0u32,
        1,
        2,
        15,
        16,
        17,
        30,
        1280,
        1281,
        4096,
        65535,
        u32::MAX,
    ];
    let v = match rng.below(9) {
        0 => Variant::U32(interesting[rng.below(interesting.len() as u64) as usize]),
        1 => Variant::U32(rng.next() as u32),
        2 => Variant::I32(rng.next() as i32),
        3 => Variant::U64(rng.next()),
        4 => Variant::Bool(rng.below(2) == 0),
        5 => Variant::F64(rng.next() as f64 / 7.0),
        6 => Variant::from(
            [
                "h264", "hevc", "av1", "i420", "nv12", "cbr", "vbr", "cqp", "batch", "realtime",
                "", "H264",
            ][rng.below(12) as usize],
        ),
        7 => Variant::ObjectPath(
            zbus::ObjectPath::try_from(
                [
                    "/org/vpud/Vpud1/card/0",
                    "/org/vpud/Vpud1/card/9",
                    "/",
                    "/org/vpud/Vpud1",
                ][rng.below(4) as usize],
            )
            .unwrap(),
        ),
        _ => Variant::U8(rng.next() as u8),
    };
    owned(v)
}

fn dict(rng: &mut Rng) -> HashMap<String, OwnedVariant> {
    let n = rng.below(8);
    (0..n)
        .map(|_| {
            (
                KEYS[rng.below(KEYS.len() as u64) as usize].to_owned(),
                value(rng),
            )
        })
        .collect()
}

fn typed(e: &zbus::Error) -> bool {
    matches!(error_name(e), Some(n) if n.starts_with("org.vpud.Vpud1.Error."))
        // Arguments of the wrong D-Bus signature are refused by zbus before the method.
        || e.to_string().contains("org.freedesktop.DBus.Error.InvalidArgs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_arguments_get_typed_errors_and_harm_nothing() {
    let mut config = Config::default();
    config.quotas.sessions_per_client = 0;
    let d = start(2, config).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut created = Vec::new();
    for i in 0..400 {
        match rng.below(5) {
            0 | 1 => match create_session(&conn, &dict(&mut rng)).await {
                Ok(s) => created.push(s),
                Err(e) => assert!(typed(&e), "call {i}: CreateSession: {e}"),
            },
            2 => {
                let card = format!("/org/vpud/Vpud1/card/{}", rng.below(2));
                let kind = ["hang-engine", "melt", "", "slow-engine", "lost-interrupt"]
                    [rng.below(5) as usize];
                // Faults that would disturb the rest of the run are not injected for real:
                // an unknown kind or an invalid option set keeps them out.
                let mut opts = dict(&mut rng);
                if kind == "hang-engine" || kind == "slow-engine" || kind == "lost-interrupt" {
                    opts.insert("bogus".into(), owned(Variant::U32(1)));
                }
                let r = conn
                    .call_method(
                        Some(BUS_NAME),
                        card.as_str(),
                        Some("org.vpud.Vpud1.Emulator"),
                        "InjectFault",
                        &(kind, opts),
                    )
                    .await;
                let e = r.unwrap_err();
                assert!(typed(&e), "call {i}: InjectFault: {e}");
            }
            3 => {
                if let Some((path, _)) = created.last() {
                    let path: &OwnedObjectPath = path;
                    let r = conn
                        .call_method(
                            Some(BUS_NAME),
                            path.as_str(),
                            Some(SESSION),
                            "Reconfigure",
                            &(dict(&mut rng),),
                        )
                        .await;
                    if let Err(e) = r {
                        assert!(typed(&e), "call {i}: Reconfigure: {e}");
                    }
                }
            }
            _ => {
                // Wrong signatures altogether.
                let r = conn
                    .call_method(
                        Some(BUS_NAME),
                        ROOT,
                        Some(MANAGER),
                        "CreateSession",
                        &(rng.next() as u32, "x"),
                    )
                    .await;
                assert!(r.is_err(), "call {i}: a wrong signature was accepted");
            }
        }
    }
    // Whatever was created is accounted for, and the daemon still serves a normal client.
    let sessions: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await.unwrap();
    assert_eq!(sessions.len(), created.len());
    drop(created);
    vpu_tests::daemon::eventually(std::time::Duration::from_secs(2), || async {
        let s: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await?;
        Ok(s.is_empty())
    })
    .await
    .unwrap();
    let (_p, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    let clip = vpu_tests::clip::synthetic_clip(320, 240, 5);
    assert_eq!(ch.encode(&clip).await.unwrap().len(), 5);
}
