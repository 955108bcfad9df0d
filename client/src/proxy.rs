//! zbus proxies of vpud's D-Bus interfaces, exactly as `dbus-api.md` names them.
//!
//! Properties that change while a client watches (loads, counters, states) are read
//! uncached by [`crate::Client`], so a `vpuctl status` always shows the
//! daemon's current view.

use std::collections::HashMap;

use zbus::{proxy, OwnedFd, OwnedObjectPath, Variant};

/// The daemon's well-known bus name.
pub const BUS_NAME: &str = "org.vpud.Vpud1";
/// The root object: ObjectManager and Manager.
pub const ROOT_PATH: &str = "/org/vpud/Vpud1";
/// Object path prefix of cards (`…/card/N`).
pub const CARD_PATH_PREFIX: &str = "/org/vpud/Vpud1/card/";
/// Object path prefix of sessions (`…/session/N`).
pub const SESSION_PATH_PREFIX: &str = "/org/vpud/Vpud1/session/";
/// Object path prefix of reservations (`…/reservation/N`).
pub const RESERVATION_PATH_PREFIX: &str = "/org/vpud/Vpud1/reservation/";

/// `org.vpud.Vpud1.Manager` at `/org/vpud/Vpud1`.
#[proxy(
    interface = "org.vpud.Vpud1.Manager",
    default_service = "org.vpud.Vpud1",
    default_path = "/org/vpud/Vpud1"
)]
pub trait Manager {
    /// Creates an encode session; returns its object and its data channel.
    fn create_session(
        &self,
        params: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<(OwnedObjectPath, OwnedFd)>;

    /// Creates a transcode session: one compressed input, one rendition per `outputs`
    /// entry; returns its object and its data channel.
    fn create_transcode(
        &self,
        input: HashMap<&str, Variant<'_>>,
        outputs: Vec<HashMap<&str, Variant<'_>>>,
    ) -> zbus::Result<(OwnedObjectPath, OwnedFd)>;

    /// Sets load units (`units` t) of a card (`card` o, optional) aside for the caller;
    /// returns the reservation.
    fn reserve(&self, params: HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;

    /// Interface version of the daemon.
    #[zbus(property, name = "Version")]
    fn version(&self) -> zbus::Result<String>;

    /// Object paths of all cards.
    #[zbus(property, name = "Cards")]
    fn cards(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// Object paths of all open sessions.
    #[zbus(property, name = "Sessions")]
    fn sessions(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// Placement policy: `spread` or `pack`.
    #[zbus(property, name = "Policy")]
    fn policy(&self) -> zbus::Result<String>;

    /// Capacity of all cards together, in load units.
    #[zbus(property, name = "Capacity")]
    fn capacity(&self) -> zbus::Result<u64>;

    /// Load of all cards together, in load units.
    #[zbus(property, name = "Load")]
    fn load(&self) -> zbus::Result<u64>;
}

/// `org.vpud.Vpud1.Card` at `/org/vpud/Vpud1/card/N`.
#[proxy(
    interface = "org.vpud.Vpud1.Card",
    default_service = "org.vpud.Vpud1",
    assume_defaults = false
)]
pub trait Card {
    /// Stops placing new sessions on the card.
    fn drain(&self) -> zbus::Result<()>;
    /// Places sessions on the card again.
    fn resume(&self) -> zbus::Result<()>;
    /// Resets the card.
    fn reset(&self) -> zbus::Result<()>;

    #[zbus(property, name = "Name")]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Backend")]
    fn backend(&self) -> zbus::Result<String>;
    #[zbus(property, name = "PciAddress")]
    fn pci_address(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Model")]
    fn model(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Serial")]
    fn serial(&self) -> zbus::Result<String>;
    #[zbus(property, name = "FirmwareVersion")]
    fn firmware_version(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Codecs")]
    fn codecs(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property, name = "Engines")]
    fn engines(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "Capacity")]
    fn capacity(&self) -> zbus::Result<u64>;
    /// H.264 luma samples per second the whole card sustains (what `Capacity` stands for).
    #[zbus(property, name = "PixelRate")]
    fn pixel_rate(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "Load")]
    fn load(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "ActiveSessions")]
    fn active_sessions(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "State")]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Errors")]
    fn errors(&self) -> zbus::Result<u64>;
}

/// `org.vpud.Vpud1.Emulator` beside `Card` on emulated cards.
#[proxy(
    interface = "org.vpud.Vpud1.Emulator",
    default_service = "org.vpud.Vpud1",
    assume_defaults = false
)]
pub trait Emulator {
    /// Injects a hardware fault into the emulated card.
    fn inject_fault(&self, kind: &str, options: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;

    /// The fault kinds `InjectFault` accepts.
    #[zbus(property, name = "FaultKinds")]
    fn fault_kinds(&self) -> zbus::Result<Vec<String>>;

    /// DMA mappings the host holds on the card now.
    #[zbus(property, name = "DmaMappings")]
    fn dma_mappings(&self) -> zbus::Result<u32>;
}

/// `org.vpud.Vpud1.Reservation` at `/org/vpud/Vpud1/reservation/N`.
#[proxy(
    interface = "org.vpud.Vpud1.Reservation",
    default_service = "org.vpud.Vpud1",
    assume_defaults = false
)]
pub trait Reservation {
    /// Ends the reservation (its owner only).
    fn release(&self) -> zbus::Result<()>;

    /// Load units set aside.
    #[zbus(property, name = "Units")]
    fn units(&self) -> zbus::Result<u64>;
    /// Load units its sessions take now.
    #[zbus(property, name = "Used")]
    fn used(&self) -> zbus::Result<u64>;
    /// The card the units are on.
    #[zbus(property, name = "Card")]
    fn card(&self) -> zbus::Result<OwnedObjectPath>;
    /// Unique bus name of its owner.
    #[zbus(property, name = "Owner")]
    fn owner(&self) -> zbus::Result<String>;
}

/// `org.vpud.Vpud1.Session` at `/org/vpud/Vpud1/session/N`.
#[proxy(
    interface = "org.vpud.Vpud1.Session",
    default_service = "org.vpud.Vpud1",
    assume_defaults = false
)]
pub trait Session {
    /// Changes bitrate or frame rate of a running session.
    fn reconfigure(&self, changes: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Makes the next frame a keyframe.
    fn request_keyframe(&self) -> zbus::Result<()>;
    /// Ends the session.
    fn close(&self) -> zbus::Result<()>;

    /// The session ended.
    #[zbus(signal)]
    fn closed(&self, reason: String) -> zbus::Result<()>;
    /// The session moved to another card.
    #[zbus(signal)]
    fn migrated(&self, from_card: OwnedObjectPath, to_card: OwnedObjectPath) -> zbus::Result<()>;

    #[zbus(property, name = "Owner")]
    fn owner(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Card")]
    fn card(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property, name = "Codec")]
    fn codec(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Width")]
    fn width(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "Height")]
    fn height(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "Bitrate")]
    fn bitrate(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "State")]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "FramesIn")]
    fn frames_in(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "FramesOut")]
    fn frames_out(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "BytesOut")]
    fn bytes_out(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "Keyframes")]
    fn keyframes(&self) -> zbus::Result<u64>;
    /// A transcode session's renditions (`width` u, `height` u, `bitrate` u, `gop` u each);
    /// empty for an encode session.
    #[zbus(property, name = "Renditions")]
    fn renditions(&self) -> zbus::Result<Vec<HashMap<String, zbus::OwnedVariant>>>;
}
