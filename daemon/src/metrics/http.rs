//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1 (hyper), on the address of
//! `[metrics]` in `vpud.toml`.
//!
//! It answers nothing else (404 for other paths, 405 for other methods) and bounds what a
//! client can hold: request heads of at most [`MAX_REQUEST_HEAD`] bytes, read within
//! [`HEADER_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections at once (more are closed at
//! once); a connection lives at most [`MAX_CONNECTION_AGE`] before it is closed after its
//! current response. The format follows the request's `Accept` header: OpenMetrics for
//! Prometheus, the classic text format for `curl` and `promtool`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::exposition::{self, Format};

/// Connections served at once; Prometheus needs one per scraping server.
pub const MAX_CONNECTIONS: usize = 16;
/// Size of a request's head (request line and headers); hyper's smallest buffer.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (Prometheus reconnects for the next scrape).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Time the response in progress gets once a connection is past its age.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Errors of the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("metrics.address = \"{address}\": listening for the metrics endpoint failed (is another program on this port?)")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics.address = \"{address}\": reading the bound address failed")]
    LocalAddress {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, endpoint.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
    address: SocketAddr,
}

impl Endpoint {
    /// Binds `address` (port 0: any free port; see [`Endpoint::address`]).
    pub async fn bind(address: SocketAddr) -> Result<Endpoint, HttpError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| HttpError::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| HttpError::LocalAddress { address, source })?;
        Ok(Endpoint {
            listener,
            address: bound,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves `registry` until the task is dropped or aborted.
    pub async fn serve(self, registry: Registry) {
        let registry = Arc::new(registry);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or similar: wait rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(%peer, "metrics endpoint: too many connections; closing");
                drop(stream);
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                serve_connection(stream, registry).await;
                drop(permit);
            });
        }
    }
}

/// Serves one connection, within its age.
async fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let registry = Arc::clone(&registry);
        async move { Ok::<_, Infallible>(respond(&req, &registry)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
            }
        }
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

/// The response to one request.
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: vpud serves /metrics only\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET /metrics\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    match exposition::encode(registry, format) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            r
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
