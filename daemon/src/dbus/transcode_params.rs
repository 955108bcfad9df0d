//! Validation of `CreateTranscode`'s arguments: the input's `a{sv}` and one `a{sv}` per
//! rendition; unknown keys, wrong types and out-of-range values are rejected with a
//! message naming the rendition, the key and what is accepted.

use vpu_driver::card::{Codec, RateControl, ScaleFilter};

use super::error::VpudError;
use super::params::{
    get_path, get_str, get_u32, one_of, range, reject_unknown, ParamError, Params,
};
use crate::scheduler::Priority;
use crate::service::reservation;
use crate::session::transcode::request::{
    InputSpec, RenditionSpec, TranscodeRequest, DEFAULT_FPS, MAX_RENDITIONS,
};

const INPUT_KEYS: &str =
    "codec, width, height, framerate_num, framerate_den, priority, card, reservation";
const OUTPUT_KEYS: &str =
    "codec, width, height, rate_control, bitrate, max_bitrate, qp, gop, scale";

/// Refuses renditions in a codec other than H.264 with `NotSupported`: a ladder's
/// renditions are encoded in H.264 (AV1 engines encode sessions of their own, through
/// `CreateSession`). A `codec` that is not a codec's name at all is `InvalidArgument`.
pub fn rendition_codecs(outputs: &[Params]) -> Result<(), VpudError> {
    for (i, p) in outputs.iter().enumerate() {
        let at = |e: ParamError| ParamError(format!("outputs[{i}]: {}", e.0));
        let codec = one_of(
            "codec",
            get_str(p, "codec").map_err(at)?,
            Codec::ALL,
            Codec::as_str,
            Codec::H264,
        )
        .map_err(at)?;
        if codec != Codec::H264 {
            return Err(VpudError::NotSupported(format!(
                "outputs[{i}]: codec = {:?}: transcode renditions are encoded in h264 only; \
                 encode {codec} from raw frames with CreateSession",
                codec.as_str()
            )));
        }
    }
    Ok(())
}

fn even_size(key: &str, v: u32) -> Result<u32, ParamError> {
    range(key, v, 16, 16384, "luma samples")?;
    if v % 2 != 0 {
        return Err(ParamError(format!(
            "{key} = {v} must be even (chroma is subsampled 2×2)"
        )));
    }
    Ok(v)
}

/// Validates one rendition of `CreateTranscode` (`outputs[index]`).
fn rendition(index: usize, p: &Params) -> Result<RenditionSpec, ParamError> {
    // `codec` is checked by `rendition_codecs` (H.264 only).
    const KNOWN: &[&str] = &[
        "codec",
        "width",
        "height",
        "rate_control",
        "bitrate",
        "max_bitrate",
        "qp",
        "gop",
        "scale",
    ];
    let at = |e: ParamError| ParamError(format!("outputs[{index}]: {}", e.0));
    reject_unknown(p, KNOWN, OUTPUT_KEYS).map_err(at)?;
    let size = |key: &'static str| -> Result<u32, ParamError> {
        let v = get_u32(p, key)?
            .ok_or_else(|| ParamError(format!("{key} is required (u, luma samples)")))?;
        even_size(key, v)
    };
    let width = size("width").map_err(at)?;
    let height = size("height").map_err(at)?;
    let rate_control = one_of(
        "rate_control",
        get_str(p, "rate_control").map_err(at)?,
        RateControl::ALL,
        RateControl::as_str,
        RateControl::Cbr,
    )
    .map_err(at)?;
    let bitrate = match (rate_control, get_u32(p, "bitrate").map_err(at)?) {
        (RateControl::Cqp, b) => b.unwrap_or(0),
        (_, Some(b)) => range("bitrate", b, 10_000, 800_000_000, "bit/s").map_err(at)?,
        (_, None) => 4_000_000,
    };
    let max_bitrate = get_u32(p, "max_bitrate").map_err(at)?.unwrap_or(0);
    if max_bitrate != 0 && max_bitrate < bitrate {
        return Err(at(ParamError(format!(
            "max_bitrate = {max_bitrate} is below bitrate = {bitrate}; accepted: 0 (same as bitrate) or at least bitrate"
        ))));
    }
    let qp = range("qp", get_u32(p, "qp").map_err(at)?.unwrap_or(26), 0, 51, "").map_err(at)? as u8;
    let gop = range(
        "gop",
        get_u32(p, "gop").map_err(at)?.unwrap_or(60),
        0,
        100_000,
        "input frames",
    )
    .map_err(at)?;
    let filter = one_of(
        "scale",
        get_str(p, "scale").map_err(at)?,
        ScaleFilter::ALL,
        ScaleFilter::as_str,
        ScaleFilter::Bilinear,
    )
    .map_err(at)?;
    Ok(RenditionSpec {
        width,
        height,
        rate_control,
        bitrate,
        max_bitrate,
        qp,
        gop,
        filter,
    })
}

