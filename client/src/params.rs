//! Parameters of `Manager.CreateSession`, built in Rust and sent as `a{sv}`.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, Variant};

/// What a client asks `CreateSession` for. Optional fields are left out of the request so
/// the daemon applies its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// `"h264"`, or another codec a card supports.
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub framerate_num: u32,
    pub framerate_den: u32,
    /// `"i420"` or `"nv12"`; `None` leaves the daemon's default (`i420`).
    pub pixel_format: Option<String>,
    /// `"cbr"`, `"vbr"` or `"cqp"`; `None` leaves the default (`cbr`).
    pub rate_control: Option<String>,
    /// Target bit rate in bit/s.
    pub bitrate: Option<u32>,
    pub max_bitrate: Option<u32>,
    /// Quantiser for `cqp`.
    pub qp: Option<u32>,
    /// Frames between keyframes.
    pub gop: Option<u32>,
    /// `"realtime"` or `"batch"`.
    pub priority: Option<String>,
    /// Pins the session to one card.
    pub card: Option<OwnedObjectPath>,
    /// The reservation (`Manager.Reserve`) the session draws on. [`SessionParams::h264`]
    /// takes it from [`RESERVATION_ENV`] when that is set, as it is in a Kubernetes
    /// container given `vpud.io/encode-units`.
    pub reservation: Option<OwnedObjectPath>,
}

/// The environment variable naming the reservation a process's sessions draw on (set by
/// `vpu-device-plugin` in the containers it allocates units to).
pub const RESERVATION_ENV: &str = "VPUD_RESERVATION";

/// The reservation [`RESERVATION_ENV`] names, if it is set to an object path.
pub fn reservation_from_env() -> Option<OwnedObjectPath> {
    let v = std::env::var(RESERVATION_ENV).ok()?;
    OwnedObjectPath::try_from(v.trim().to_owned()).ok()
}

impl SessionParams {
    /// H.264 of `width`×`height` at `fps`/1, everything else the daemon's default.
    pub fn h264(width: u32, height: u32, fps: u32) -> SessionParams {
        SessionParams {
            codec: "h264".into(),
            width,
            height,
            framerate_num: fps,
            framerate_den: 1,
            pixel_format: None,
            rate_control: None,
            bitrate: None,
            max_bitrate: None,
            qp: None,
            gop: None,
            priority: None,
            card: None,
            reservation: reservation_from_env(),
        }
    }

    /// Bytes of one raw frame in the session's pixel format (both formats are 4:2:0 with
    /// tight strides).
    pub fn frame_size(&self) -> usize {
        let w = self.width as usize;
        let h = self.height as usize;
        w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
    }

    /// The `a{sv}` dictionary `CreateSession` takes.
    pub fn to_dict(&self) -> HashMap<&'static str, Variant<'static>> {
        let mut d: HashMap<&'static str, Variant<'static>> = HashMap::new();
        d.insert("codec", Variant::from(self.codec.clone()));
        d.insert("width", Variant::from(self.width));
        d.insert("height", Variant::from(self.height));
        d.insert("framerate_num", Variant::from(self.framerate_num));
        d.insert("framerate_den", Variant::from(self.framerate_den));
        if let Some(v) = &self.pixel_format {
            d.insert("pixel_format", Variant::from(v.clone()));
        }
        if let Some(v) = &self.rate_control {
            d.insert("rate_control", Variant::from(v.clone()));
        }
        let numbers = [
            ("bitrate", self.bitrate),
            ("max_bitrate", self.max_bitrate),
            ("qp", self.qp),
            ("gop", self.gop),
        ];
        for (key, value) in numbers {
            if let Some(v) = value {
                d.insert(key, Variant::from(v));
            }
        }
        if let Some(v) = &self.priority {
            d.insert("priority", Variant::from(v.clone()));
        }
        if let Some(card) = &self.card {
            d.insert("card", Variant::from(card.clone()));
        }
        if let Some(r) = &self.reservation {
            d.insert("reservation", Variant::from(r.clone()));
        }
        d
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dict_has_required_keys_and_only_set_options() {
        let mut p = SessionParams::h264(640, 360, 30);
        p.bitrate = Some(1_000_000);
        let d = p.to_dict();
        assert_eq!(d.get("width"), Some(&Variant::from(640u32)));
        assert_eq!(d.get("bitrate"), Some(&Variant::from(1_000_000u32)));
        assert!(!d.contains_key("gop"));
        assert!(!d.contains_key("card"));
        assert_eq!(p.frame_size(), 640 * 360 * 3 / 2);
    }

    #[test]
    fn odd_sizes_round_chroma_up() {
        let p = SessionParams::h264(3, 3, 30);
        assert_eq!(p.frame_size(), 9 + 2 * 4);
    }
}
