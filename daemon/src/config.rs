//! vpud's configuration file (TOML, `/etc/vpud/vpud.toml` by default).
//!
//! Every section and field is optional; unknown fields and bad values are errors that name
//! the field and what it accepts. `daemon/dist/vpud.toml` documents each option.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where vpud looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vpud/vpud.toml";

/// Runtime worker threads unless configured. One thread serves the control path with the
/// fewest thread wake-ups per call (`BENCHMARKS.md`, benchmark (b)) and has room for
/// thousands of frames a second; hosts with many busy cards may want more.
pub const DEFAULT_THREADS: u16 = 1;

/// Where the Prometheus endpoint listens once `[metrics] enabled = true` and no address is
/// given: loopback only, so that nothing is exposed beyond the host without an explicit
/// choice.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9478";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading configuration {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path}: {message}")]
    Parse { path: String, message: String },
    #[error("configuration {path}: {field} = {value}: {accepted}")]
    Invalid {
        path: String,
        field: &'static str,
        value: String,
        accepted: &'static str,
    },
}

/// Placement policy for new sessions (`Manager.Policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The least loaded card (spreads heat and failure risk).
    #[default]
    Spread,
    /// The most loaded card that still fits (keeps whole cards free).
    Pack,
}

impl Policy {
    /// The name the D-Bus API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Spread => "spread",
            Policy::Pack => "pack",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Placement policy.
    pub policy: Policy,
    /// Worker threads of the daemon's async runtime (D-Bus, data channels, card queues),
    /// 1–64. Encoding runs on the cards, not on these threads.
    pub threads: u16,
    pub scheduler: SchedulerConfig,
    pub quotas: Quotas,
    pub emulated: EmulatedConfig,
    pub vfio: VfioConfig,
    pub timeouts: Timeouts,
    pub metrics: MetricsConfig,
    pub transcode: TranscodeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: Policy::Spread,
            threads: DEFAULT_THREADS,
            scheduler: SchedulerConfig::default(),
            quotas: Quotas::default(),
            emulated: EmulatedConfig::default(),
            vfio: VfioConfig::default(),
            timeouts: Timeouts::default(),
            metrics: MetricsConfig::default(),
            transcode: TranscodeConfig::default(),
        }
    }
}

/// Pictures a transcode session keeps in flight on its card unless configured.
pub const DEFAULT_PICTURES_IN_FLIGHT: u16 = 4;

/// Transcode sessions (`docs/scheduling.md`, "Transcode ladders").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscodeConfig {
    /// Pictures of one ladder on its card at once (decoded and not yet encoded by every
    /// rendition), 1–16: 1 runs one picture at a time through decode, scale and encode;
    /// more lets the card's engines work on several pictures side by side, each picture
    /// holding its decoded and scaled copies in the card's frame memory.
    pub pictures_in_flight: u16,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        TranscodeConfig {
            pictures_in_flight: DEFAULT_PICTURES_IN_FLIGHT,
        }
    }
}

/// The Prometheus endpoint (`docs/operations.md`, "Metrics").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` at all. Off unless asked for: an open port is the operator's
    /// decision.
    pub enabled: bool,
    /// `IP:port` to listen on; validated by [`Config::validate`], read with
    /// [`MetricsConfig::socket_address`].
    pub address: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            address: DEFAULT_METRICS_ADDRESS.to_owned(),
        }
    }
}

impl MetricsConfig {
    /// The address to listen on, if the endpoint is enabled and the address is valid
    /// (checked by [`Config::validate`]).
    pub fn socket_address(&self) -> Option<SocketAddr> {
        if self.enabled {
            self.address.parse().ok()
        } else {
            None
        }
    }
}

/// Scheduler tuning (see `docs/scheduling.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Percent of every card's capacity that `batch` sessions may not use, kept for
    /// `realtime` ones. 0–100.
    pub realtime_reserve_percent: u8,
    /// Weight of the card's measured load against the modelled load, 0.0–1.0 (0: model
    /// only).
    pub measured_load_weight: f64,
    /// How often each card is sampled, in milliseconds: its status register (a failed
    /// controller is reset) and, while it has sessions, its engine log for the measured
    /// load.
    pub load_sample_interval_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            realtime_reserve_percent: 20,
            measured_load_weight: 0.5,
            load_sample_interval_ms: 1000,
        }
    }
}

