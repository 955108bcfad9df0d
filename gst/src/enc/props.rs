//! The element's properties, named as `x264enc`, `openh264enc` and `nvh264enc` name
//! theirs, and what they become in a vpud session request.

use gst::glib;
use gst::prelude::*;
use vpud_client::SessionParams;

/// Default target bit rate, kbit/s (`x264enc`'s default).
pub const DEFAULT_BITRATE: u32 = 2048;
/// Default quantiser for constant-QP (`x264enc`'s `quantizer`).
pub const DEFAULT_QP: u32 = 21;
/// Default time, ms, vpud may go without answering while frames are in flight before
/// the element gives up on it: longer than a card reset and a session's move to
/// another card, which the element rides out.
pub const DEFAULT_TIMEOUT_MS: u32 = 20_000;

/// How the card controls the bit rate (the session's `rate_control`).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuRateControl")]
pub enum RateControl {
    /// A constant bit rate of `bitrate`.
    #[default]
    #[enum_value(name = "Constant bit rate", nick = "cbr")]
    Cbr = 0,
    /// A variable bit rate around `bitrate`.
    #[enum_value(name = "Variable bit rate", nick = "vbr")]
    Vbr = 1,
    /// A constant quantiser of `qp`; `bitrate` is ignored.
    #[enum_value(name = "Constant quantiser", nick = "cqp")]
    Cqp = 2,
}

impl RateControl {
    fn as_str(self) -> &'static str {
        match self {
            RateControl::Cbr => "cbr",
            RateControl::Vbr => "vbr",
            RateControl::Cqp => "cqp",
        }
    }
}

/// Property values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// kbit/s.
    pub bitrate: u32,
    pub rate_control: RateControl,
    pub qp: u32,
    /// Frames between keyframes; 0 leaves the daemon's default.
    pub gop_size: u32,
    /// Card index or object path; empty for any card.
    pub card: String,
    /// D-Bus address of vpud's bus; empty for `VPUD_BUS_ADDRESS`, else the system bus.
    pub bus_address: String,
    /// How long, ms, vpud may leave frames in flight (or the end of stream) unanswered;
    /// 0 waits for ever.
    pub timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bitrate: DEFAULT_BITRATE,
            rate_control: RateControl::Cbr,
            qp: DEFAULT_QP,
            gop_size: 0,
            card: String::new(),
            bus_address: String::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

impl Settings {
    /// The session request for frames of `width`×`height` at `fps_n`/`fps_d` in
    /// `pixel_format` (`"i420"`, `"nv12"`); `card` is the resolved card, if one was named.
    pub fn session_params(
        &self,
        width: u32,
        height: u32,
        (fps_n, fps_d): (u32, u32),
        pixel_format: &str,
        card: Option<zbus::OwnedObjectPath>,
    ) -> SessionParams {
        let mut p = SessionParams::h264(width, height, fps_n);
        p.framerate_den = fps_d;
        p.pixel_format = Some(pixel_format.to_string());
        p.rate_control = Some(self.rate_control.as_str().to_string());
        if self.rate_control == RateControl::Cqp {
            p.qp = Some(self.qp);
        } else {
            p.bitrate = Some(self.bitrate.saturating_mul(1000));
        }
        if self.gop_size > 0 {
            p.gop = Some(self.gop_size);
        }
        p.card = card;
        p
    }
}

/// The property specifications.
pub fn specs() -> Vec<glib::ParamSpec> {
    let d = Settings::default();
    vec![
        glib::ParamSpecUInt::builder("bitrate")
            .nick("Bitrate")
            .blurb(
                "Target bit rate in kbit/s (changeable while playing: the session is reconfigured)",
            )
            .minimum(1)
            .maximum(2_000_000)
            .default_value(d.bitrate)
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder_with_default("rate-control", d.rate_control)
            .nick("Rate control")
            .blurb("Rate control mode")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("qp")
            .nick("Quantiser")
            .blurb("Quantiser for rate-control=cqp")
            .maximum(51)
            .default_value(d.qp)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("gop-size")
            .nick("GOP size")
            .blurb("Frames between keyframes (0: the daemon's default)")
            .maximum(u32::from(u16::MAX))
            .default_value(d.gop_size)
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("card")
            .nick("Card")
            .blurb("Card to encode on: an index from `vpuctl cards` or an object path (empty: any)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("bus-address")
            .nick("Bus address")
            .blurb("D-Bus address of vpud's bus (empty: VPUD_BUS_ADDRESS, else the system bus)")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("timeout")
            .nick("Timeout")
            .blurb(
                "Milliseconds vpud may leave frames unanswered before the element gives up with an error (0: wait for ever)",
            )
            .default_value(d.timeout_ms)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt64::builder("frames-copied")
            .nick("Frames copied")
            .blurb(
                "Frames copied into a slot because they came from memory the session does not know",
            )
            .read_only()
            .build(),
        glib::ParamSpecUInt64::builder("frames-by-reference")
            .nick("Frames by reference")
            .blurb("Frames sent to the card in place, from the element's buffer pool")
            .read_only()
            .build(),
    ]
}

/// Sets one writable property; `true` when `bitrate` changed.
pub fn set(settings: &mut Settings, value: &glib::Value, pspec: &glib::ParamSpec) -> bool {
    match pspec.name() {
        "bitrate" => {
            let v = value.get().unwrap_or(settings.bitrate);
            let changed = v != settings.bitrate;
            settings.bitrate = v;
            return changed;
        }
        "rate-control" => settings.rate_control = value.get().unwrap_or_default(),
        "qp" => settings.qp = value.get().unwrap_or(settings.qp),
        "gop-size" => settings.gop_size = value.get().unwrap_or(settings.gop_size),
        "timeout" => settings.timeout_ms = value.get().unwrap_or(settings.timeout_ms),
        "card" => {
            settings.card = value
                .get::<Option<String>>()
                .ok()
                .flatten()
                .unwrap_or_default()
        }
        "bus-address" => {
            settings.bus_address = value
                .get::<Option<String>>()
                .ok()
                .flatten()
                .unwrap_or_default()
        }
        _ => {}
    }
    false
}

/// Reads one property of the settings (the statistics are the element's).
pub fn get(settings: &Settings, pspec: &glib::ParamSpec) -> Option<glib::Value> {
    Some(match pspec.name() {
        "bitrate" => settings.bitrate.to_value(),
        "rate-control" => settings.rate_control.to_value(),
        "qp" => settings.qp.to_value(),
        "gop-size" => settings.gop_size.to_value(),
        "timeout" => settings.timeout_ms.to_value(),
        "card" => settings.card.to_value(),
        "bus-address" => settings.bus_address.to_value(),
        _ => return None,
    })
}
