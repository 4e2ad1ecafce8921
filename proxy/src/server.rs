//! The TCP listener: TLS 1.3 handshake, then HTTP/2 or HTTP/1.1 by ALPN,
//! each request handed to [`crate::pipeline::handle`].
//!
//! The listener only adapts protocols: it owns no request logic. Slow or
//! stuck clients are bounded by a handshake timeout and hyper's header-read
//! timeout; header size is bounded by the read buffer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::pipeline::{self, ConnInfo, Proto, Shared, Snapshot};
use crate::tls::{self, TlsError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 64 * 1024;
const H2_MAX_STREAMS: u32 = 128;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material was refused.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Compiles `cfg` and binds its listener.
    pub async fn bind(cfg: &Config) -> Result<Self, ServeError> {
        let server_cfg = tls::server_config(&cfg.tls.cert, &cfg.tls.key)?;
        let snapshot = Snapshot::compile(cfg)?;
        let listener =
            TcpListener::bind(cfg.listen.addr)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: cfg.listen.addr,
                    source,
                })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(server_cfg),
            shared: Arc::new(Shared::new(snapshot)),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    match accepted {
                        Ok((tcp, peer)) => {
                            let _ = tcp.set_nodelay(true);
                            let acceptor = self.acceptor.clone();
                            let shared = self.shared.clone();
                            tokio::spawn(connection(acceptor, shared, tcp, peer));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(src = %peer.ip(), error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(src = %peer.ip(), "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let proto = match session.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        _ => Proto::H1,
    };
    let tls_label = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        _ => "unknown",
    };
    let conn = Arc::new(ConnInfo {
        peer,
        proto,
        tls: tls_label,
    });
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(&shared, &conn, req).await) }
    });
    let io = TokioIo::new(tls);
    let result = match proto {
        Proto::H2 => {
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .serve_connection(io, svc)
                .await
        }
        Proto::H1 => {
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(src = %peer.ip(), error = %e, "connection ended with an error");
    }
}