/// Per-client limits; a client is one bus connection (unique name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Sessions one client may hold at once; 0 means no limit.
    pub sessions_per_client: u32,
    /// Load units one client may hold at once, all cards together; 0 means no limit.
    pub load_per_client: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            sessions_per_client: 64,
            load_per_client: 0,
        }
    }
}

/// Emulated cards (in addition to `--emulate N`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatedConfig {
    /// How many emulated cards to add.
    pub count: u32,
    /// Encode engines per card, 1–16.
    pub engines: u8,
    /// Load units per engine.
    pub capacity_per_engine: u32,
    /// Luma samples per second one engine sustains.
    pub pixel_rate_per_engine: u64,
    /// Throttle engines to the declared pixel rate.
    pub pace: bool,
    /// Concurrent sessions one engine accepts.
    pub max_sessions_per_engine: u16,
    /// Frames one session may have in flight.
    pub max_frames_in_flight: u16,
    /// H.264 decode engines per card, 0–16 (0: the card cannot transcode).
    pub decode_engines: u8,
    /// Scaler engines per card, 0–16 (at least 1 with decode engines).
    pub scale_engines: u8,
    /// How many of each card's engines encode AV1 (`rav1e`) instead of H.264.
    pub av1_engines: u8,
    /// Luma samples per second one AV1 engine sustains.
    pub av1_pixel_rate_per_engine: u64,
    /// `[[emulated.card]]`: cards with their own engine mix, added after the `count`
    /// uniform ones (and those of `--emulate N`).
    pub card: Vec<EmulatedCard>,
}

/// One `[[emulated.card]]`: what differs from `[emulated]` for this card.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatedCard {
    /// Encode engines; `[emulated] engines` when not given.
    pub engines: Option<u8>,
    /// AV1 engines among them; `[emulated] av1_engines` when not given.
    pub av1_engines: Option<u8>,
}

/// The engine mix of one emulated card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineMix {
    pub engines: u8,
    pub av1_engines: u8,
}

impl EmulatedConfig {
    /// The engine mix of every emulated card: `count + extra` uniform cards, then one per
    /// `[[emulated.card]]`.
    pub fn mixes(&self, extra: u32) -> Vec<EngineMix> {
        let uniform = EngineMix {
            engines: self.engines,
            av1_engines: self.av1_engines,
        };
        let mut v = vec![uniform; (self.count + extra) as usize];
        v.extend(self.card.iter().map(|c| EngineMix {
            engines: c.engines.unwrap_or(self.engines),
            av1_engines: c.av1_engines.unwrap_or(self.av1_engines),
        }));
        v
    }
}

impl Default for EmulatedConfig {
    fn default() -> Self {
        EmulatedConfig {
            count: 0,
            engines: 2,
            capacity_per_engine: vpu_ffi::VPU_LOAD_UNITS_PER_ENGINE,
            pixel_rate_per_engine: 1280 * 720 * 240,
            pace: false,
            max_sessions_per_engine: 16,
            max_frames_in_flight: 8,
            decode_engines: 1,
            scale_engines: 1,
            av1_engines: 0,
            av1_pixel_rate_per_engine: vpu_driver::emu::AV1_PIXEL_RATE,
            card: Vec::new(),
        }
    }
}

/// Which PCI functions bound to `vfio-pci` are tried as cards.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VfioConfig {
    /// Look for cards at all.
    pub enabled: bool,
    /// Try every function with the NVMe class code (0x010802); plain NVMe controllers are
    /// recognised by Identify and skipped.
    pub nvme_class: bool,
    /// Extra `"vvvv:dddd"` vendor:device IDs (hex) to try.
    pub ids: Vec<String>,
}

impl Default for VfioConfig {
    fn default() -> Self {
        VfioConfig {
            enabled: true,
            nvme_class: true,
            ids: Vec::new(),
        }
    }
}

impl VfioConfig {
    /// The parsed `ids`; validated by [`Config::validate`].
    pub fn parsed_ids(&self) -> Vec<(u16, u16)> {
        self.ids.iter().filter_map(|s| parse_pci_id(s)).collect()
    }
}

/// Command timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Per-command timeout on the card, in milliseconds (100–600000).
    pub command_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { command_ms: 5000 }
    }
}

impl Timeouts {
    pub fn command(&self) -> Duration {
        Duration::from_millis(self.command_ms)
    }
}

