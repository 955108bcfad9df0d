use super::*;
use crate::config::{Policy, Quotas};
use vpu_driver::card::Codec;

fn limits(engines: u8) -> CardLimits {
    CardLimits {
        engines,
        capacity_per_engine: 1_000_000,
        pixel_rate_per_engine: 1280 * 720 * 240,
        codecs: vec![Codec::H264],
        max_width: 4096,
        max_height: 2304,
        max_sessions: 32,
        encoders: Vec::new(),
    }
}

fn d720(priority: Priority) -> Demand {
    Demand {
        codec: Codec::H264,
        width: 1280,
        height: 720,
        fps_num: 30,
        fps_den: 1,
        priority,
        reservation: None,
    }
}

fn sched(policy: Policy, quotas: Quotas) -> Scheduler {
    let mut s = Scheduler::new(policy, 20, 0.0, quotas);
    s.add_card(limits(2));
    s.add_card(limits(2));
    s
}

fn no_quota() -> Quotas {
    Quotas {
        sessions_per_client: 0,
        load_per_client: 0,
    }
}

#[test]
fn spread_alternates_and_pack_fills_one_card() {
    let mut s = sched(Policy::Spread, no_quota());
    let cards: Vec<usize> = (0..4)
        .map(|i| {
            s.place(i, "c", &d720(Priority::Realtime), None, &[])
                .unwrap()
                .card
        })
        .collect();
    assert_eq!(cards, vec![0, 1, 0, 1]);

    let mut s = sched(Policy::Pack, no_quota());
    let cards: Vec<usize> = (0..4)
        .map(|i| {
            s.place(i, "c", &d720(Priority::Realtime), None, &[])
                .unwrap()
                .card
        })
        .collect();
    assert_eq!(cards, vec![0, 0, 0, 0]);
}

#[test]
fn pack_moves_on_when_a_card_is_full_then_capacity_runs_out() {
    let mut s = sched(Policy::Pack, no_quota());
    // 16 × 125 000 = 2 000 000 = one card.
    for i in 0..16 {
        assert_eq!(
            s.place(i, "c", &d720(Priority::Realtime), None, &[])
                .unwrap()
                .card,
            0
        );
    }
    for i in 16..32 {
        assert_eq!(
            s.place(i, "c", &d720(Priority::Realtime), None, &[])
                .unwrap()
                .card,
            1
        );
    }
    assert!(matches!(
        s.place(99, "c", &d720(Priority::Realtime), None, &[]),
        Err(SchedError::NoCapacity { .. })
    ));
    assert_eq!(s.total_load(), s.total_capacity());
    s.release(3).unwrap();
    assert_eq!(
        s.place(99, "c", &d720(Priority::Realtime), None, &[])
            .unwrap()
            .card,
        0
    );
}

#[test]
fn batch_leaves_the_realtime_reserve() {
    let mut s = Scheduler::new(Policy::Spread, 20, 0.0, no_quota());
    s.add_card(limits(1));
    // 80 % of 1 000 000 = 6.4 sessions of 125 000: 6 batch sessions fit.
    for i in 0..6 {
        s.place(i, "c", &d720(Priority::Batch), None, &[]).unwrap();
    }
    assert!(matches!(
        s.place(6, "c", &d720(Priority::Batch), None, &[]),
        Err(SchedError::NoCapacity { .. })
    ));
    // Realtime still gets the reserve.
    s.place(6, "c", &d720(Priority::Realtime), None, &[])
        .unwrap();
    s.place(7, "c", &d720(Priority::Realtime), None, &[])
        .unwrap();
    assert!(s
        .place(8, "c", &d720(Priority::Realtime), None, &[])
        .is_err());
}

