//! Validation of the `a{sv}` arguments of `CreateSession`, `Reserve`, `Reconfigure` and
//! `InjectFault` (`CreateTranscode`'s are in `transcode_params`): unknown keys, wrong types and out-of-range values are rejected with a
//! message naming the key and what is accepted.

use std::collections::HashMap;

use vpu_driver::card::{Codec, PixelFormat, RateControl};
use zbus::{OwnedVariant, Variant};

use crate::scheduler::Priority;
use crate::service::reservation;
use crate::session::request::{ReconfigureRequest, SessionRequest};

/// A rejected argument: the message for `org.vpud.Vpud1.Error.InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

const SESSION_KEYS: &str = "codec, width, height, framerate_num, framerate_den, pixel_format, \
    rate_control, bitrate, max_bitrate, qp, gop, priority, card, reservation";

pub(super) type Params = HashMap<String, OwnedVariant>;

fn type_name(v: &Variant<'_>) -> String {
    v.value_signature().to_string()
}

fn unwrap_variant<'a>(v: &'a Variant<'a>) -> &'a Variant<'a> {
    match v {
        Variant::Variant(inner) => inner,
        other => other,
    }
}

pub(super) fn get_u32(p: &Params, key: &str) -> Result<Option<u32>, ParamError> {
    match p.get(key).map(|v| unwrap_variant(v)) {
        None => Ok(None),
        Some(Variant::U32(x)) => Ok(Some(*x)),
        Some(other) => Err(ParamError(format!(
            "{key} must be of type u (uint32), got {}",
            type_name(other)
        ))),
    }
}

pub(super) fn get_str(p: &Params, key: &str) -> Result<Option<String>, ParamError> {
    match p.get(key).map(|v| unwrap_variant(v)) {
        None => Ok(None),
        Some(Variant::Str(s)) => Ok(Some(s.as_str().to_owned())),
        Some(other) => Err(ParamError(format!(
            "{key} must be of type s (string), got {}",
            type_name(other)
        ))),
    }
}

/// The value of `key` among `accepted` (named by `name`); absent: `default`. Names are
/// matched exactly, as the API spells them.
pub(super) fn one_of<T: Copy>(
    key: &str,
    value: Option<String>,
    accepted: &[T],
    name: fn(T) -> &'static str,
    default: T,
) -> Result<T, ParamError> {
    let Some(value) = value else {
        return Ok(default);
    };
    accepted
        .iter()
        .copied()
        .find(|&v| name(v) == value)
        .ok_or_else(|| {
            let names: Vec<&str> = accepted.iter().map(|&v| name(v)).collect();
            ParamError(format!(
                "{key} = {value:?} is not accepted; use one of {}",
                names.join(", ")
            ))
        })
}

pub(super) fn range(
    key: &str,
    value: u32,
    lo: u32,
    hi: u32,
    what: &str,
) -> Result<u32, ParamError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ParamError(format!(
            "{key} = {value} is out of range; accepted: {lo} to {hi} {what}"
        )))
    }
}

pub(super) fn reject_unknown(p: &Params, known: &[&str], listing: &str) -> Result<(), ParamError> {
    let mut unknown: Vec<&str> = p
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    unknown.sort_unstable();
    match unknown.first() {
        Some(k) => Err(ParamError(format!(
            "unknown key {k:?}; accepted keys: {listing}"
        ))),
        None => Ok(()),
    }
}