fn parse_pci_id(s: &str) -> Option<(u16, u16)> {
    let (v, d) = s.split_once(':')?;
    if v.len() != 4 || d.len() != 4 {
        return None;
    }
    Some((
        u16::from_str_radix(v, 16).ok()?,
        u16::from_str_radix(d, 16).ok()?,
    ))
}

impl Config {
    /// Loads the configuration. `None`: the default path, where a missing file means the
    /// defaults; an explicit path must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path.display().to_string()),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks value ranges that the types alone do not express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field, value: String, accepted| ConfigError::Invalid {
            path: origin.to_owned(),
            field,
            value,
            accepted,
        };
        if !(1..=64).contains(&self.threads) {
            return Err(invalid(
                "threads",
                self.threads.to_string(),
                "1 to 64 runtime worker threads",
            ));
        }
        let s = &self.scheduler;
        if s.realtime_reserve_percent > 100 {
            return Err(invalid(
                "scheduler.realtime_reserve_percent",
                s.realtime_reserve_percent.to_string(),
                "a percentage, 0 to 100",
            ));
        }
        if !(0.0..=1.0).contains(&s.measured_load_weight) {
            return Err(invalid(
                "scheduler.measured_load_weight",
                s.measured_load_weight.to_string(),
                "a weight from 0.0 (model only) to 1.0 (measurement only)",
            ));
        }
        if !(100..=60_000).contains(&s.load_sample_interval_ms) {
            return Err(invalid(
                "scheduler.load_sample_interval_ms",
                s.load_sample_interval_ms.to_string(),
                "milliseconds, 100 to 60000",
            ));
        }
        let e = &self.emulated;
        if e.count > 64 {
            return Err(invalid(
                "emulated.count",
                e.count.to_string(),
                "0 to 64 cards",
            ));
        }
        if !(1..=16).contains(&e.engines) {
            return Err(invalid(
                "emulated.engines",
                e.engines.to_string(),
                "1 to 16 engines",
            ));
        }
        if e.capacity_per_engine == 0 {
            return Err(invalid(
                "emulated.capacity_per_engine",
                "0".into(),
                "a positive number of load units",
            ));
        }
        if e.pixel_rate_per_engine == 0 {
            return Err(invalid(
                "emulated.pixel_rate_per_engine",
                "0".into(),
                "a positive number of luma samples per second",
            ));
        }
        if e.max_sessions_per_engine == 0 {
            return Err(invalid(
                "emulated.max_sessions_per_engine",
                "0".into(),
                "1 to 65535",
            ));
        }
        if e.decode_engines > 16 || e.scale_engines > 16 {
            return Err(invalid(
                "emulated.decode_engines/scale_engines",
                format!("{}/{}", e.decode_engines, e.scale_engines),
                "0 to 16 each",
            ));
        }
        if e.decode_engines > 0 && e.scale_engines == 0 {
            return Err(invalid(
                "emulated.scale_engines",
                "0".into(),
                "at least 1 when decode_engines is not 0 (a transcoding card needs a scaler)",
            ));
        }
        if e.av1_engines > e.engines {
            return Err(invalid(
                "emulated.av1_engines",
                e.av1_engines.to_string(),
                "0 to emulated.engines: AV1 engines are some of the card's engines",
            ));
        }
        if e.av1_pixel_rate_per_engine == 0 {
            return Err(invalid(
                "emulated.av1_pixel_rate_per_engine",
                "0".into(),
                "a positive number of luma samples per second",
            ));
        }
        if e.count as usize + e.card.len() > 64 {
            return Err(invalid(
                "emulated.card",
                format!("{} cards with emulated.count = {}", e.card.len(), e.count),
                "64 emulated cards in all",
            ));
        }
        for mix in e.mixes(0) {
            if !(1..=16).contains(&mix.engines) {
                return Err(invalid(
                    "emulated.card.engines",
                    mix.engines.to_string(),
                    "1 to 16 engines",
                ));
            }
            if mix.av1_engines > mix.engines {
                return Err(invalid(
                    "emulated.card.av1_engines",
                    mix.av1_engines.to_string(),
                    "0 to the card's engines",
                ));
            }
        }
        if !(1..=256).contains(&e.max_frames_in_flight) {
            return Err(invalid(
                "emulated.max_frames_in_flight",
                e.max_frames_in_flight.to_string(),
                "1 to 256",
            ));
        }
        if !(1..=16).contains(&self.transcode.pictures_in_flight) {
            return Err(invalid(
                "transcode.pictures_in_flight",
                self.transcode.pictures_in_flight.to_string(),
                "1 to 16 pictures",
            ));
        }
        for id in &self.vfio.ids {
            if parse_pci_id(id).is_none() {
                return Err(invalid(
                    "vfio.ids",
                    format!("{id:?}"),
                    "\"vvvv:dddd\": PCI vendor and device ID, four hex digits each",
                ));
            }
        }
        if !(100..=600_000).contains(&self.timeouts.command_ms) {
            return Err(invalid(
                "timeouts.command_ms",
                self.timeouts.command_ms.to_string(),
                "milliseconds, 100 to 600000",
            ));
        }
        // Checked even while disabled, so that turning the endpoint on later does not
        // reveal an old mistake.
        if self.metrics.address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.address",
                format!("{:?}", self.metrics.address),
                "an IP address and port, such as \"127.0.0.1:9478\" (loopback only) or \"[::]:9478\" (every interface); host names are not resolved",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
