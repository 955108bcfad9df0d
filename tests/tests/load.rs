//! Short load runs of `vpud` as a separate process: a soak whose open descriptors, DMA
//! mappings and mapped frame buffers must come back to where they were (RSS within a
//! tolerance), and a small surge whose excess calls must be refused with `NoCapacity` or
//! `QuotaExceeded` and nothing else. Frame rates are printed, not asserted: that is the
//! `vpu-surge` tool's business on a quiet machine.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vpu_tests::load::soak::{self, SoakOptions};
use vpu_tests::load::surge::{self, SurgeOptions};

/// The two runs take turns, so that neither measures the other.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_keeps_descriptors_dma_mappings_and_memory_flat() {
    let _turn = TURN.lock().await;
    let report = soak::run(SoakOptions {
        duration: Duration::from_secs(20),
        warmup: Duration::from_secs(5),
        cards: 2,
        clients: 3,
        concurrency: 6,
        sample_every: Duration::from_secs(5),
        // Allocator arenas of a short run are still settling; the 10-minute run in
        // RELIABILITY.md holds the daemon to a tighter bound.
        rss_tolerance_percent: 30,
    })
    .await
    .unwrap();
    report.print();
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    // Every way of ending a session was exercised, and every session ended.
    assert!(report.closed_by_close > 0);
    assert!(report.closed_by_channel > 0);
    assert!(report.closed_by_disconnect > 0);
    assert_eq!(report.created, report.closed());
    assert!(report.frames >= 2 * report.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_is_refused_with_typed_errors_only() {
    let _turn = TURN.lock().await;
    let options = SurgeOptions {
        running: 2,
        calls: 60,
        clients: 12,
        quota: 1,
        warmup: Duration::from_secs(1),
        before: Duration::from_secs(2),
        after: Duration::from_secs(2),
        ..SurgeOptions::default()
    };
    let capacity = options.capacity();
    let report = surge::run(options).await.unwrap();
    report.print();
    assert!(
        report.behaviour_failures().is_empty(),
        "{:?}",
        report.behaviour_failures()
    );
    // The card was filled and no further: the rest was refused, by capacity for clients
    // without a session and by quota for clients that had won one.
    assert_eq!(report.free, capacity - 2);
    assert_eq!(report.successes, capacity - 2);
    assert!(report.no_capacity > 0);
    assert!(report.quota_exceeded > 0);
    assert_eq!(
        report.successes + report.no_capacity + report.quota_exceeded,
        60
    );
    // Every running session delivered frames before, during and after the surge.
    for w in &report.running {
        assert!(w.iter().all(|r| r.delivered > 0.0), "{w:?}");
    }
}
