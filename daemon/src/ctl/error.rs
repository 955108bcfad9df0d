//! Errors of `vpuctl`'s commands.

use std::io;
use std::path::PathBuf;

use vpu_driver::media::MediaError;

use super::mp4::Mp4Error;
use crate::client::ClientError;

/// Everything a `vpuctl` command can fail with; the binary prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("reading {path} failed")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path} failed")]
    Media {
        path: PathBuf,
        #[source]
        source: MediaError,
    },
    #[error("input {path}: {what}")]
    BadInput { path: PathBuf, what: String },
    #[error("creating {path} failed")]
    CreateOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path} failed")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing mp4 {path} failed")]
    Mp4 {
        path: PathBuf,
        #[source]
        source: Mp4Error,
    },
    #[error("encoding JSON failed")]
    Json(#[source] serde_json::Error),
    #[error("starting a private vpud with {cards} emulated card(s) failed: {what}")]
    PrivateDaemon { cards: u32, what: String },
    #[error("session {session}: {what}")]
    Session { session: String, what: String },
}