/// Validates `CreateSession`'s parameters.
pub fn session_request(p: &Params) -> Result<SessionRequest, ParamError> {
    const KNOWN: &[&str] = &[
        "codec",
        "width",
        "height",
        "framerate_num",
        "framerate_den",
        "pixel_format",
        "rate_control",
        "bitrate",
        "max_bitrate",
        "qp",
        "gop",
        "priority",
        "card",
        "reservation",
    ];
    reject_unknown(p, KNOWN, SESSION_KEYS)?;
    let codec = one_of(
        "codec",
        get_str(p, "codec")?,
        Codec::ALL,
        Codec::as_str,
        Codec::H264,
    )?;
    let width = get_u32(p, "width")?
        .ok_or_else(|| ParamError("width is required (u, luma samples)".into()))?;
    let height = get_u32(p, "height")?
        .ok_or_else(|| ParamError("height is required (u, luma samples)".into()))?;
    for (key, v) in [("width", width), ("height", height)] {
        range(key, v, 16, 16384, "luma samples")?;
        if v % 2 != 0 {
            return Err(ParamError(format!(
                "{key} = {v} must be even (chroma is subsampled 2×2)"
            )));
        }
    }
    let fps_num = get_u32(p, "framerate_num")?
        .ok_or_else(|| ParamError("framerate_num is required (u)".into()))?;
    let fps_num = range("framerate_num", fps_num, 1, 240_000, "")?;
    let fps_den = range(
        "framerate_den",
        get_u32(p, "framerate_den")?.unwrap_or(1),
        1,
        240_000,
        "",
    )?;
    if u64::from(fps_num) > 240 * u64::from(fps_den) {
        return Err(ParamError(format!(
            "framerate {fps_num}/{fps_den} is out of range; accepted: up to 240 frames per second"
        )));
    }
    let pixel_format = one_of(
        "pixel_format",
        get_str(p, "pixel_format")?,
        PixelFormat::ALL,
        PixelFormat::as_str,
        PixelFormat::I420,
    )?;
    let rate_control = one_of(
        "rate_control",
        get_str(p, "rate_control")?,
        RateControl::ALL,
        RateControl::as_str,
        RateControl::Cbr,
    )?;
    let bitrate = get_u32(p, "bitrate")?;
    let bitrate = match (rate_control, bitrate) {
        (RateControl::Cqp, b) => b.unwrap_or(0),
        (_, Some(b)) => range("bitrate", b, 10_000, 800_000_000, "bit/s")?,
        (_, None) => 4_000_000,
    };
    let max_bitrate = get_u32(p, "max_bitrate")?.unwrap_or(0);
    if max_bitrate != 0 && max_bitrate < bitrate {
        return Err(ParamError(format!(
            "max_bitrate = {max_bitrate} is below bitrate = {bitrate}; accepted: 0 (same as bitrate) or at least bitrate"
        )));
    }
    let qp = range("qp", get_u32(p, "qp")?.unwrap_or(26), 0, 51, "")? as u8;
    let gop = range(
        "gop",
        get_u32(p, "gop")?.unwrap_or(60),
        0,
        100_000,
        "frames",
    )?;
    let priority = one_of(
        "priority",
        get_str(p, "priority")?,
        Priority::ALL,
        Priority::as_str,
        Priority::Realtime,
    )?;
    let card = get_path(p, "card", "a card's object path")?;
    let reservation = match get_path(p, "reservation", "a reservation's object path")? {
        None => None,
        Some(path) => Some(reservation::number(&path).ok_or_else(|| {
            ParamError(format!(
                "reservation = {path:?} is not a reservation's path; accepted: {}N, as Manager.Reserve returns",
                reservation::PATH_PREFIX
            ))
        })?),
    };
    Ok(SessionRequest {
        codec,
        width,
        height,
        fps_num,
        fps_den,
        pixel_format,
        rate_control,
        bitrate,
        max_bitrate,
        qp,
        gop,
        priority,
        card,
        reservation,
    })
}

pub(super) fn get_path(p: &Params, key: &str, what: &str) -> Result<Option<String>, ParamError> {
    match p.get(key).map(|v| unwrap_variant(v)) {
        None => Ok(None),
        Some(Variant::ObjectPath(o)) => Ok(Some(o.as_str().to_owned())),
        Some(other) => Err(ParamError(format!(
            "{key} must be of type o ({what}), got {}",
            type_name(other)
        ))),
    }
}

