//! The emulated VPU card: an NVMe controller model with video engines running software
//! encoders (H.264 with `openh264`, AV1 with `rav1e`).
//!
//! [`EmulatedCard`] implements [`DeviceIo`](crate::io::DeviceIo) the way a real card behind
//! VFIO behaves, per `ffi/include/vpu.h`: a register file on BAR0 with the CC.EN/CSTS.RDY
//! handshake, PCI configuration space with Bus Master Enable, queues read from and written
//! to host memory through an IOVA table (an unmapped IOVA is a DMA fault, as behind an
//! IOMMU), completions with phase tags, one interrupt eventfd per completion queue, and
//! `engines` worker threads that encode with `openh264` or, on AV1 engines, `rav1e`. Faults can be injected
//! ([`Fault`]).
//!
//! Layout: `card` (the `DeviceIo` face, thread ownership, fault injection), `pci` (config
//! space), `regs` (controller registers, the enable/reset state machine, doorbells),
//! `queues` (submission and completion queues, completion posting, interrupts),
//! `controller` (shared state and the thread that fetches commands), `admin` and `io_cmd`
//! (command handlers), `dma` and `prp` (IOVA table and PRP walking), `params`, `session`
//! and `engine` (the encoders), `av1` (the AV1 encoder) and `av1_jobs` (AV1 commands held
//! until their temporal unit is out), `fault`, `config`. `tests/` drives the card only through
//! `DeviceIo`, with a small host-side queue builder.
//!
//! Threads: one controller thread fetches and dispatches I/O commands; admin commands run
//! in the thread that writes the admin doorbell, before the write returns (as a device
//! model may handle a register write synchronously); each engine thread encodes its queue
//! of frames in order and posts completions. The threads stop when the card is dropped.
//! Lock order: controller state, then an engine's queue or a session's pending changes; an
//! engine holds a session's encoder, then the controller state (only to write a finished
//! bitstream and post).

mod admin;
mod av1;
mod av1_jobs;
mod card;
mod config;
mod controller;
mod decode;
mod dma;
mod engine;
mod fault;
mod frames;
mod io_cmd;
mod params;
mod pci;
mod prp;
mod queues;
mod regs;
mod scale;
mod session;
#[cfg(test)]
mod tests;
mod transcode;

pub use av1::{cbr_config as av1_cbr_config, SPEED as AV1_SPEED, THREADS as AV1_THREADS};
pub use card::{EmuCounters, EmulatedCard};
pub use config::{EmuConfig, EngineCodec, AV1_PIXEL_RATE};
pub use fault::Fault;

use std::sync::{Mutex, MutexGuard};

/// Errors of the emulated card, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    #[error("invalid emulated card configuration for {card}: {reason}")]
    InvalidConfig { card: String, reason: String },
    #[error("starting thread {thread} of {card} failed")]
    SpawnThread {
        card: String,
        thread: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown fault kind {kind:?} (known: {known})")]
    UnknownFault { kind: String, known: String },
    #[error("invalid {kind} fault: {reason}")]
    InvalidFault { kind: &'static str, reason: String },
    #[error("injecting a fault into {card}: engine {engine} does not exist ({engines} engines)")]
    InjectEngine {
        card: String,
        engine: u8,
        engines: u8,
    },
}

/// Locks a mutex, recovering the data if a thread panicked while holding it: the device
/// model keeps answering rather than propagating a poisoned lock to the host.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
