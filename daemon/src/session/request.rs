//! What a client asks of a session, once validated: the one domain form of a
//! `CreateSession` or `Reconfigure` request. The D-Bus layer parses `a{sv}` into these
//! (`dbus::params`), checking every key, type and range there and only there; the
//! scheduler's [`Demand`] and the card's [`SessionConfig`] are derived from a
//! [`SessionRequest`], never parsed again. Codec, pixel format and rate control are the
//! driver's enums, whose names (`Codec::as_str`, …) are the API's spelling.

use vpu_driver::card::{Codec, PixelFormat, RateControl, SessionConfig};

use crate::scheduler::{Demand, Priority};

/// A new encode session's parameters, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRequest {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps_num: u32,
    pub fps_den: u32,
    pub pixel_format: PixelFormat,
    pub rate_control: RateControl,
    /// Bits per second; 0 with constant QP.
    pub bitrate: u32,
    /// 0: the same as `bitrate`.
    pub max_bitrate: u32,
    pub qp: u8,
    /// Frames between keyframes (0: only the first).
    pub gop: u32,
    pub priority: Priority,
    /// A card's object path, when the client pins the session to it.
    pub card: Option<String>,
    /// The number of the reservation (`Manager.Reserve`) the session draws on.
    pub reservation: Option<u64>,
}

impl SessionRequest {
    /// What the session asks of a card, for admission and placement.
    pub fn demand(&self) -> Demand {
        Demand {
            codec: self.codec,
            width: self.width,
            height: self.height,
            fps_num: self.fps_num,
            fps_den: self.fps_den,
            priority: self.priority,
            reservation: self.reservation,
        }
    }

    /// The card session's configuration (whether a card can take it is the card's check).
    pub fn card_config(&self) -> SessionConfig {
        SessionConfig {
            codec: self.codec,
            width: self.width,
            height: self.height,
            fps_num: self.fps_num,
            fps_den: self.fps_den,
            pixel_format: self.pixel_format,
            rate_control: self.rate_control,
            bitrate: self.bitrate,
            max_bitrate: self.max_bitrate,
            qp: self.qp,
            gop: self.gop,
            low_latency: false,
            engine_hint: None,
        }
    }
}

/// A validated `Session.Reconfigure`: at least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconfigureRequest {
    pub bitrate: Option<u32>,
    /// Numerator and denominator.
    pub framerate: Option<(u32, u32)>,
}
