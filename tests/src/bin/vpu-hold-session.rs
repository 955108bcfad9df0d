//! Test client: connects to the bus at the address given as the only argument, creates one
//! 640x360 session, prints its object path, and then holds the session (and its data
//! channel) until killed. Whole-system tests kill it with SIGKILL to check that the daemon
//! ends the sessions of clients that crash.

use std::time::Duration;

use anyhow::Context;
use vpu_tests::daemon::{create_session, params};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .context("usage: vpu-hold-session ADDRESS")?;
    let conn = zbus::connection::Builder::address(address.as_str())
        .build()
        .await?;
    let (path, channel) = create_session(&conn, &params(640, 360, 30)).await?;
    println!("{}", path.as_str());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        // Keep the connection and the channel alive.
        let _ = (&conn, &channel);
    }
}
