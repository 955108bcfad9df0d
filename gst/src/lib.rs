//! GStreamer plugin `vpud`: `vpuh264enc`, an H.264 encoder element that encodes on VPU
//! cards through vpud.
//!
//! The element is a `GstVideoEncoder`. When its input caps are fixed it opens a vpud
//! session with the `vpud-client` library (D-Bus for control, the session's data channel
//! for frames and packets) and proposes upstream a buffer pool whose buffers are slots of
//! a memfd registered with the session, so frames reach the card without a copy; frames
//! from anywhere else are copied once into a slot of the session's own pool. Packets come
//! back on a thread of their own that pushes them downstream, so several frames are in
//! flight to the card at once.
//!
//! Layout: `enc/` is the element (`imp.rs` the base-class hooks, `props.rs` its
//! properties, `session.rs` an open vpud session and its output thread, `pool.rs` the
//! memfd buffer pool, `frame.rs` frame layouts and copies, `caps.rs` output caps from the
//! stream's SPS).
//!
//! Built as `libgstvpud.so`; `GST_PLUGIN_PATH` pointing at its directory makes
//! `gst-inspect-1.0 vpuh264enc` list it. [`register_static`] registers it in-process
//! (tests, benchmarks, applications linking it).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use gst::glib;

mod enc;

pub use enc::{RateControl, VpuH264Enc};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    enc::register(plugin)
}

gst::plugin_define!(
    vpud,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    // GStreamer's list of plugin licences has no Apache-2.0; "unknown" is its word for
    // any other licence (the crate's own is Apache-2.0).
    "unknown",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY")
);

/// Registers the plugin with GStreamer in this process (after `gst::init`), for
/// applications and tests that link the crate instead of loading the shared library.
pub fn register_static() -> Result<(), glib::BoolError> {
    plugin_register_static()
}
