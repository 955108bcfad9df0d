//! Shared helpers of vpud's whole-system tests: synthetic clips, decoding with openh264
//! and with Debian's `ffmpeg`/`ffprobe`, PSNR, and locating the workspace's binaries.
//!
//! - [`clip`]: synthetic I420 clips from the driver's test pattern;
//! - [`decode`]: H.264 decoding in-process (openh264) and with `ffmpeg`/`ffprobe`, and
//!   Annex-B NAL inspection;
//! - [`ladder`]: transcode ladders: an H.264 test input from `ffmpeg`, sent through the
//!   client library, the renditions checked with `ffmpeg`/`ffprobe`;
//! - [`quality`]: PSNR of decoded frames against their source;
//! - [`daemon`]: a private bus with vpud on it, zbus and data-channel clients, `gdbus` and
//!   `busctl`;
//! - [`load`]: the soak and surge runs of `vpud` as a separate process;
//! - [`vm`]: the VFIO tier's VM: prerequisites, the guest program's libraries, initramfs, QEMU.

pub mod clip;
pub mod daemon;
pub mod decode;
pub mod ladder;
pub mod load;
pub mod quality;
pub mod vm;
