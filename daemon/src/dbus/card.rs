//! `org.vpud.Vpud1.Card` at `/org/vpud/Vpud1/card/N`, and `org.vpud.Vpud1.Emulator`
//! beside it on emulated cards.

use std::collections::HashMap;
use std::sync::Arc;

use vpu_driver::emu::{EmulatedCard, Fault};
use zbus::message::Header;
use zbus::{Connection, OwnedVariant};

use super::access::require_admin;
use super::error::VpudError;
use super::{counted, params};
use crate::service::state::{lock, CardEntry, Daemon};
use crate::service::{admin, health};

/// A card object.
#[derive(Debug)]
pub struct CardIface {
    pub daemon: Arc<Daemon>,
    pub card: Arc<CardEntry>,
}

#[zbus::interface(name = "org.vpud.Vpud1.Card", introspection_docs = false)]
impl CardIface {
    /// Accept no new sessions; existing ones finish.
    async fn drain(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            require_admin(conn, &header, "Card.Drain").await?;
            admin::drain(&self.daemon, self.card.index)
                .map_err(|e| VpudError::NotSupported(e.to_string()))
        })
        .await
    }

    /// Accept new sessions again.
    async fn resume(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            require_admin(conn, &header, "Card.Resume").await?;
            admin::resume(&self.daemon, self.card.index)
                .map_err(|e| VpudError::NotSupported(e.to_string()))
        })
        .await
    }

    /// Reset the card's controller and bring it up again.
    async fn reset(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            require_admin(conn, &header, "Card.Reset").await?;
            health::reset_card(&self.daemon, self.card.index, "reset requested over D-Bus")
                .await
                .map_err(|e| VpudError::CardFailed(format!("resetting {}: {e}", self.card.name)))
        })
        .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.card.name.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn backend(&self) -> String {
        self.card.backend.as_str().to_owned()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn pci_address(&self) -> String {
        self.card.pci_address.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn model(&self) -> String {
        self.card.card.identity().model.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn serial(&self) -> String {
        self.card.card.identity().serial.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn firmware_version(&self) -> String {
        self.card.card.identity().firmware.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn codecs(&self) -> Vec<String> {
        self.card
            .card
            .identity()
            .codecs
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn engines(&self) -> u32 {
        u32::from(self.card.card.identity().encode_engines)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn capacity(&self) -> u64 {
        lock(&self.daemon.sched).card_capacity(self.card.index)
    }

    /// H.264 luma samples per second the whole card sustains: what its `Capacity` stands
    /// for in the cost model.
    #[zbus(property(emits_changed_signal = "const"))]
    fn pixel_rate(&self) -> u64 {
        let id = self.card.card.identity();
        u64::from(id.encode_engines).saturating_mul(id.pixel_rate_per_engine)
    }

    #[zbus(property)]
    fn load(&self) -> u64 {
        lock(&self.daemon.sched).card_load(self.card.index)
    }

    #[zbus(property)]
    fn active_sessions(&self) -> u32 {
        lock(&self.daemon.sched).card_sessions(self.card.index)
    }

    #[zbus(property)]
    fn state(&self) -> String {
        self.daemon.card_state(self.card.index).as_str().to_owned()
    }

    #[zbus(property)]
    fn errors(&self) -> u64 {
        self.card.errors_total()
    }
}

/// The emulator controls of an emulated card.
#[derive(Debug)]
pub struct EmulatorIface {
    pub daemon: Arc<Daemon>,
    pub card: Arc<CardEntry>,
    pub emulator: Arc<EmulatedCard>,
}

#[zbus::interface(name = "org.vpud.Vpud1.Emulator", introspection_docs = false)]
impl EmulatorIface {
    /// Make the emulated card misbehave.
    async fn inject_fault(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        kind: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            require_admin(conn, &header, "Emulator.InjectFault").await?;
            let kinds = EmulatedCard::fault_kinds();
            if !kinds.contains(&kind.as_str()) {
                return Err(VpudError::InvalidArgument(format!(
                    "fault kind {kind:?} is unknown; accepted: {}",
                    kinds.join(", ")
                )));
            }
            let o = params::fault_options(&options)?;
            let fault = Fault::parse(&kind, o.engine, o.count, o.duration_ms)
                .map_err(|e| VpudError::InvalidArgument(e.to_string()))?;
            self.emulator
                .inject(fault)
                .map_err(|e| VpudError::InvalidArgument(e.to_string()))?;
            tracing::warn!(card = %self.card.name, kind, "fault injected over D-Bus");
            Ok(())
        })
        .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn fault_kinds(&self) -> Vec<String> {
        EmulatedCard::fault_kinds()
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    /// DMA mappings the host holds on the card now (queues, frame buffers, output
    /// buffers): flat over time when sessions come and go without leaking.
    #[zbus(property(emits_changed_signal = "false"))]
    fn dma_mappings(&self) -> u32 {
        u32::try_from(self.emulator.dma_mappings()).unwrap_or(u32::MAX)
    }
}
