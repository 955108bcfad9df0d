//! The registry behind `GET /metrics`: the counters of [`Metrics`] and, read at each
//! scrape from the daemon's state, the figures of its cards and sessions. Names follow
//! Prometheus's conventions: `vpud_` first, base units (seconds, bytes) in the name,
//! counters ending in `_total`. `docs/operations.md` lists them.
//!
//! A scrape takes the scheduler's and the sessions' locks once each, for a copy of a few
//! numbers per card: sessions never wait on it for longer than on a D-Bus property read.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::Metrics;
use crate::scheduler::CardState;
use crate::service::state::{lock, Daemon};

/// Every state a card can be in, for `vpud_card_state` (one series per state, 1 for the
/// current one).
const CARD_STATES: [CardState; 5] = [
    CardState::Online,
    CardState::Draining,
    CardState::Resetting,
    CardState::Failed,
    CardState::Offline,
];

/// Which text format a scrape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`), what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`), for everything else (`curl`,
    /// `promtool check metrics`, older scrapers).
    Text,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The daemon's registry: its counters and a collector of its state.
pub fn registry(daemon: &Arc<Daemon>) -> Registry {
    let mut r = Registry::default();
    let m: &Metrics = &daemon.metrics;
    r.register(
        "vpud_sessions_created",
        "Encode sessions created",
        m.created.clone(),
    );
    r.register(
        "vpud_sessions_closed",
        "Sessions that ended, whatever ended them",
        m.closed.clone(),
    );
    r.register(
        "vpud_sessions_migrated",
        "Sessions moved to another card (or back onto theirs) after a card failed or was reset",
        m.migrated.clone(),
    );
    r.register(
        "vpud_sessions_refused",
        "CreateSession calls that failed, by the D-Bus error returned",
        m.refused.clone(),
    );
    r.register(
        "vpud_frames_in",
        "Frames received from clients over the data channels",
        m.frames.clone(),
    );
    r.register(
        "vpud_packets_out",
        "Encoded packets sent to clients",
        m.packets.clone(),
    );
    r.register_with_unit(
        "vpud_output",
        "Bitstream bytes sent to clients",
        Unit::Bytes,
        m.bytes.clone(),
    );
    r.register_with_unit(
        "vpud_encode_latency",
        "Time from a frame's arrival on the data channel to its packet sent back",
        Unit::Seconds,
        m.latency.clone(),
    );
    r.register_collector(Box::new(StateCollector {
        daemon: Arc::clone(daemon),
    }));
    r
}

/// Encodes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8192);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?,
    }
    Ok(out)
}

/// Reads the daemon's state at each scrape.
#[derive(Debug)]
struct StateCollector {
    daemon: Arc<Daemon>,
}

/// One card's figures, copied under the scheduler's lock.
struct CardFigures {
    load: u64,
    capacity: u64,
    sessions: u32,
    state: CardState,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.daemon;
        let figures: Vec<CardFigures> = {
            let sched = lock(&d.sched);
            (0..d.cards.len())
                .map(|i| CardFigures {
                    load: sched.card_load(i),
                    capacity: sched.card_capacity(i),
                    sessions: sched.card_sessions(i),
                    state: sched.state(i).unwrap_or(CardState::Offline),
                })
                .collect()
        };
        let mut sessions: BTreeMap<&'static str, i64> = BTreeMap::new();
        for s in d.all_sessions() {
            let codec = lock(&s.config).codec.as_str();
            *sessions.entry(codec).or_insert(0) += 1;
        }

        gauge_family(
            &mut encoder,
            "vpud_build_info",
            "The running vpud's version (always 1)",
            [([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        gauge_family(
            &mut encoder,
            "vpud_sessions",
            "Sessions open now",
            sessions.iter().map(|(c, n)| ([("codec", *c)], *n)),
        )?;
        counter_family(
            &mut encoder,
            "vpud_errors",
            "Errors the daemon returned or met, by kind (as Manager.ErrorCounts)",
            d.metrics
                .error_counts()
                .into_iter()
                .map(|(k, n)| ([("kind", k)], n)),
        )?;

        let cards = &d.cards;
        gauge_family(
            &mut encoder,
            "vpud_card_info",
            "The cards vpud drives (always 1), with their backend and PCI address",
            cards.iter().map(|c| {
                (
                    [
                        ("card", c.name.clone()),
                        ("backend", c.backend.to_string()),
                        ("pci_address", c.pci_address.clone()),
                    ],
                    1,
                )
            }),
        )?;
        gauge_family(
            &mut encoder,
            "vpud_card_load_units",
            "Load units in use on the card (Card.Load): modelled, blended with the measured load",
            cards
                .iter()
                .zip(&figures)
                .map(|(c, f)| ([("card", c.name.as_str())], saturating_i64(f.load))),
        )?;
        gauge_family(
            &mut encoder,
            "vpud_card_capacity_units",
            "Load units the card offers (Card.Capacity)",
            cards
                .iter()
                .zip(&figures)
                .map(|(c, f)| ([("card", c.name.as_str())], saturating_i64(f.capacity))),
        )?;
        gauge_family(
            &mut encoder,
            "vpud_card_sessions",
            "Sessions running on the card (Card.ActiveSessions)",
            cards
                .iter()
                .zip(&figures)
                .map(|(c, f)| ([("card", c.name.as_str())], i64::from(f.sessions))),
        )?;
        gauge_family(
            &mut encoder,
            "vpud_card_state",
            "The card's state (Card.State): 1 for the current one, 0 for the others",
            cards.iter().zip(&figures).flat_map(|(c, f)| {
                CARD_STATES.iter().map(move |s| {
                    (
                        [("card", c.name.as_str()), ("state", s.as_str())],
                        i64::from(*s == f.state),
                    )
                })
            }),
        )?;
        counter_family(
            &mut encoder,
            "vpud_card_errors",
            "Errors on the card by kind; they add up to Card.Errors",
            cards.iter().flat_map(|c| {
                let nvme = c.card.nvme_metrics();
                let mut kinds = c.error_counts();
                kinds.push(("lost-interrupt", nvme.lost_interrupts));
                kinds.push(("stray-completion", nvme.stray_completions));
                kinds
                    .into_iter()
                    .map(move |(k, n)| ([("card", c.name.as_str()), ("kind", k)], n))
            }),
        )?;
        counter_family(
            &mut encoder,
            "vpud_card_transport_events",
            "What the card's command transport saw and handled, by kind",
            cards.iter().flat_map(|c| {
                let nvme = c.card.nvme_metrics();
                let card = c.card.metrics();
                [
                    ("command-timeout", nvme.timeouts),
                    ("abort", nvme.aborts),
                    ("late-completion", nvme.late_completions),
                    ("protocol-error", nvme.protocol_errors),
                    ("bad-completion", card.bad_completions),
                    ("rejected", card.rejected),
                    ("output-retry", card.output_retries),
                ]
                .into_iter()
                .map(move |(k, n)| ([("card", c.name.as_str()), ("kind", k)], n))
            }),
        )?;
        counter_family(
            &mut encoder,
            "vpud_card_resets",
            "Resets of the card the daemon finished, successful or not",
            cards
                .iter()
                .map(|c| ([("card", c.name.as_str())], c.reset_epoch())),
        )?;
        Ok(())
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes one gauge family.
fn gauge_family<L>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one counter family (`name` without `_total`: the encoder adds it).
fn counter_family<L>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
