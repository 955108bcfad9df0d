//! The access units a ladder keeps so that it can move to another card: every unit from
//! the IDR that starts the oldest picture not yet sent, so that a new card's decoder can
//! start there and every picture not sent yet comes out again.
//!
//! The units are kept in segments, each starting at an IDR (the first one at the start of
//! the stream). A segment's first picture is the first one the decoder outputs with a pts
//! at least the IDR's (an IDR comes after every earlier picture in display order). With
//! several pictures in flight, pictures before an IDR may still be unsent after the IDR
//! was decoded, so a segment is dropped only once every picture before the next
//! segment's first one has been sent. A segment that outgrew [`MAX_HISTORY`] lost its
//! units: until it is dropped, the ladder cannot move.
//!
//! A new card's decoder needs the stream's parameter sets (SPS, PPS) before the IDR it
//! starts from. Sources that send them only once (or only when they change) leave later
//! IDRs without them, so the last ones seen are kept too and put in front of an IDR unit
//! that has none of its own when it is kept (an identical parameter set again is harmless
//! to a decoder; the card decoding live gets the unit as the client sent it).

use std::collections::VecDeque;
use std::sync::Arc;

use super::ladder::{NAL_IDR, NAL_PPS, NAL_SPS};

/// Bytes of access units kept; a stream with longer stretches between IDRs cannot move
/// (it ends with `card-failed` when its card fails).
const MAX_HISTORY: usize = 64 << 20;

/// An access unit kept.
#[derive(Debug)]
pub(super) struct Kept {
    pub data: Arc<[u8]>,
    pub pts: u64,
    /// The buffer whose `FRAME_DONE` is still owed, if it is.
    pub owed: Option<u32>,
}

/// A kept access unit: its segment's number and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UnitRef {
    segment: u64,
    index: usize,
}

#[derive(Debug)]
struct Segment {
    /// Numbered from 0 over the session's life.
    number: u64,
    units: Vec<Kept>,
    /// The pts of the IDR that starts it (0 for the start of the stream).
    idr_pts: u64,
    /// The index of its first picture among the pictures the decoder output, once out.
    first_picture: Option<u64>,
    /// Its units outgrew [`MAX_HISTORY`] and were dropped.
    lost: bool,
}

/// The kept access units (see the module's documentation).
#[derive(Debug)]
pub(super) struct History {
    segments: VecDeque<Segment>,
    bytes: usize,
    /// The SPS NAL units of the last access unit that had any, start codes included.
    sps: Vec<u8>,
    /// The same for PPS NAL units.
    pps: Vec<u8>,
}

/// Where a moved ladder starts again.
#[derive(Debug)]
pub(super) struct Restart {
    /// The units to decode again, in order.
    pub replay: VecDeque<UnitRef>,
    /// The index of the first picture they yield.
    pub first_picture: u64,
}

impl History {
    pub fn new() -> History {
        History {
            segments: VecDeque::from([Segment {
                number: 0,
                units: Vec::new(),
                idr_pts: 0,
                first_picture: Some(0),
                lost: false,
            }]),
            bytes: 0,
            sps: Vec::new(),
            pps: Vec::new(),
        }
    }

    /// Keeps an access unit (an IDR starts a new segment); where it is kept, unless its
    /// segment lost its units.
    pub fn keep(&mut self, mut data: Vec<u8>, pts: u64, buffer_id: u32) -> Option<UnitRef> {
        let (mut sps, mut pps, mut idr) = (Vec::new(), Vec::new(), false);
        for (kind, nal) in super::ladder::nal_units(&data) {
            match kind {
                NAL_SPS => sps.extend_from_slice(nal),
                NAL_PPS => pps.extend_from_slice(nal),
                NAL_IDR => idr = true,
                _ => {}
            }
        }
        if idr {
            let mut with = Vec::new();
            if sps.is_empty() {
                with.extend_from_slice(&self.sps);
            }
            if pps.is_empty() {
                with.extend_from_slice(&self.pps);
            }
            if !with.is_empty() {
                with.extend_from_slice(&data);
                data = with;
            }
        }
        if !sps.is_empty() {
            self.sps = sps;
        }
        if !pps.is_empty() {
            self.pps = pps;
        }
        if idr {
            let number = self.segments.back().map_or(0, |s| s.number + 1);
            self.segments.push_back(Segment {
                number,
                units: Vec::new(),
                idr_pts: pts,
                first_picture: None,
                lost: false,
            });
        }
        self.bytes += data.len();
        if self.bytes > MAX_HISTORY {
            tracing::warn!(
                bytes = self.bytes,
                "no IDR for too long; the session could not move if its card failed"
            );
            for s in &mut self.segments {
                s.units = Vec::new();
                s.lost = true;
            }
            self.bytes = 0;
            return None;
        }
        let segment = self.segments.back_mut()?;
        if segment.lost {
            self.bytes -= data.len();
            return None;
        }
        segment.units.push(Kept {
            data: data.into(),
            pts,
            owed: Some(buffer_id),
        });
        Some(UnitRef {
            segment: segment.number,
            index: segment.units.len() - 1,
        })
    }

