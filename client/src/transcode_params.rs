//! Parameters of `Manager.CreateTranscode`: one compressed input and a ladder of
//! renditions, built in Rust and sent as `a{sv}` and `aa{sv}`.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, Variant};

use super::params::reservation_from_env;

/// The compressed input of a transcode session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeInput {
    /// The input's codec: `"h264"` (Annex-B access units).
    pub codec: String,
    /// The input's picture size, if known (checked against the card's decoder).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The input's frame rate, if known; the cost model and the encoders assume 30/1
    /// otherwise.
    pub framerate_num: Option<u32>,
    pub framerate_den: Option<u32>,
    /// `"realtime"` or `"batch"`.
    pub priority: Option<String>,
    /// Pins the whole ladder to one card.
    pub card: Option<OwnedObjectPath>,
    /// The reservation the ladder draws on ([`crate::RESERVATION_ENV`] by default).
    pub reservation: Option<OwnedObjectPath>,
}

impl TranscodeInput {
    /// H.264 input, everything else unknown or the daemon's default.
    pub fn h264() -> TranscodeInput {
        TranscodeInput {
            codec: "h264".into(),
            width: None,
            height: None,
            framerate_num: None,
            framerate_den: None,
            priority: None,
            card: None,
            reservation: reservation_from_env(),
        }
    }

    /// The `a{sv}` dictionary `CreateTranscode` takes as `input`.
    pub fn to_dict(&self) -> HashMap<&'static str, Variant<'static>> {
        let mut d: HashMap<&'static str, Variant<'static>> = HashMap::new();
        d.insert("codec", Variant::from(self.codec.clone()));
        let numbers = [
            ("width", self.width),
            ("height", self.height),
            ("framerate_num", self.framerate_num),
            ("framerate_den", self.framerate_den),
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

/// One rendition of the ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionParams {
    pub width: u32,
    pub height: u32,
    /// Target bit/s.
    pub bitrate: Option<u32>,
    /// `"cbr"`, `"vbr"` or `"cqp"`.
    pub rate_control: Option<String>,
    pub max_bitrate: Option<u32>,
    /// Quantiser for `cqp`.
    pub qp: Option<u32>,
    /// Input frames between keyframes; renditions with the same `gop` have their
    /// keyframes on the same input frames.
    pub gop: Option<u32>,
    /// The scaling filter: `"bilinear"` (default), `"bicubic"` or `"lanczos3"`.
    pub scale: Option<String>,
}

impl RenditionParams {
    /// A rendition of `width` × `height` at `bitrate` bit/s, the rest the daemon's default.
    pub fn new(width: u32, height: u32, bitrate: u32) -> RenditionParams {
        RenditionParams {
            width,
            height,
            bitrate: Some(bitrate),
            rate_control: None,
            max_bitrate: None,
            qp: None,
            gop: None,
            scale: None,
        }
    }

    /// The `a{sv}` dictionary of this rendition in `CreateTranscode`'s `outputs`.
    pub fn to_dict(&self) -> HashMap<&'static str, Variant<'static>> {
        let mut d: HashMap<&'static str, Variant<'static>> = HashMap::new();
        d.insert("width", Variant::from(self.width));
        d.insert("height", Variant::from(self.height));
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
        if let Some(v) = &self.rate_control {
            d.insert("rate_control", Variant::from(v.clone()));
        }
        if let Some(v) = &self.scale {
            d.insert("scale", Variant::from(v.clone()));
        }
        d
    }
}

/// What a client asks `CreateTranscode` for: the input and the ladder (rendition `i` is
/// `outputs[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeParams {
    pub input: TranscodeInput,
    pub outputs: Vec<RenditionParams>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dicts_carry_what_is_set_and_nothing_else() {
        let mut input = TranscodeInput::h264();
        input.reservation = None;
        input.width = Some(1920);
        let d = input.to_dict();
        assert_eq!(d.get("codec"), Some(&Variant::from("h264".to_string())));
        assert_eq!(d.get("width"), Some(&Variant::from(1920u32)));
        assert!(!d.contains_key("height") && !d.contains_key("reservation"));
        let mut r = RenditionParams::new(640, 360, 800_000);
        r.gop = Some(60);
        let d = r.to_dict();
        assert_eq!(d.get("gop"), Some(&Variant::from(60u32)));
        assert_eq!(d.get("bitrate"), Some(&Variant::from(800_000u32)));
        assert!(!d.contains_key("scale"));
    }
}
