//! The configuration parser (`daemon/src/config.rs`): arbitrary text, valid TOML or not.
//!
//! Parsing never panics; an accepted configuration satisfies every range `validate`
//! checks (re-validating it succeeds) and its derived values are usable; a rejected one
//! yields an error message that names where the configuration came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vpud::config::{Config, ConfigError};

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, ORIGIN) {
        Ok(config) => {
            assert!(config.validate(ORIGIN).is_ok());
            assert!(config.scheduler.realtime_reserve_percent <= 100);
            assert!((0.0..=1.0).contains(&config.scheduler.measured_load_weight));
            assert!((1..=16).contains(&config.emulated.engines));
            assert!(config.emulated.count <= 64);
            assert!((1..=256).contains(&config.emulated.max_frames_in_flight));
            assert_eq!(config.vfio.parsed_ids().len(), config.vfio.ids.len());
            assert!(!config.timeouts.command().is_zero());
            let _ = config.policy.as_str();
            // Parsing is a function of the text alone.
            assert_eq!(Config::parse(text, ORIGIN).ok(), Some(config));
        }
        Err(e) => {
            let msg = e.to_string();
            match &e {
                ConfigError::Parse { path, .. } | ConfigError::Invalid { path, .. } => {
                    assert_eq!(path, ORIGIN);
                    assert!(msg.contains(ORIGIN), "{msg}");
                }
                ConfigError::Read { .. } => panic!("parsing text read a file: {msg}"),
            }
            // One line for the journal.
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }
});
