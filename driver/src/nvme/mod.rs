//! NVMe transport: controller bring-up, admin and I/O queue pairs, PRPs, doorbells,
//! completions on eventfds or by polling, per-command timeouts with Abort.
//!
//! It speaks standard NVMe 1.4 over any [`DeviceIo`](crate::io::DeviceIo), so the same code
//! drives a VPU card, the emulated card and any other NVMe controller (QEMU's, through
//! VFIO). The device is not trusted: every completion entry is validated before it wakes
//! anybody, and the memory a command names stays mapped until the device completes it or
//! the controller is reset.
//!
//! - `command`: submission entries ([`Command`]), completions and typed status;
//! - `prp`: PRP1/PRP2 and PRP list construction;
//! - `queue`: one submission/completion queue pair, command ids, completion validation;
//! - `controller`: admin and I/O commands, timeouts with Abort, Identify, NVM I/O;
//! - `lifecycle`: bring-up, shutdown, reset;
//! - `vectors`: interrupt eventfds read by tokio tasks;
//! - `metrics`: counters tests and the daemon read.

mod command;
mod controller;
mod error;
#[doc(hidden)]
pub mod hostile;
mod lifecycle;
mod metrics;
mod prp;
mod queue;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod queue_tests;
mod registers;
mod vectors;

pub(crate) use command::read_struct;
pub use command::{Command, Completion, Status, VendorStatus};
pub use controller::{Controller, ControllerOptions};
pub use error::{NvmeError, ProtocolViolation};
pub use metrics::{NvmeMetrics, NvmeMetricsSnapshot};
