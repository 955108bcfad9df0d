//! An MPEG-2 transport stream muxer (ISO/IEC 13818-1) for one H.264 video stream, as HLS
//! segments carry it: PAT and PMT at the start of every segment, one PES packet per access
//! unit (with an access unit delimiter first, as HLS asks), the PCR on the video PID in
//! every frame's first packet, the random-access indicator on keyframes, and continuity
//! counters that run on across segments.

/// Bytes of one transport stream packet.
pub const TS_PACKET_LEN: usize = 188;
/// The 90 kHz clock of PTS, DTS and the PCR base.
pub const CLOCK_HZ: u64 = 90_000;

const SYNC_BYTE: u8 = 0x47;
const PID_PAT: u16 = 0x0000;
/// PIDs as ffmpeg's muxer uses them, so tools show familiar numbers.
const PID_PMT: u16 = 0x1000;
const PID_VIDEO: u16 = 0x0100;
const PROGRAM_NUMBER: u16 = 1;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_ID_VIDEO: u8 = 0xe0;
/// The access unit delimiter put before every access unit that lacks one
/// (`primary_pic_type` 7: any slice type).
const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];
/// How far the PCR runs ahead of the decode time: the decoder's buffering delay.
pub const PCR_DELAY: u64 = CLOCK_HZ * 7 / 10;

/// Writes transport stream packets into byte vectors.
#[derive(Debug, Default)]
pub struct TsMuxer {
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
}

impl TsMuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a PAT and a PMT (two packets): what a segment must begin with.
    pub fn write_tables(&mut self, out: &mut Vec<u8>) {
        let mut pat = vec![
            0x00, // table_id: program_association_section
            0, 0, // section_syntax_indicator, length (patched)
            0, 1,    // transport_stream_id
            0xc1, // version 0, current_next_indicator
            0, 0, // section_number, last_section_number
        ];
        pat.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
        pat.extend_from_slice(&(0xe000 | PID_PMT).to_be_bytes());
        let cc = next_cc(&mut self.cc_pat);
        write_section(out, PID_PAT, cc, pat);

        let mut pmt = vec![0x02, 0, 0]; // table_id: TS_program_map_section
        pmt.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
        pmt.extend_from_slice(&[0xc1, 0, 0]);
        pmt.extend_from_slice(&(0xe000 | PID_VIDEO).to_be_bytes()); // PCR_PID
        pmt.extend_from_slice(&0xf000u16.to_be_bytes()); // program_info_length 0
        pmt.push(STREAM_TYPE_H264);
        pmt.extend_from_slice(&(0xe000 | PID_VIDEO).to_be_bytes());
        pmt.extend_from_slice(&0xf000u16.to_be_bytes()); // ES_info_length 0
        let cc = next_cc(&mut self.cc_pmt);
        write_section(out, PID_PMT, cc, pmt);
    }

    /// Appends one access unit (Annex-B) as a PES packet with the given 90 kHz times; the
    /// PCR is `dts - PCR_DELAY`, so `dts` must be at least [`PCR_DELAY`].
    pub fn write_access_unit(
        &mut self,
        out: &mut Vec<u8>,
        annexb: &[u8],
        pts: u64,
        dts: u64,
        keyframe: bool,
    ) {
        let mut pes = Vec::with_capacity(annexb.len() + 32);
        pes.extend_from_slice(&[0, 0, 1, STREAM_ID_VIDEO]);
        // PES_packet_length 0: unbounded, allowed for video in a transport stream.
        pes.extend_from_slice(&[0, 0]);
        pes.push(0x80); // '10', no scrambling, no priority/alignment/copyright/original
        if pts == dts {
            pes.extend_from_slice(&[0x80, 5]);
            put_timestamp(&mut pes, 0x2, pts);
        } else {
            pes.extend_from_slice(&[0xc0, 10]);
            put_timestamp(&mut pes, 0x3, pts);
            put_timestamp(&mut pes, 0x1, dts);
        }
        if !starts_with_aud(annexb) {
            pes.extend_from_slice(&AUD);
        }
        pes.extend_from_slice(annexb);

        let pcr = dts.saturating_sub(PCR_DELAY);
        let mut rest = &pes[..];
        let mut first = true;
        while !rest.is_empty() {
            let mut af = Vec::new();
            if first {
                // Adaptation field: flags, then the PCR.
                af.push(0); // length, patched
                af.push(if keyframe { 0x50 } else { 0x10 }); // random_access, PCR_flag
                put_pcr(&mut af, pcr);
            }
            let room = TS_PACKET_LEN - 4 - af.len();
            if rest.len() < room {
                stuff(&mut af, TS_PACKET_LEN - 4 - rest.len());
            }
            if let Some(len) = af.len().checked_sub(1) {
                af[0] = len as u8;
            }
            let take = TS_PACKET_LEN - 4 - af.len();
            let cc = next_cc(&mut self.cc_video);
            let control = if af.is_empty() { 0x10 } else { 0x30 };
            put_header(out, PID_VIDEO, first, control | cc);
            out.extend_from_slice(&af);
            out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            first = false;
        }
    }
}