/// A validated `Reserve` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Load units to set aside.
    pub units: u64,
    /// The object path of the card to set them aside on; the policy chooses when `None`.
    pub card: Option<String>,
}

/// Validates `Manager.Reserve`'s parameters (`units` t, `card` o).
pub fn reserve_request(p: &Params) -> Result<ReserveRequest, ParamError> {
    reject_unknown(p, &["units", "card"], "units, card")?;
    let units = match p.get("units").map(|v| unwrap_variant(v)) {
        None => {
            return Err(ParamError(
                "units is required (t, load units to set aside)".into(),
            ))
        }
        Some(Variant::U64(0)) => {
            return Err(ParamError(
                "units = 0 is out of range; accepted: 1 or more load units".into(),
            ))
        }
        Some(Variant::U64(u)) => *u,
        Some(other) => {
            return Err(ParamError(format!(
                "units must be of type t (uint64), got {}",
                type_name(other)
            )))
        }
    };
    let card = get_path(p, "card", "a card's object path")?;
    Ok(ReserveRequest { units, card })
}

/// Validates `Session.Reconfigure`'s parameters (`bitrate` u, `framerate_num` u,
/// `framerate_den` u).
pub fn reconfigure_request(p: &Params) -> Result<ReconfigureRequest, ParamError> {
    reject_unknown(
        p,
        &["bitrate", "framerate_num", "framerate_den"],
        "bitrate, framerate_num, framerate_den",
    )?;
    let bitrate = get_u32(p, "bitrate")?
        .map(|b| range("bitrate", b, 10_000, 800_000_000, "bit/s"))
        .transpose()?;
    let num = get_u32(p, "framerate_num")?;
    let den = get_u32(p, "framerate_den")?;
    let framerate = match (num, den) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ParamError(
                "framerate_den without framerate_num; give framerate_num (and optionally framerate_den)".into(),
            ))
        }
        (Some(n), d) => {
            let n = range("framerate_num", n, 1, 240_000, "")?;
            let d = range("framerate_den", d.unwrap_or(1), 1, 240_000, "")?;
            if u64::from(n) > 240 * u64::from(d) {
                return Err(ParamError(format!(
                    "framerate {n}/{d} is out of range; accepted: up to 240 frames per second"
                )));
            }
            Some((n, d))
        }
    };
    if bitrate.is_none() && framerate.is_none() {
        return Err(ParamError(
            "nothing to change; accepted keys: bitrate, framerate_num, framerate_den".into(),
        ));
    }
    Ok(ReconfigureRequest { bitrate, framerate })
}

/// Validated `InjectFault` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultOptions {
    pub engine: Option<u8>,
    pub count: Option<u32>,
    pub duration_ms: Option<u32>,
}

