//! Load runs of vpud as a separate process on a private bus: the soak (sessions created,
//! encoding and closed for minutes while the daemon's resources are sampled) and the surge
//! (a burst of `CreateSession` at 100× the normal arrival rate while sessions encode at
//! their real frame rate). The `vpu-soak` and `vpu-surge` tools print their figures; the
//! `load` tests run short versions and assert their behaviour.
//!
//! - [`process`]: `vpud` as a child process with emulated cards and a configuration file;
//!   samples of its RSS, open descriptors, mapped frame buffers and DMA mappings;
//! - [`soak`]: the soak run; [`soak_report`]: its figures and verdict;
//! - [`surge`]: the surge run; [`surge_report`]: its figures and verdict.

pub mod process;
pub mod soak;
pub mod soak_report;
pub mod surge;
pub mod surge_report;