policy = "pack"
threads = 4
[scheduler]
realtime_reserve_percent = 10
measured_load_weight = 0.25
load_sample_interval_ms = 500
[quotas]
sessions_per_client = 4
load_per_client = 1500000
[emulated]
count = 2
engines = 4
capacity_per_engine = 1000
pixel_rate_per_engine = 1000000
pace = true
max_sessions_per_engine = 3
max_frames_in_flight = 4
[vfio]
enabled = true
nvme_class = false
ids = ["1ded:5650"]
[timeouts]
command_ms = 2000
[metrics]
enabled = true
address = "[::1]:9100"
[transcode]
pictures_in_flight = 2
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.policy, Policy::Pack);
        assert_eq!(c.threads, 4);
        assert_eq!(c.transcode.pictures_in_flight, 2);
        assert_eq!(c.quotas.sessions_per_client, 4);
        assert_eq!(c.emulated.engines, 4);
        assert_eq!(c.vfio.parsed_ids(), vec![(0x1ded, 0x5650)]);
        assert_eq!(c.timeouts.command(), Duration::from_secs(2));
        assert_eq!(
            c.metrics.socket_address(),
            Some("[::1]:9100".parse().unwrap())
        );
    }

    #[test]
    fn metrics_are_off_by_default_with_a_loopback_address() {
        let c = Config::default();
        assert_eq!(c.metrics.socket_address(), None);
        let on = Config::parse("[metrics]\nenabled = true\n", "t").unwrap();
        let addr = on.metrics.socket_address().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    #[test]
    fn bad_metrics_address_names_the_field() {
        for bad in ["localhost:9478", "9478", "127.0.0.1", "127.0.0.1:99999", ""] {
            let text = format!("[metrics]\nenabled = true\naddress = {bad:?}\n");
            let e = Config::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains("metrics.address"), "{e}");
            assert!(e.contains("IP address and port"), "{e}");
        }
        let e = Config::parse("[metrics]\nport = 9478\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port") && e.contains("address"), "{e}");
        let e = Config::parse("[metrics]\nenabled = \"yes\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("enabled"), "{e}");
    }

    #[test]
    fn unknown_fields_name_the_field() {
        let e = Config::parse("[quotas]\nsesions_per_client = 3\n", "t").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sesions_per_client"), "{msg}");
        assert!(msg.contains("sessions_per_client"), "{msg}");
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        let e = Config::parse("policy = \"random\"\n", "t").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("spread") && msg.contains("pack"), "{msg}");

        let e = Config::parse("[emulated]\nengines = 0\n", "t").unwrap_err();
        assert!(e.to_string().contains("emulated.engines"), "{e}");
        assert!(e.to_string().contains("1 to 16"), "{e}");

        let e = Config::parse("threads = 0\n", "t").unwrap_err();
        assert!(e.to_string().contains("threads = 0"), "{e}");
        assert!(e.to_string().contains("1 to 64"), "{e}");

        let e = Config::parse("[vfio]\nids = [\"zz:1\"]\n", "t").unwrap_err();
        assert!(e.to_string().contains("vfio.ids"), "{e}");

        let e = Config::parse("[scheduler]\nrealtime_reserve_percent = 101\n", "t").unwrap_err();
        assert!(e.to_string().contains("0 to 100"), "{e}");

        let e = Config::parse("[timeouts]\ncommand_ms = \"fast\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("command_ms"), "{e}");
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
    }
}
