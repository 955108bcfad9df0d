//! `--emulate N`: a private bus with a daemon and N emulated cards inside this process, for
//! the length of one command. Each card has two H.264 engines and one AV1 engine, so that
//! either codec can be tried.

use super::{error_chain, CtlError};
use vpud::config::Config;
use vpud::service::Embedded;
use vpud_client::Client;

/// Encode engines of each private emulated card ...
pub const PRIVATE_ENGINES: u8 = 3;
/// ... of which this many encode AV1.
pub const PRIVATE_AV1_ENGINES: u8 = 1;

/// A private daemon and a client connected to it.
#[derive(Debug)]
pub struct PrivateDaemon {
    embedded: Embedded,
    client: Client,
}

impl PrivateDaemon {
    /// Starts a private bus and a daemon with `cards` emulated cards on it, and connects.
    pub async fn start(cards: u32) -> Result<PrivateDaemon, CtlError> {
        let mut config = Config::default();
        config.emulated.engines = PRIVATE_ENGINES;
        config.emulated.av1_engines = PRIVATE_AV1_ENGINES;
        let embedded =
            Embedded::start(cards, config)
                .await
                .map_err(|e| CtlError::PrivateDaemon {
                    cards,
                    what: error_chain(&e),
                })?;
        let client = Client::connect(Some(embedded.address())).await?;
        Ok(PrivateDaemon { embedded, client })
    }

    /// The client connected to the private daemon.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The private bus's address.
    pub fn address(&self) -> &str {
        self.embedded.address()
    }

    /// Stops the daemon and its bus.
    pub async fn stop(self) -> Result<(), CtlError> {
        drop(self.client);
        self.embedded
            .stop()
            .await
            .map_err(|e| CtlError::PrivateDaemon {
                cards: 0,
                what: format!("stopping it failed: {}", error_chain(&e)),
            })
    }
}
