//! Whole-system tests of `Manager.Reserve` and `org.vpud.Vpud1.Reservation`: units set
//! aside on a card are kept from sessions outside the reservation, sessions inside draw on
//! them and are refused with `QuotaExceeded` past them, the reservation ends with
//! `Release()` or when its owner leaves the bus, and bad requests are typed errors.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use vpu_tests::daemon::*;
use vpud::config::Config;
use zbus::{Connection, ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

fn config() -> Config {
    let mut c = Config::default();
    c.scheduler.load_sample_interval_ms = 60_000;
    c.scheduler.measured_load_weight = 0.0;
    c
}

/// `params(w, h, fps)` drawing on `reservation`.
fn in_reservation(w: u32, h: u32, fps: u32, reservation: &str) -> HashMap<String, OwnedVariant> {
    let mut p = params(w, h, fps);
    let path = ObjectPath::try_from(reservation).unwrap();
    p.insert("reservation".into(), owned(Variant::ObjectPath(path)));
    p
}

async fn release(conn: &Connection, reservation: &str) -> zbus::Result<()> {
    conn.call_method(
        Some(BUS_NAME),
        reservation,
        Some(RESERVATION),
        "Release",
        &(),
    )
    .await
    .map(|_| ())
}

fn err_name<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    error_name(&r.unwrap_err()).unwrap_or_default()
}

const QUOTA: &str = "org.vpud.Vpud1.Error.QuotaExceeded";
const NO_CAPACITY: &str = "org.vpud.Vpud1.Error.NoCapacity";
const NOT_FOUND: &str = "org.vpud.Vpud1.Error.NotFound";
const INVALID: &str = "org.vpud.Vpud1.Error.InvalidArgument";