#[test]
fn quotas_are_per_client() {
    let mut s = sched(
        Policy::Spread,
        Quotas {
            sessions_per_client: 2,
            load_per_client: 0,
        },
    );
    s.place(1, "a", &d720(Priority::Realtime), None, &[])
        .unwrap();
    s.place(2, "a", &d720(Priority::Realtime), None, &[])
        .unwrap();
    assert!(matches!(
        s.place(3, "a", &d720(Priority::Realtime), None, &[]),
        Err(SchedError::QuotaExceeded { .. })
    ));
    s.place(3, "b", &d720(Priority::Realtime), None, &[])
        .unwrap();
    s.release(1);
    s.place(4, "a", &d720(Priority::Realtime), None, &[])
        .unwrap();

    let mut s = sched(
        Policy::Spread,
        Quotas {
            sessions_per_client: 0,
            load_per_client: 300_000,
        },
    );
    s.place(1, "a", &d720(Priority::Realtime), None, &[])
        .unwrap();
    s.place(2, "a", &d720(Priority::Realtime), None, &[])
        .unwrap();
    let e = s
        .place(3, "a", &d720(Priority::Realtime), None, &[])
        .unwrap_err();
    assert!(matches!(e, SchedError::QuotaExceeded { .. }), "{e}");
    assert_eq!(s.client_usage("a"), (2, 250_000));
}

#[test]
fn draining_cards_take_nothing_new_and_pinning_is_honoured() {
    let mut s = sched(Policy::Spread, no_quota());
    s.set_state(0, CardState::Draining);
    for i in 0..3 {
        assert_eq!(
            s.place(i, "c", &d720(Priority::Realtime), None, &[])
                .unwrap()
                .card,
            1
        );
    }
    assert!(matches!(
        s.place(9, "c", &d720(Priority::Realtime), Some(0), &[]),
        Err(SchedError::NoCapacity { .. })
    ));
    s.set_state(0, CardState::Online);
    assert_eq!(
        s.place(9, "c", &d720(Priority::Realtime), Some(0), &[])
            .unwrap()
            .card,
        0
    );
    assert!(matches!(
        s.place(10, "c", &d720(Priority::Realtime), Some(7), &[]),
        Err(SchedError::NoSuchCard { card: 7 })
    ));
}

#[test]
fn unsupported_requests_are_not_capacity_errors() {
    let mut s = sched(Policy::Spread, no_quota());
    let mut d = d720(Priority::Realtime);
    d.codec = Codec::Av1;
    assert!(matches!(
        s.place(1, "c", &d, None, &[]),
        Err(SchedError::NotSupported { .. })
    ));
    let mut d = d720(Priority::Realtime);
    d.width = 8192;
    assert!(matches!(
        s.place(1, "c", &d, None, &[]),
        Err(SchedError::NotSupported { .. })
    ));
}

#[test]
fn measured_load_is_blended_and_idle_cards_read_zero() {
    let mut s = Scheduler::new(Policy::Spread, 0, 0.5, no_quota());
    s.add_card(limits(2));
    s.set_measured(0, 400_000);
    assert_eq!(s.card_load(0), 0);
    s.place(1, "c", &d720(Priority::Realtime), None, &[])
        .unwrap();
    assert_eq!(s.card_load(0), (125_000 + 400_000) / 2);
    s.release(1);
    assert_eq!(s.card_load(0), 0);
    assert_eq!(s.card_reserved(0), 0);
}

#[test]
fn resize_checks_the_card_the_session_runs_on() {
    let mut s = Scheduler::new(Policy::Spread, 0, 0.0, no_quota());
    s.add_card(limits(1));
    s.place(1, "c", &d720(Priority::Realtime), None, &[])
        .unwrap();
    let mut faster = d720(Priority::Realtime);
    faster.fps_num = 60;
    assert_eq!(s.resize(1, &faster).unwrap().units, 250_000);
    assert_eq!(s.card_reserved(0), 250_000);
    for i in 2..5 {
        s.place(i, "c", &faster, None, &[]).unwrap();
    }
    faster.fps_num = 120;
    assert!(matches!(
        s.resize(1, &faster),
        Err(SchedError::NoCapacity { .. })
    ));
    assert_eq!(s.card_reserved(0), 1_000_000);
    assert!(matches!(
        s.resize(9, &faster),
        Err(SchedError::NoSuchSession { .. })
    ));
}