    pub fn get(&self, at: UnitRef) -> Option<&Kept> {
        let first = self.segments.front()?.number;
        let i = usize::try_from(at.segment.checked_sub(first)?).ok()?;
        self.segments.get(i)?.units.get(at.index)
    }

    pub fn get_mut(&mut self, at: UnitRef) -> Option<&mut Kept> {
        let first = self.segments.front()?.number;
        let i = usize::try_from(at.segment.checked_sub(first)?).ok()?;
        self.segments.get_mut(i)?.units.get_mut(at.index)
    }

    /// The decoder output picture `index` with `pts`: the first picture of the segments
    /// it starts.
    pub fn picture_out(&mut self, index: u64, pts: u64) {
        for s in &mut self.segments {
            if s.first_picture.is_none() && pts >= s.idr_pts {
                s.first_picture = Some(index);
            }
        }
    }

    /// `sent` pictures have been sent: the segments all of whose pictures were go.
    pub fn sent(&mut self, sent: u64) {
        while self.segments.len() >= 2 && self.segments[1].first_picture.is_some_and(|f| f <= sent)
        {
            if let Some(old) = self.segments.pop_front() {
                self.bytes -= old.units.iter().map(|k| k.data.len()).sum::<usize>();
            }
        }
    }

    /// Where a moved ladder starts: every kept unit again, from the oldest segment, whose
    /// pictures are numbered from its first one. `None` when a segment lost its units.
    /// `decoded` is the number of pictures the decoder output so far.
    pub fn restart(&mut self, decoded: u64) -> Option<Restart> {
        if self.segments.iter().any(|s| s.lost) {
            return None;
        }
        let first_picture = self
            .segments
            .front()
            .and_then(|s| s.first_picture)
            .unwrap_or(decoded);
        let mut replay = VecDeque::new();
        for (i, s) in self.segments.iter_mut().enumerate() {
            if i > 0 {
                // Found again as the new decoder outputs them.
                s.first_picture = None;
            }
            replay.extend((0..s.units.len()).map(|index| UnitRef {
                segment: s.number,
                index,
            }));
        }
        Some(Restart {
            replay,
            first_picture,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDR: &[u8] = &[0, 0, 0, 1, 0x65, 0x88];
    const P: &[u8] = &[0, 0, 0, 1, 0x41, 0x9a];

    #[test]
    fn an_idr_without_parameter_sets_is_kept_with_the_last_ones() {
        const SPS_PPS_IDR: &[u8] = &[
            0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88,
        ];
        let mut h = History::new();
        h.keep(SPS_PPS_IDR.to_vec(), 0, 0).unwrap();
        h.keep(P.to_vec(), 1, 0).unwrap();
        let bare = h.keep(IDR.to_vec(), 2, 0).unwrap();
        let kept = h.get(bare).unwrap();
        assert_eq!(&kept.data[..11], &SPS_PPS_IDR[..11], "SPS and PPS in front");
        assert_eq!(&kept.data[11..], IDR);
        // A unit with its own parameter sets, and a P unit, are kept as they came.
        let own = h.keep(SPS_PPS_IDR.to_vec(), 3, 0).unwrap();
        assert_eq!(&*h.get(own).unwrap().data, SPS_PPS_IDR);
        let p = h.keep(P.to_vec(), 4, 0).unwrap();
        assert_eq!(&*h.get(p).unwrap().data, P);
    }

    #[test]
    fn units_before_an_idr_stay_until_their_pictures_are_sent() {
        let mut h = History::new();
        for pts in 0..4 {
            let unit = if pts == 0 { IDR } else { P };
            h.keep(unit.to_vec(), pts, 0).unwrap();
            h.picture_out(pts, pts);
        }
        // The IDR at pts 4 is decoded while pictures 2 and 3 are still on the card.
        h.keep(IDR.to_vec(), 4, 0).unwrap();
        h.picture_out(4, 4);
        h.sent(2);
        let r = h.restart(5).unwrap();
        assert_eq!(r.first_picture, 0);
        assert_eq!(r.replay.len(), 5);
        // Once pictures 0..4 are sent, the old segment goes.
        h.picture_out(4, 4);
        h.sent(4);
        let r = h.restart(5).unwrap();
        assert_eq!((r.first_picture, r.replay.len()), (4, 1));
        assert_eq!(h.get(r.replay[0]).unwrap().pts, 4);
    }

    #[test]
    fn a_segment_that_lost_its_units_blocks_moving_until_it_is_gone() {
        let mut h = History::new();
        h.keep(IDR.to_vec(), 0, 0).unwrap();
        let big = vec![0u8; MAX_HISTORY];
        assert!(h.keep(big, 1, 0).is_none());
        assert!(h.restart(2).is_none());
        let idr = h.keep(IDR.to_vec(), 2, 0).unwrap();
        h.picture_out(2, 2);
        assert!(h.restart(3).is_none());
        h.sent(2);
        let r = h.restart(3).unwrap();
        assert_eq!((r.first_picture, r.replay.len()), (2, 1));
        assert_eq!(r.replay[0], idr);
    }
}
