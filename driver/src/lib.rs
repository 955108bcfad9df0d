//! Userspace driver for VPU video encode cards.
//!
//! A VPU card is a PCIe function whose host interface is NVMe with a vendor video command
//! set on top (`ffi/include/vpu.h`). This crate owns everything below "a card":
//!
//! - [`io`]: the [`io::DeviceIo`] trait, the one seam to hardware, and DMA memory;
//! - [`vfio`]: the backend for real PCI functions bound to `vfio-pci`;
//! - [`emu`]: the emulated card, a device model that encodes with a software encoder;
//! - [`nvme`]: the NVMe transport: controller bring-up, admin and I/O queue pairs, PRPs,
//!   doorbells, completions on eventfds, per-command timeouts;
//! - [`card`]: the video command set on top: identify, sessions, frames in, packets out.
//! - [`media`]: Y4M reading and writing and a synthetic test pattern, for tools and tests.
//!
//! No D-Bus and no scheduling live here; that is the daemon's.
//!
//! [`emu`] and [`media`] (and the software encoder they build) are behind the `emulator`
//! feature: a program that drives only real cards leaves it off; the daemon turns it on.

pub mod card;
#[cfg(feature = "emulator")]
pub mod emu;
pub mod io;
#[cfg(feature = "emulator")]
pub mod media;
pub mod nvme;
pub mod vfio;
