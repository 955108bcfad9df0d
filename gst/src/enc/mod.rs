//! The `vpuh264enc` element: registration and its public type.

use gst::glib;
use gst::prelude::*;

mod caps;
mod frame;
mod imp;
mod pool;
mod props;
mod session;

pub use props::RateControl;

glib::wrapper! {
    /// `vpuh264enc`: raw video in, H.264 (Annex-B, one access unit per buffer) out, encoded
    /// on a VPU card through vpud.
    pub struct VpuH264Enc(ObjectSubclass<imp::VpuH264Enc>)
        @extends gst_video::VideoEncoder, gst::Element, gst::Object,
        @implements gst::Preset;
}

/// Registers `vpuh264enc` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "vpuh264enc",
        gst::Rank::PRIMARY,
        VpuH264Enc::static_type(),
    )
}