fn starts_with_aud(annexb: &[u8]) -> bool {
    vpud_client::annexb::nal_units(annexb)
        .first()
        .is_some_and(|n| n.first().is_some_and(|b| b & 0x1f == 9))
}

fn next_cc(cc: &mut u8) -> u8 {
    let v = *cc;
    *cc = (*cc + 1) & 0x0f;
    v
}

fn put_header(out: &mut Vec<u8>, pid: u16, unit_start: bool, control_cc: u8) {
    out.push(SYNC_BYTE);
    out.push(((pid >> 8) as u8 & 0x1f) | if unit_start { 0x40 } else { 0 });
    out.push(pid as u8);
    out.push(control_cc);
}

/// Grows an adaptation field (empty, or length + flags + …) to `total` bytes with stuffing.
fn stuff(af: &mut Vec<u8>, total: usize) {
    if af.is_empty() {
        af.push(0);
        if total >= 2 {
            af.push(0); // no flags
        }
    }
    af.resize(total, 0xff);
}

/// A 33-bit PES timestamp with its 4-bit prefix and marker bits.
fn put_timestamp(b: &mut Vec<u8>, prefix: u8, t: u64) {
    let t = t & ((1 << 33) - 1);
    b.push((prefix << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1);
    b.extend_from_slice(&((((t >> 15) & 0x7fff) << 1 | 1) as u16).to_be_bytes());
    b.extend_from_slice(&(((t & 0x7fff) << 1 | 1) as u16).to_be_bytes());
}

/// `program_clock_reference`: 33-bit base at 90 kHz, 6 reserved bits, 9-bit extension 0.
fn put_pcr(b: &mut Vec<u8>, base: u64) {
    let base = base & ((1 << 33) - 1);
    let v = (base << 15) | (0x3f << 9);
    b.extend_from_slice(&v.to_be_bytes()[2..]);
}

/// One PSI section (`pointer_field` 0) in one packet, its length and CRC filled in.
fn write_section(out: &mut Vec<u8>, pid: u16, cc: u8, mut section: Vec<u8>) {
    // section_length counts the bytes after it, CRC included.
    let len = (section.len() - 3 + 4) as u16;
    section[1] = 0xb0 | ((len >> 8) as u8 & 0x0f);
    section[2] = len as u8;
    let crc = crc32_mpeg2(&section);
    section.extend_from_slice(&crc.to_be_bytes());
    let start = out.len();
    put_header(out, pid, true, 0x10 | cc);
    out.push(0); // pointer_field
    out.extend_from_slice(&section);
    out.resize(start + TS_PACKET_LEN, 0xff);
}

/// CRC-32/MPEG-2: polynomial 0x04C11DB7, initial value all ones, no reflection.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn packets_are_whole_and_counters_run_on() {
        let mut mux = TsMuxer::new();
        let mut out = Vec::new();
        mux.write_tables(&mut out);
        for (i, len) in [1usize, 150, 170, 171, 183, 184, 400, 5000]
            .iter()
            .enumerate()
        {
            let mut au = vec![0, 0, 0, 1, 0x65];
            au.resize(*len + 5, 0x11);
            mux.write_access_unit(
                &mut out,
                &au,
                PCR_DELAY + i as u64 * 3000,
                PCR_DELAY + i as u64 * 3000,
                i == 0,
            );
        }
        assert_eq!(out.len() % TS_PACKET_LEN, 0);
        let mut last_cc: Option<u8> = None;
        let mut payload = Vec::new();
        for p in out.chunks(TS_PACKET_LEN) {
            assert_eq!(p[0], SYNC_BYTE);
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            if pid != PID_VIDEO {
                continue;
            }
            let cc = p[3] & 0x0f;
            if let Some(l) = last_cc {
                assert_eq!(cc, (l + 1) & 0x0f);
            }
            last_cc = Some(cc);
            let start = if p[3] & 0x20 != 0 {
                5 + usize::from(p[4])
            } else {
                4
            };
            payload.extend_from_slice(&p[start..]);
        }
        // Every PES with its header and the inserted AUD, nothing else.
        let expected: usize = [1usize, 150, 170, 171, 183, 184, 400, 5000]
            .iter()
            .map(|l| 14 + 6 + l + 5)
            .sum();
        assert_eq!(payload.len(), expected);
    }
}
