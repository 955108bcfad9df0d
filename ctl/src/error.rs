//! Errors of `vpuctl`'s commands.

use std::io;
use std::path::PathBuf;

use vpu_driver::media::MediaError;

use super::mp4::Mp4Error;
use vpud_client::ClientError;

/// Everything a `vpuctl` command can fail with; the binary prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A call to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Options that do not go together, or a value the command cannot use.
    #[error("{0}")]
    Usage(String),
    /// The input file could not be read.
    #[error("reading {path} failed")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The Y4M input is malformed or unsupported.
    #[error("reading {path} failed")]
    Media {
        path: PathBuf,
        #[source]
        source: MediaError,
    },
    /// The input is readable but unusable (size, frame count).
    #[error("input {path}: {what}")]
    BadInput { path: PathBuf, what: String },
    /// An output file or directory could not be created.
    #[error("creating {path} failed")]
    CreateOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing an Annex-B output failed.
    #[error("writing {path} failed")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing an MP4 output failed.
    #[error("writing mp4 {path} failed")]
    Mp4 {
        path: PathBuf,
        #[source]
        source: Mp4Error,
    },
    /// JSON output could not be produced.
    #[error("encoding JSON failed")]
    Json(#[source] serde_json::Error),
    /// The private daemon of `--emulate` or `demo` did not start or stop cleanly.
    #[error("starting a private vpud with {cards} emulated card(s) failed: {what}")]
    PrivateDaemon { cards: u32, what: String },
    /// The transcode input could not be opened or read, or is not usable.
    #[error(transparent)]
    Source(#[from] crate::transcode::source::SourceError),
    /// The ladder does not fit the input.
    #[error(transparent)]
    Ladder(#[from] crate::transcode::ladder::LadderError),
    /// The transcode outputs could not be written.
    #[error(transparent)]
    Sink(#[from] crate::transcode::sink::SinkError),
    /// A demo session task failed outside the client library.
    #[error("session {session}: {what}")]
    Session { session: String, what: String },
}

/// An error and its sources on one line, each source once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        // Some errors repeat their source's text in their own message.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
