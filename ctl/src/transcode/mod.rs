//! `vpuctl transcode`: one H.264 input through an ABR ladder on a card, out as one MP4 per
//! rendition and, with `--hls`, an HLS presentation.
//!
//! - [`run`]: the command: input thread, session, progress, summary;
//! - [`ladder`]: the `--ladder` spec (`1080p:6M,720p:3M,…`) and each rendition's size;
//! - [`source`]: the input (Annex-B or MP4, file or pipe), read by [`annexb`] and
//!   [`demux`] (with `moov`), described by its SPS ([`sps`]);
//! - [`sink`]: the outputs, MP4 through [`crate::mp4`] and HLS through [`hls`] with
//!   transport stream segments from [`ts`].

pub mod annexb;
pub mod demux;
pub mod hls;
pub mod ladder;
mod moov;
pub mod run;
pub mod sink;
pub mod source;
pub mod sps;
pub mod ts;
