//! `vpuctl`, the operator's and tester's command line, as a library: the binary parses
//! [`Cli`] and calls [`run`].
//!
//! - `status`, `cards`, `sessions`: the daemon's state as tables or JSON ([`list`]);
//! - `encode`: a Y4M or raw I420 file through one session into H.264 (Annex-B, MP4) or
//!   AV1 (IVF, MP4, OBU) ([`encode`]; the AV1 containers in [`av1`] and [`mp4`]);
//! - `transcode`: an H.264 input through an ABR ladder on one card into MP4s and HLS
//!   ([`transcode`]);
//! - `demo`: a private daemon with emulated cards, concurrent sessions of both codecs and a
//!   ladder ([`demo`]);
//! - `inject`: faults into emulated cards ([`inject`]).
//!
//! `--emulate N` runs a private daemon for the one command ([`private`]).

pub mod av1;
pub mod cli;
pub mod demo;
pub mod encode;
mod error;
pub mod inject;
mod input;
pub mod list;
pub mod mp4;
mod output;
pub mod private;
pub mod table;
pub mod transcode;

pub use cli::{Cli, Command};
pub use error::{error_chain, CtlError};
pub use vpud_client::annexb::{is_idr, nal_type, nal_units};

use private::PrivateDaemon;
use vpud_client::Client;

/// Runs one `vpuctl` command, printing its results on stdout.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    if let Command::Demo(args) = &cli.command {
        if cli.bus.is_some() || cli.emulate.is_some() {
            return Err(CtlError::Usage(
                "demo runs its own private bus and emulated cards (use --cards N); drop --bus and --emulate"
                    .into(),
            ));
        }
        eprintln!(
            "starting a private bus and vpud with {} emulated card(s); {} session(s) of {} frames",
            args.cards, args.sessions, args.frames
        );
        let report = demo::demo(args).await?;
        print!("{}", demo::render(&report));
        return Ok(());
    }
    let input = match &cli.command {
        Command::Encode(args) => Some(encode::open_input(args)?),
        _ => None,
    };
    let prepared = match &cli.command {
        Command::Transcode(args) => Some(transcode::run::prepare(args)?),
        _ => None,
    };
    let private = match cli.emulate {
        Some(n) => {
            if cli.bus.is_some() {
                return Err(CtlError::Usage(
                    "--emulate runs a private bus; it cannot be combined with --bus".into(),
                ));
            }
            Some(PrivateDaemon::start(n).await?)
        }
        None => None,
    };
    let connected;
    let client = match &private {
        Some(p) => p.client(),
        None => {
            connected = Client::connect(cli.bus.as_deref()).await?;
            &connected
        }
    };
    let result = command(client, &cli.command, input, prepared).await;
    if let Some(p) = private {
        p.stop().await?;
    }
    print!("{}", result?);
    Ok(())
}

async fn command(
    client: &Client,
    command: &Command,
    input: Option<encode::Input>,
    prepared: Option<transcode::run::Prepared>,
) -> Result<String, CtlError> {
    match command {
        Command::Status(a) => list::status(client, a.json).await,
        Command::Cards(a) => list::cards(client, a.json).await,
        Command::Sessions(a) => list::sessions(client, a.json).await,
        Command::Inject(a) => inject::inject(client, a).await,
        Command::Encode(a) => {
            let input = input.ok_or_else(|| CtlError::Usage("encode needs an input".into()))?;
            let summary = encode::encode(client, a, input).await?;
            Ok(encode::summary_line(&summary, &a.output))
        }
        Command::Transcode(a) => {
            let prepared =
                prepared.ok_or_else(|| CtlError::Usage("transcode needs an input".into()))?;
            let summary = transcode::run::transcode(client, a, prepared).await?;
            Ok(transcode::run::render(&summary))
        }
        Command::Demo(_) => Err(CtlError::Usage("demo is run on its own".into())),
    }
}