/// A card with one H.264 engine and one AV1 engine (720p at 24 frames/s).
fn mixed_limits() -> CardLimits {
    let e = |engine, codec, pixel_rate| super::cost::EncoderLimits {
        engine,
        codec,
        capacity: 1_000_000,
        pixel_rate,
        max_width: 4096,
        max_height: 2304,
    };
    CardLimits {
        codecs: vec![Codec::H264, Codec::Av1],
        encoders: vec![
            e(0, Codec::H264, 1280 * 720 * 240),
            e(1, Codec::Av1, 1280 * 720 * 24),
        ],
        ..limits(2)
    }
}

fn av1(width: u32, height: u32, fps: u32) -> Demand {
    Demand {
        codec: Codec::Av1,
        width,
        height,
        fps_num: fps,
        fps_den: 1,
        ..d720(Priority::Realtime)
    }
}

#[test]
fn sessions_go_to_cards_that_encode_their_codec() {
    let mut s = Scheduler::new(Policy::Spread, 20, 0.0, no_quota());
    s.add_card(limits(2));
    s.add_card(mixed_limits());
    // AV1 only fits card 1, whatever the policy prefers.
    for i in 0..4 {
        let p = s.place(i, "c", &av1(640, 360, 24), None, &[]).unwrap();
        assert_eq!((p.card, p.codec, p.units), (1, Codec::Av1, 250_000));
    }
    // 4 × 640x360 at 24 fps, a quarter of the AV1 engine each: it is full, although the
    // card's H.264 engine is idle.
    let e = s.place(9, "c", &av1(640, 360, 24), None, &[]).unwrap_err();
    assert!(matches!(e, SchedError::NoCapacity { .. }), "{e}");
    let p = s
        .place(10, "c", &d720(Priority::Realtime), Some(1), &[])
        .unwrap();
    assert_eq!(p.card, 1);
    // Released AV1 units can be taken again.
    s.release(0);
    assert_eq!(
        s.place(11, "c", &av1(640, 360, 24), None, &[])
            .unwrap()
            .card,
        1
    );
    // A move off card 1 has nowhere to go: card 0 has no AV1 engine.
    let e = s.place(12, "c", &av1(640, 360, 8), None, &[1]).unwrap_err();
    assert!(matches!(e, SchedError::NotSupported { .. }), "{e}");
    // Pinned to a card without AV1: refused, naming what is offered.
    let e = s.place(13, "c", &av1(64, 64, 8), Some(0), &[]).unwrap_err();
    assert!(e.to_string().contains("h264 up to 4096x2304"), "{e}");
}

#[test]
fn without_an_av1_engine_av1_is_not_supported() {
    let mut s = sched(Policy::Spread, no_quota());
    let e = s.place(1, "c", &av1(1280, 720, 30), None, &[]).unwrap_err();
    match &e {
        SchedError::NotSupported { what, accepted } => {
            assert_eq!(what, "av1 1280x720");
            assert_eq!(accepted, "h264 up to 4096x2304");
        }
        other => panic!("{other}"),
    }
    // Batch sessions leave the realtime reserve of the AV1 engines too.
    let mut s = Scheduler::new(Policy::Spread, 50, 0.0, no_quota());
    s.add_card(mixed_limits());
    let half = av1(1280, 720, 12);
    let batch = Demand {
        priority: Priority::Batch,
        ..half.clone()
    };
    s.place(1, "c", &batch, None, &[]).unwrap();
    assert!(s.place(2, "c", &batch, None, &[]).is_err());
    s.place(3, "c", &half, None, &[]).unwrap();
}
