//! Shared helpers of vpud's whole-system tests: synthetic clips, decoding with openh264
//! and with Debian's `ffmpeg`/`ffprobe`, PSNR, and locating the workspace's binaries.

pub mod vm;
