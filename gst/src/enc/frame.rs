//! Frame layouts: the card takes 4:2:0 frames with tight strides (`docs/data-channel.md`),
//! GStreamer lays planes out by its own rules (rows rounded up to 4 bytes, or whatever a
//! producer's video meta says). Frames whose layout is the card's go by reference; others
//! are copied plane by plane, once, into a slot.

use gst_video::prelude::*;
use gst_video::VideoFormat;

/// The card's layout of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tight {
    pub format: VideoFormat,
    pub width: usize,
    pub height: usize,
}

impl Tight {
    /// Rows and bytes per row of each plane.
    pub fn planes(&self) -> Vec<(usize, usize)> {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        match self.format {
            VideoFormat::Nv12 => vec![(h, w), (ch, 2 * cw)],
            _ => vec![(h, w), (ch, cw), (ch, cw)],
        }
    }

    /// Offset and stride of each plane.
    pub fn offsets_strides(&self) -> Vec<(usize, usize)> {
        let mut at = 0;
        self.planes()
            .into_iter()
            .map(|(rows, row)| {
                let o = (at, row);
                at += rows * row;
                o
            })
            .collect()
    }

    /// Bytes of one frame.
    pub fn size(&self) -> usize {
        self.planes().iter().map(|(rows, row)| rows * row).sum()
    }

    /// Whether GStreamer's layout `info` is this one, so that a producer writing into a
    /// buffer of `info` writes the card's layout.
    pub fn matches(&self, info: &gst_video::VideoInfo) -> bool {
        let ours = self.offsets_strides();
        info.n_planes() as usize == ours.len()
            && ours.iter().enumerate().all(|(i, &(o, s))| {
                info.offset()[i] == o && usize::try_from(info.stride()[i]) == Ok(s)
            })
    }

    /// Copies a mapped frame, plane by plane, into `dst` (the card's layout).
    pub fn copy(&self, src: &gst_video::VideoFrameRef<&gst::BufferRef>, dst: &mut [u8]) -> bool {
        let mut out = 0;
        for (i, (rows, row)) in self.planes().into_iter().enumerate() {
            let Ok(data) = src.plane_data(i as u32) else {
                return false;
            };
            let Ok(stride) = usize::try_from(src.plane_stride()[i]) else {
                return false;
            };
            for r in 0..rows {
                let from = r * stride;
                let (Some(s), Some(d)) = (data.get(from..from + row), dst.get_mut(out..out + row))
                else {
                    return false;
                };
                d.copy_from_slice(s);
                out += row;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tight_layouts() {
        let t = Tight {
            format: VideoFormat::I420,
            width: 1280,
            height: 720,
        };
        assert_eq!(t.size(), 1280 * 720 * 3 / 2);
        assert_eq!(
            t.offsets_strides(),
            [(0, 1280), (921_600, 640), (1_152_000, 640)]
        );
        let n = Tight {
            format: VideoFormat::Nv12,
            width: 6,
            height: 3,
        };
        assert_eq!(n.planes(), [(3, 6), (2, 6)]);
        assert_eq!(n.size(), 30);
    }

    #[test]
    fn gstreamer_layout_matches_only_when_rows_need_no_padding() {
        gst::init().unwrap();
        let info = |w, h| {
            gst_video::VideoInfo::builder(VideoFormat::I420, w, h)
                .build()
                .unwrap()
        };
        let tight = |w: u32, h: u32| Tight {
            format: VideoFormat::I420,
            width: w as usize,
            height: h as usize,
        };
        assert!(tight(1280, 720).matches(&info(1280, 720)));
        // 322 / 2 = 161 chroma bytes a row; GStreamer rounds rows up to 164.
        assert!(!tight(322, 240).matches(&info(322, 240)));
    }

    #[test]
    fn copies_padded_rows_tight() {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(VideoFormat::I420, 6, 2)
            .build()
            .unwrap();
        let t = Tight {
            format: VideoFormat::I420,
            width: 6,
            height: 2,
        };
        assert!(!t.matches(&info));
        let mut buf = gst::Buffer::with_size(info.size()).unwrap();
        {
            let b = buf.get_mut().unwrap();
            let mut map = b.map_writable().unwrap();
            for (i, v) in map.iter_mut().enumerate() {
                *v = i as u8;
            }
        }
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(buf.as_ref(), &info).unwrap();
        let mut out = vec![0u8; t.size()];
        assert!(t.copy(&frame, &mut out));
        // Y rows are 8 bytes apart in GStreamer's layout, 6 in the card's.
        assert_eq!(&out[..12], &[0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        // U (3 bytes of a 4-byte row), then V.
        assert_eq!(&out[12..15], &[16, 17, 18]);
        assert_eq!(&out[15..18], &[20, 21, 22]);
    }
}
