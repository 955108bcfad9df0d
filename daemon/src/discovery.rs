//! Finding cards: emulated cards from the configuration and `--emulate N`, and PCI
//! functions bound to `vfio-pci` that have the NVMe class code or a configured ID. Each
//! device is reset and brought up clean ([`Card::open`]); functions that turn out to be
//! plain NVMe controllers are skipped.

use std::sync::Arc;

use vpu_driver::card::{Card, CardError, CardOptions};
use vpu_driver::emu::{EmuConfig, EmuError, EmulatedCard};
use vpu_driver::io::{DeviceInfo, DeviceIo, IoError};
use vpu_driver::vfio::{PciScanner, VfioDevice, VfioError, VfioOptions};

use crate::config::Config;

/// Errors finding or opening cards.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("creating emulated card {index} failed")]
    Emulated {
        index: u32,
        #[source]
        source: EmuError,
    },
    #[error("bringing up {device} failed")]
    Open {
        device: String,
        #[source]
        source: CardError,
    },
    #[error("scanning PCI functions failed")]
    Scan(#[source] VfioError),
}

/// A card that is up and identified.
#[derive(Debug)]
pub struct FoundCard {
    pub card: Arc<Card>,
    pub info: DeviceInfo,
    /// The emulated device behind `card`, for fault injection.
    pub emulator: Option<Arc<EmulatedCard>>,
}

/// Card options from the configuration.
pub fn card_options(config: &Config) -> CardOptions {
    CardOptions {
        command_timeout: config.timeouts.command(),
        ..CardOptions::default()
    }
}

/// Resets a device to its power-on state (where it has a reset) and brings it up.
async fn open(io: Arc<dyn DeviceIo>, opts: CardOptions) -> Result<Arc<Card>, CardError> {
    match io.reset() {
        Ok(()) => {}
        Err(IoError::ResetUnsupported { .. }) => {
            tracing::info!(device = %io.info().name,
                "device has no function reset; relying on the controller reset at bring-up");
        }
        Err(e) => {
            return Err(CardError::Io {
                device: io.info().name.clone(),
                source: e,
            })
        }
    }
    Card::open(io, opts).await
}

/// The emulated cards of `config` plus `extra` more, numbered from 0: the uniform ones,
/// then those of `[[emulated.card]]`.
pub async fn emulated(config: &Config, extra: u32) -> Result<Vec<FoundCard>, DiscoveryError> {
    let e = &config.emulated;
    let mut found = Vec::new();
    for (index, mix) in (0u32..).zip(e.mixes(extra)) {
        let emu_config = EmuConfig {
            engines: mix.engines,
            av1_engines: mix.av1_engines,
            av1_pixel_rate_per_engine: e.av1_pixel_rate_per_engine,
            capacity_per_engine: e.capacity_per_engine,
            pixel_rate_per_engine: e.pixel_rate_per_engine,
            pace: e.pace,
            max_sessions_per_engine: e.max_sessions_per_engine,
            max_frames_in_flight: e.max_frames_in_flight,
            decode_engines: e.decode_engines,
            scale_engines: e.scale_engines,
            ..EmuConfig::with_index(index)
        };
        let emu = EmulatedCard::new(emu_config)
            .map_err(|source| DiscoveryError::Emulated { index, source })?;
        let io: Arc<dyn DeviceIo> = emu.clone();
        let info = io.info().clone();
        let card = open(io, card_options(config))
            .await
            .map_err(|source| DiscoveryError::Open {
                device: info.name.clone(),
                source,
            })?;
        found.push(FoundCard {
            card,
            info,
            emulator: Some(emu),
        });
    }
    Ok(found)
}

/// PCI functions bound to `vfio-pci` that are VPU cards. Functions that cannot be opened
/// are logged and skipped, so that one broken card does not keep the others from service.
pub async fn vfio(config: &Config, scanner: &PciScanner) -> Result<Vec<FoundCard>, DiscoveryError> {
    if !config.vfio.enabled {
        return Ok(Vec::new());
    }
    let ids = config.vfio.parsed_ids();
    let functions = scanner.vfio_functions().map_err(DiscoveryError::Scan)?;
    let mut found = Vec::new();
    for f in functions {
        if !((config.vfio.nvme_class && f.is_nvme()) || f.matches_id(&ids)) {
            continue;
        }
        let device = match VfioDevice::open_function(scanner, &f, &VfioOptions::default()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(device = %f.address, error = %e, "cannot open function bound to vfio-pci; skipping");
                continue;
            }
        };
        let io: Arc<dyn DeviceIo> = device;
        let info = io.info().clone();
        match open(io, card_options(config)).await {
            Ok(card) => {
                tracing::info!(device = %f.address, model = %card.identity().model, "VPU card found");
                found.push(FoundCard {
                    card,
                    info,
                    emulator: None,
                });
            }
            Err(CardError::NotVpu { .. }) => {
                tracing::info!(device = %f.address, vendor = format_args!("{:04x}", f.vendor_id),
                    device_id = format_args!("{:04x}", f.device_id),
                    "NVMe controller without a VPU block (a plain NVMe drive); skipping");
            }
            Err(e) => {
                tracing::warn!(device = %f.address, error = %e, "bringing up function failed; skipping");
            }
        }
    }
    Ok(found)
}

/// Every card: VFIO functions first (they keep the low numbers), then emulated ones.
pub async fn discover(config: &Config, emulate: u32) -> Result<Vec<FoundCard>, DiscoveryError> {
    let mut cards = match vfio(config, &PciScanner::new()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "looking for VFIO cards failed; continuing without them");
            Vec::new()
        }
    };
    cards.extend(emulated(config, emulate).await?);
    Ok(cards)
}