// The emulated card: 2 engines of 1 000 000 load units, each worth 720p240. So 1080p30
// takes 281 250 units, 2160p60 a whole engine.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_units_are_set_aside_drawn_on_and_released() {
    let d = start(1, config()).await.unwrap();
    let plugin = connect(&d).await.unwrap();
    let pod = connect(&d).await.unwrap();
    let r = reserve(&plugin, 600_000, None).await.unwrap();
    let r = r.as_str();
    assert!(r.starts_with("/org/vpud/Vpud1/reservation/"), "{r}");
    let card: OwnedObjectPath = property(&pod, r, RESERVATION, "Card").await.unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/0");
    let units: u64 = property(&pod, r, RESERVATION, "Units").await.unwrap();
    let owner: String = property(&pod, r, RESERVATION, "Owner").await.unwrap();
    assert_eq!(units, 600_000);
    assert_eq!(owner, plugin.unique_name().unwrap().to_string());

    // Two 1080p30 sessions fit in the reservation (562 500 units); a third does not.
    let (in1, _c1) = create_session(&pod, &in_reservation(1920, 1080, 30, r))
        .await
        .unwrap();
    let (in2, _c2) = create_session(&pod, &in_reservation(1920, 1080, 30, r))
        .await
        .unwrap();
    assert_eq!(
        err_name(create_session(&pod, &in_reservation(1920, 1080, 30, r)).await),
        QUOTA
    );
    let used: u64 = property(&pod, r, RESERVATION, "Used").await.unwrap();
    assert_eq!(used, 562_500);

    // Outside it: 1 400 000 units are left, whatever the reservation's sessions use.
    let (_out1, _c3) = create_session(&pod, &params(3840, 2160, 60)).await.unwrap();
    let (_out2, _c4) = create_session(&pod, &params(1920, 1080, 30)).await.unwrap();
    assert_eq!(
        err_name(create_session(&pod, &params(1920, 1080, 30)).await),
        NO_CAPACITY
    );
    // A session leaving the reservation gives its units back to the reservation only.
    session_call(&pod, in1.as_str(), "Close").await.unwrap();
    eventually(Duration::from_secs(1), || async {
        Ok(property::<u64>(&pod, r, RESERVATION, "Used").await? == 281_250)
    })
    .await
    .unwrap();
    assert_eq!(
        err_name(create_session(&pod, &params(1920, 1080, 30)).await),
        NO_CAPACITY
    );

    // Only the owner releases it.
    assert_eq!(
        err_name(release(&pod, r).await),
        "org.vpud.Vpud1.Error.AccessDenied"
    );
    release(&plugin, r).await.unwrap();
    assert!(property::<u64>(&pod, r, RESERVATION, "Units")
        .await
        .is_err());
    // Its session carries on; its unused units are free; it cannot be drawn on again.
    let state: String = property(&pod, in2.as_str(), SESSION, "State")
        .await
        .unwrap();
    assert_eq!(state, "running");
    let (_out3, _c5) = create_session(&pod, &params(1920, 1080, 30)).await.unwrap();
    assert_eq!(
        err_name(create_session(&pod, &in_reservation(320, 240, 30, r)).await),
        NOT_FOUND
    );
    assert!(
        release(&plugin, r).await.is_err(),
        "a released reservation is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_ends_when_its_owner_leaves_the_bus() {
    let d = start(1, config()).await.unwrap();
    let pod = connect(&d).await.unwrap();
    let r = {
        let plugin = connect(&d).await.unwrap();
        let r = reserve(&plugin, 1_900_000, None).await.unwrap();
        let (s, _c) = create_session(&pod, &in_reservation(1920, 1080, 30, r.as_str()))
            .await
            .unwrap();
        // Outside the reservation only 100 000 units are left.
        assert_eq!(
            err_name(create_session(&pod, &params(1920, 1080, 30)).await),
            NO_CAPACITY
        );
        plugin.graceful_shutdown().await;
        let took = eventually(Duration::from_secs(1), || async {
            Ok(property::<u64>(&pod, r.as_str(), RESERVATION, "Units")
                .await
                .is_err())
        })
        .await
        .unwrap();
        eprintln!("reservation of the departed owner gone after {took:?}");
        let state: String = property(&pod, s.as_str(), SESSION, "State").await.unwrap();
        assert_eq!(state, "running");
        r
    };
    let (_s, _c) = create_session(&pod, &params(1920, 1080, 30)).await.unwrap();
    assert_eq!(
        err_name(create_session(&pod, &in_reservation(320, 240, 30, r.as_str())).await),
        NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reservation_requests_are_typed_errors() {
    let d = start(2, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let call = |p: HashMap<String, OwnedVariant>| {
        let conn = conn.clone();
        async move {
            conn.call_method(Some(BUS_NAME), ROOT, Some(MANAGER), "Reserve", &(p,))
                .await
                .map(|_| ())
        }
    };
    let one = |k: &str, v: Variant<'static>| {
        let mut p = HashMap::new();
        p.insert(k.to_owned(), owned(v));
        p
    };
    assert_eq!(err_name(call(HashMap::new()).await), INVALID);
    assert_eq!(err_name(call(one("units", Variant::U64(0))).await), INVALID);
    assert_eq!(err_name(call(one("units", Variant::U32(5))).await), INVALID);
    assert_eq!(err_name(call(one("unit", Variant::U64(5))).await), INVALID);
    assert_eq!(err_name(reserve(&conn, 2_000_001, None).await), NO_CAPACITY);
    assert_eq!(
        err_name(reserve(&conn, 5, Some("/org/vpud/Vpud1/card/9")).await),
        NOT_FOUND
    );
    // Two cards of 2 000 000: a third reservation of 1 500 000 has no room.
    let r0 = reserve(&conn, 1_500_000, None).await.unwrap();
    let r1 = reserve(&conn, 1_500_000, None).await.unwrap();
    let c0: OwnedObjectPath = property(&conn, r0.as_str(), RESERVATION, "Card")
        .await
        .unwrap();
    let c1: OwnedObjectPath = property(&conn, r1.as_str(), RESERVATION, "Card")
        .await
        .unwrap();
    assert_ne!(c0, c1, "spread puts them on different cards");
    assert_eq!(err_name(reserve(&conn, 1_500_000, None).await), NO_CAPACITY);

    for (bogus, error) in [
        ("/org/vpud/Vpud1/reservation/99", NOT_FOUND),
        ("/org/vpud/Vpud1/card/0", INVALID),
        ("/org/vpud/Vpud1/reservation/x", INVALID),
    ] {
        assert_eq!(
            err_name(create_session(&conn, &in_reservation(320, 240, 30, bogus)).await),
            error,
            "{bogus}"
        );
    }
    let mut p = params(320, 240, 30);
    p.insert("reservation".into(), owned(Variant::from("0")));
    assert_eq!(err_name(create_session(&conn, &p).await), INVALID);
    // Pinned to the other card than the reservation's.
    let mut p = in_reservation(320, 240, 30, r0.as_str());
    p.insert("card".into(), owned(Variant::ObjectPath(c1.as_ref())));
    assert_eq!(err_name(create_session(&conn, &p).await), INVALID);
    // The daemon is unharmed: a session in the reservation goes to its card.
    let (s, _c) = create_session(&conn, &in_reservation(320, 240, 30, r0.as_str()))
        .await
        .unwrap();
    let card: OwnedObjectPath = property(&conn, s.as_str(), SESSION, "Card").await.unwrap();
    assert_eq!(card, c0);
}