/// Validates `CreateTranscode`'s input and outputs.
pub fn transcode_request(
    input: &Params,
    outputs: &[Params],
) -> Result<TranscodeRequest, ParamError> {
    const KNOWN: &[&str] = &[
        "codec",
        "width",
        "height",
        "framerate_num",
        "framerate_den",
        "priority",
        "card",
        "reservation",
    ];
    let at = |e: ParamError| ParamError(format!("input: {}", e.0));
    reject_unknown(input, KNOWN, INPUT_KEYS).map_err(at)?;
    let codec = one_of(
        "codec",
        get_str(input, "codec").map_err(at)?,
        &[Codec::H264],
        Codec::as_str,
        Codec::H264,
    )
    .map_err(at)?;
    let size = match (
        get_u32(input, "width").map_err(at)?,
        get_u32(input, "height").map_err(at)?,
    ) {
        (None, None) => None,
        (Some(w), Some(h)) => Some((
            even_size("width", w).map_err(at)?,
            even_size("height", h).map_err(at)?,
        )),
        _ => {
            return Err(at(ParamError(
                "width and height go together: give both or neither".into(),
            )))
        }
    };
    let fps_num = match get_u32(input, "framerate_num").map_err(at)? {
        Some(n) => range("framerate_num", n, 1, 240_000, "").map_err(at)?,
        None => DEFAULT_FPS.0,
    };
    let fps_den = range(
        "framerate_den",
        get_u32(input, "framerate_den")
            .map_err(at)?
            .unwrap_or(DEFAULT_FPS.1),
        1,
        240_000,
        "",
    )
    .map_err(at)?;
    if u64::from(fps_num) > 240 * u64::from(fps_den) {
        return Err(at(ParamError(format!(
            "framerate {fps_num}/{fps_den} is out of range; accepted: up to 240 frames per second"
        ))));
    }
    let priority = one_of(
        "priority",
        get_str(input, "priority").map_err(at)?,
        Priority::ALL,
        Priority::as_str,
        Priority::Realtime,
    )
    .map_err(at)?;
    let card = get_path(input, "card", "a card's object path").map_err(at)?;
    let reservation = match get_path(input, "reservation", "a reservation's object path").map_err(at)? {
        None => None,
        Some(path) => Some(reservation::number(&path).ok_or_else(|| {
            at(ParamError(format!(
                "reservation = {path:?} is not a reservation's path; accepted: {}N, as Manager.Reserve returns",
                reservation::PATH_PREFIX
            )))
        })?),
    };
    if outputs.is_empty() || outputs.len() > MAX_RENDITIONS {
        return Err(ParamError(format!(
            "outputs has {} renditions; accepted: 1 to {MAX_RENDITIONS}",
            outputs.len()
        )));
    }
    let outputs = outputs
        .iter()
        .enumerate()
        .map(|(i, p)| rendition(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TranscodeRequest {
        input: InputSpec {
            codec,
            size,
            fps_num,
            fps_den,
        },
        outputs,
        priority,
        card,
        reservation,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use zbus::{OwnedVariant, Variant};

    use super::*;

    fn dict(entries: &[(&str, Variant<'static>)]) -> Params {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedVariant::try_from(v.clone()).unwrap()))
            .collect::<HashMap<_, _>>()
    }

    fn rendition(w: u32, h: u32) -> Params {
        dict(&[
            ("width", Variant::U32(w)),
            ("height", Variant::U32(h)),
            ("bitrate", Variant::U32(1_000_000)),
        ])
    }

    #[test]
    fn a_ladder_is_validated_whole() {
        let input = dict(&[
            ("codec", Variant::from("h264")),
            ("framerate_num", Variant::U32(25)),
        ]);
        let req = transcode_request(&input, &[rendition(1280, 720), rendition(640, 360)]).unwrap();
        assert_eq!(req.outputs.len(), 2);
        assert_eq!(
            (req.input.fps_num, req.input.fps_den, req.input.size),
            (25, 1, None)
        );
        assert_eq!(req.input_size(), (1280, 720));
        assert_eq!(req.outputs[1].gop, 60);
        assert_eq!(req.outputs[0].filter, ScaleFilter::Bilinear);
    }

    #[test]
    fn bad_ladders_say_what_is_wrong() {
        let input = dict(&[]);
        let err =
            |input: &Params, outputs: &[Params]| transcode_request(input, outputs).unwrap_err().0;
        assert!(err(&input, &[]).contains("1 to 8"));
        assert!(err(&input, &vec![rendition(64, 64); 9]).contains("1 to 8"));
        assert!(
            err(&input, &[rendition(641, 360)]).contains("outputs[0]: width = 641 must be even")
        );
        let mut r = rendition(640, 360);
        r.insert(
            "fps".into(),
            OwnedVariant::try_from(Variant::U32(1)).unwrap(),
        );
        assert!(err(&input, &[r]).contains("outputs[0]: unknown key \"fps\""));
        let mut r = rendition(640, 360);
        r.insert(
            "scale".into(),
            OwnedVariant::try_from(Variant::from("nearest")).unwrap(),
        );
        assert!(err(&input, &[r]).contains("bilinear, bicubic, lanczos3"));
        let half = dict(&[("width", Variant::U32(1920))]);
        assert!(err(&half, &[rendition(64, 64)]).contains("input: width and height go together"));
        let hevc = dict(&[("codec", Variant::from("hevc"))]);
        assert!(err(&hevc, &[rendition(64, 64)]).contains("input: codec"));
    }

    #[test]
    fn renditions_are_h264_and_other_codecs_are_not_supported() {
        let with = |codec: Variant<'static>| {
            let mut r = rendition(640, 360);
            r.insert("codec".into(), OwnedVariant::try_from(codec).unwrap());
            vec![rendition(1280, 720), r]
        };
        assert!(rendition_codecs(&with(Variant::from("h264"))).is_ok());
        assert!(transcode_request(&dict(&[]), &with(Variant::from("h264"))).is_ok());
        match rendition_codecs(&with(Variant::from("av1"))) {
            Err(VpudError::NotSupported(m)) => {
                assert!(m.contains("outputs[1]: codec = \"av1\""), "{m}");
                assert!(m.contains("h264 only"), "{m}");
            }
            other => panic!("av1 rendition: {other:?}"),
        }
        match rendition_codecs(&with(Variant::from("vp9"))) {
            Err(VpudError::InvalidArgument(m)) => assert!(m.contains("outputs[1]: codec"), "{m}"),
            other => panic!("vp9 rendition: {other:?}"),
        }
        assert!(matches!(
            rendition_codecs(&with(Variant::U32(1))),
            Err(VpudError::InvalidArgument(_))
        ));
    }
}
