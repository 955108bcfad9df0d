//! H.264 Annex-B byte streams: splitting into NAL units and access units (for transcode
//! input from files and pipes), the few header fields an MP4 `avcC` box needs.

/// NAL unit type of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;
/// NAL unit type of an access unit delimiter.
pub const NAL_AUD: u8 = 9;

/// The NAL units of an Annex-B buffer (start codes of 3 or 4 bytes removed), in order.
/// Bytes before the first start code are ignored; empty units are skipped.
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start of start code, start of payload)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code_start = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((code_start, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(_, payload)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |&(code, _)| code);
        // Trailing zero bytes belong to the next start code or are stuffing.
        let mut end = end.max(payload);
        while end > payload && data[end - 1] == 0 {
            end -= 1;
        }
        if end > payload {
            out.push(&data[payload..end]);
        }
    }
    out
}

/// The `nal_unit_type` of a NAL unit (without start code).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// Whether an access unit contains an IDR slice.
pub fn is_idr(access_unit: &[u8]) -> bool {
    nal_units(access_unit)
        .iter()
        .any(|n| nal_type(n) == Some(NAL_IDR))
}

/// Start codes in `data`: (offset of the start code's first byte, offset of the NAL
/// unit's first byte). A 4-byte start code's leading zero belongs to it.
fn start_codes(data: &[u8]) -> Vec<(usize, usize)> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((code, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
}

/// Whether a NAL unit (its header byte and, for slices, the next byte) starts a new access
/// unit after one that already has a slice: H.264 7.4.1.2.3, with the first slice of a new
/// picture recognised by `first_mb_in_slice == 0` (arbitrary slice order is not used by
/// the profiles the cards decode). `None` when more bytes are needed to tell.
fn starts_access_unit(nal: &[u8]) -> Option<bool> {
    let header = *nal.first()?;
    match header & 0x1f {
        // SEI, SPS, PPS, access unit delimiter, prefix and reserved types 14-18.
        6..=9 | 14..=18 => Some(true),
        // A coded slice: ue(v) first_mb_in_slice is 0 exactly when its first bit is 1.
        1 | 5 => nal.get(1).map(|b| b & 0x80 != 0),
        _ => Some(false),
    }
}

fn is_slice(nal: &[u8]) -> bool {
    matches!(nal_type(nal), Some(1) | Some(5))
}

/// Where the first access unit of `data` ends (the start of the next one), if `data`
/// already shows where. With `at_end`, the data ends the stream.
fn first_unit_end(data: &[u8], at_end: bool) -> Option<usize> {
    let starts = start_codes(data);
    let mut seen_slice = false;
    for (k, &(code, payload)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |&(c, _)| c);
        let nal = &data[payload..end.max(payload)];
        if seen_slice {
            match starts_access_unit(nal) {
                Some(true) => return Some(code),
                Some(false) => {}
                None if at_end => {}
                None => return None,
            }
        }
        seen_slice |= is_slice(nal);
    }
    None
}

/// Splits a whole Annex-B stream into access units (start codes kept, each unit one coded
/// picture with the parameter sets and SEI that precede it). Bytes before the first start
/// code are dropped; a trailing unit without a slice is returned as it is.
pub fn access_units(data: &[u8]) -> Vec<&[u8]> {
    let Some(&(first, _)) = start_codes(data).first() else {
        return Vec::new();
    };
    let mut rest = &data[first..];
    let mut out = Vec::new();
    while let Some(end) = first_unit_end(rest, true) {
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    if !nal_units(rest).is_empty() {
        out.push(rest);
    }
    out
}

/// Splits an Annex-B byte stream arriving in pieces (a pipe) into access units.
#[derive(Debug, Default)]
pub struct AccessUnitSplitter {
    buf: Vec<u8>,
}

impl AccessUnitSplitter {
    pub fn new() -> AccessUnitSplitter {
        AccessUnitSplitter::default()
    }

    /// Adds bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Bytes before the first start code are not part of any unit.
        if let Some(&(first, _)) = start_codes(&self.buf).first() {
            self.buf.drain(..first);
        } else if self.buf.len() > 3 {
            let keep = self.buf.len() - 3;
            self.buf.drain(..keep);
        }
    }

    /// The next complete access unit, once the start of the following one has arrived.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let end = first_unit_end(&self.buf, false)?;
        Some(self.buf.drain(..end).collect())
    }

    /// At the end of the stream: the last access unit, if any bytes of one are left.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if let Some(end) = first_unit_end(&self.buf, true) {
            return Some(self.buf.drain(..end).collect());
        }
        let rest = std::mem::take(&mut self.buf);
        (!nal_units(&rest).is_empty()).then_some(rest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SPS, PPS, IDR slice (first_mb 0), P slice (first_mb 0), second slice of the same
    /// picture (first_mb != 0), AUD, P slice.
    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        for nal in [
            &[0x67, 0x42, 0x00][..],
            &[0x68, 0xce],
            &[0x65, 0x88, 0x10],
            &[0x41, 0x9a, 0x01],
            &[0x41, 0x40, 0x02],
            &[0x09, 0xf0],
            &[0x41, 0x9a, 0x03],
        ] {
            s.extend_from_slice(&[0, 0, 0, 1]);
            s.extend_from_slice(nal);
        }
        s
    }

    #[test]
    fn access_units_group_parameter_sets_and_slices_by_picture() {
        let data = stream();
        let units = access_units(&data);
        let types: Vec<Vec<u8>> = units
            .iter()
            .map(|u| nal_units(u).iter().filter_map(|n| nal_type(n)).collect())
            .collect();
        assert_eq!(types, vec![vec![7, 8, 5], vec![1, 1], vec![9, 1]]);
        assert_eq!(units.concat(), data);
    }

    #[test]
    fn the_splitter_gives_the_same_units_byte_by_byte() {
        let data = stream();
        let mut s = AccessUnitSplitter::new();
        let mut out = Vec::new();
        for b in &data {
            s.push(std::slice::from_ref(b));
            while let Some(u) = s.pop() {
                out.push(u);
            }
        }
        out.extend(s.finish());
        let expected: Vec<Vec<u8>> = access_units(&data).iter().map(|u| u.to_vec()).collect();
        assert_eq!(out, expected);
        assert!(s.finish().is_none());
    }

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5, 0,
        ];
        let nals = nal_units(&data);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
        assert_eq!(nal_type(nals[0]), Some(NAL_SPS));
        assert!(is_idr(&data));
    }

    #[test]
    fn garbage_without_start_code_has_no_units() {
        assert!(nal_units(&[1, 2, 3, 4]).is_empty());
        assert!(nal_units(&[]).is_empty());
        assert!(nal_units(&[0, 0, 1]).is_empty());
    }
}
