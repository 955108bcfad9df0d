//! The plugin's side of the kubelet: serving `DevicePlugin` on a Unix socket in the
//! kubelet's device plugin directory, registering it with the kubelet's `Registration`
//! service, and doing both again when the kubelet restarts.
//!
//! A restarting kubelet removes every socket in the directory and creates its own
//! (`kubelet.sock`) anew; the plugin notices either (its socket gone, or `kubelet.sock`
//! a different file) within [`WATCH_INTERVAL`], serves on a new socket and registers
//! again. Registration is retried until the kubelet answers.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use crate::api::{
    self, device_plugin_server::DevicePluginServer, registration_client::RegistrationClient,
};
use crate::plugin::Plugin;
use crate::units::RESOURCE_NAME;

/// How often the plugin checks whether the kubelet restarted.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// How long one `Register` call may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Between registration attempts.
const REGISTER_RETRY: Duration = Duration::from_millis(500);

/// Where the kubelet and the plugin meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletOptions {
    /// The kubelet's device plugin directory.
    pub dir: PathBuf,
    /// The kubelet's registration socket in `dir`.
    pub kubelet_socket: String,
    /// The plugin's socket in `dir` (`RegisterRequest.endpoint`).
    pub endpoint: String,
}

impl Default for KubeletOptions {
    fn default() -> Self {
        KubeletOptions {
            dir: PathBuf::from("/var/lib/kubelet/device-plugins"),
            kubelet_socket: "kubelet.sock".into(),
            endpoint: "vpud-encode-units.sock".into(),
        }
    }
}

/// Why serving or registering failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("binding the plugin socket {path} failed")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the kubelet at {path} failed")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the kubelet refused the registration: {0}")]
    Refused(tonic::Status),
    #[error("the kubelet did not answer the registration within {0:?}")]
    Timeout(Duration),
}

/// A gRPC channel over the Unix socket at `path` (the kubelet's or a plugin's).
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API and unused: the connector ignores it.
    Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Registers the plugin once.
pub async fn register(opts: &KubeletOptions) -> Result<(), KubeletError> {
    let path = opts.dir.join(&opts.kubelet_socket);
    let call = async {
        let channel = unix_channel(&path)
            .await
            .map_err(|source| KubeletError::Connect {
                path: path.clone(),
                source,
            })?;
        RegistrationClient::new(channel)
            .register(api::RegisterRequest {
                version: api::VERSION.into(),
                endpoint: opts.endpoint.clone(),
                resource_name: RESOURCE_NAME.into(),
                options: Some(api::DevicePluginOptions {
                    pre_start_required: false,
                    get_preferred_allocation_available: true,
                }),
            })
            .await
            .map_err(KubeletError::Refused)?;
        Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| KubeletError::Timeout(REGISTER_TIMEOUT))?
}

/// The identity of a file (device, inode), to tell a recreated socket from the old one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Serves `plugin` and keeps it registered with the kubelet until `shutdown` resolves.
pub async fn serve(
    plugin: Arc<Plugin>,
    opts: KubeletOptions,
    shutdown: impl std::future::Future,
) -> Result<(), KubeletError> {
    tokio::pin!(shutdown);
    let socket = opts.dir.join(&opts.endpoint);
    loop {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|source| KubeletError::Bind {
            path: socket.clone(),
            source,
        })?;
        let ours = identity(&socket);
        let server = tokio::spawn(
            Server::builder()
                .add_service(DevicePluginServer::from_arc(Arc::clone(&plugin)))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        tracing::info!(socket = %socket.display(), "serving the device plugin");
        // Register, retrying until the kubelet answers (or its socket is replaced, or we
        // are stopped).
        let kubelet = loop {
            match register(&opts).await {
                Ok(()) => {
                    tracing::info!(resource = RESOURCE_NAME, "registered with the kubelet");
                    break identity(&opts.dir.join(&opts.kubelet_socket));
                }
                Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
            }
            tokio::select! {
                _ = &mut shutdown => {
                    server.abort();
                    let _ = std::fs::remove_file(&socket);
                    return Ok(());
                }
                _ = tokio::time::sleep(REGISTER_RETRY) => {}
            }
            if identity(&socket) != ours {
                break None;
            }
        };
        // Watch for the kubelet restarting.
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    server.abort();
                    let _ = std::fs::remove_file(&socket);
                    return Ok(());
                }
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            let ours_now = identity(&socket);
            let kubelet_now = identity(&opts.dir.join(&opts.kubelet_socket));
            if ours_now != ours || (kubelet_now.is_some() && kubelet_now != kubelet) {
                tracing::info!("the kubelet restarted; serving and registering again");
                break;
            }
        }
        server.abort();
    }
}