/// Validates `Emulator.InjectFault`'s options (`engine` u, `count` u, `duration_ms` u).
pub fn fault_options(p: &Params) -> Result<FaultOptions, ParamError> {
    reject_unknown(
        p,
        &["engine", "count", "duration_ms"],
        "engine, count, duration_ms",
    )?;
    let engine = get_u32(p, "engine")?
        .map(|e| range("engine", e, 0, 255, "(an engine index)").map(|e| e as u8))
        .transpose()?;
    let count = get_u32(p, "count")?
        .map(|c| range("count", c, 1, 1_000_000, ""))
        .transpose()?;
    let duration_ms = get_u32(p, "duration_ms")?
        .map(|d| range("duration_ms", d, 1, 3_600_000, "milliseconds"))
        .transpose()?;
    Ok(FaultOptions {
        engine,
        count,
        duration_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(entries: Vec<(&str, Variant<'static>)>) -> Params {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), OwnedVariant::try_from(v).unwrap()))
            .collect()
    }

    fn base() -> Vec<(&'static str, Variant<'static>)> {
        vec![
            ("codec", Variant::from("h264")),
            ("width", Variant::U32(1280)),
            ("height", Variant::U32(720)),
            ("framerate_num", Variant::U32(30)),
        ]
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let r = session_request(&params(base())).unwrap();
        assert_eq!(r.fps_den, 1);
        assert_eq!(r.codec, Codec::H264);
        assert_eq!(r.pixel_format, PixelFormat::I420);
        assert_eq!(r.rate_control, RateControl::Cbr);
        assert_eq!(r.priority, Priority::Realtime);
        assert_eq!(r.bitrate, 4_000_000);
        assert_eq!(r.card, None);
    }

    #[test]
    fn unknown_keys_wrong_types_and_ranges_are_named() {
        let mut p = base();
        p.push(("colour", Variant::from("red")));
        let e = session_request(&params(p)).unwrap_err();
        assert!(
            e.0.contains("\"colour\"") && e.0.contains("framerate_num"),
            "{e}"
        );

        let mut p = base();
        p[1] = ("width", Variant::from("wide"));
        let e = session_request(&params(p)).unwrap_err();
        assert!(e.0.contains("width must be of type u"), "{e}");

        let mut p = base();
        p[1] = ("width", Variant::U32(1281));
        assert!(session_request(&params(p)).unwrap_err().0.contains("even"));

        let mut p = base();
        p.push(("qp", Variant::U32(52)));
        assert!(session_request(&params(p))
            .unwrap_err()
            .0
            .contains("0 to 51"));

        let mut p = base();
        p.push(("priority", Variant::from("urgent")));
        let e = session_request(&params(p)).unwrap_err();
        assert!(e.0.contains("realtime, batch"), "{e}");

        let mut p = base();
        p.push(("codec", Variant::from("mpeg2")));
        let p = params(p);
        assert!(session_request(&p)
            .unwrap_err()
            .0
            .contains("h264, hevc, av1"));

        assert!(session_request(&params(vec![])).is_err());
    }

    #[test]
    fn reconfigure_and_fault_options() {
        let r = reconfigure_request(&params(vec![("bitrate", Variant::U32(2_000_000))])).unwrap();
        assert_eq!(r.bitrate, Some(2_000_000));
        assert!(reconfigure_request(&params(vec![])).is_err());
        assert!(reconfigure_request(&params(vec![("gop", Variant::U32(1))])).is_err());
        let f = fault_options(&params(vec![("engine", Variant::U32(1))])).unwrap();
        assert_eq!(f.engine, Some(1));
        assert!(fault_options(&params(vec![("engine", Variant::U32(300))])).is_err());
    }

    #[test]
    fn reserve_and_reservation_keys() {
        let r = reserve_request(&params(vec![("units", Variant::U64(500))])).unwrap();
        assert_eq!((r.units, r.card), (500, None));
        for bad in [
            vec![],
            vec![("units", Variant::U64(0))],
            vec![("units", Variant::U32(5))],
            vec![("units", Variant::U64(5)), ("card", Variant::from("0"))],
            vec![("units", Variant::U64(5)), ("engine", Variant::U32(0))],
        ] {
            assert!(reserve_request(&params(bad)).is_err());
        }
        let mut p = base();
        p.push((
            "reservation",
            Variant::from("/org/vpud/Vpud1/reservation/0"),
        ));
        let e = session_request(&params(p)).unwrap_err();
        assert!(e.0.contains("reservation must be of type o"), "{e}");
        let mut p = base();
        let card = zbus::ObjectPath::from_static_str_unchecked("/org/vpud/Vpud1/card/0");
        p.push(("reservation", Variant::ObjectPath(card)));
        let e = session_request(&params(p)).unwrap_err();
        assert!(e.0.contains("/org/vpud/Vpud1/reservation/N"), "{e}");
        let mut p = base();
        let path = zbus::ObjectPath::from_static_str_unchecked("/org/vpud/Vpud1/reservation/3");
        p.push(("reservation", Variant::ObjectPath(path)));
        assert_eq!(session_request(&params(p)).unwrap().reservation, Some(3));
    }
}
