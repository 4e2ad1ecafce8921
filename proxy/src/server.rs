//! The listeners: TCP (TLS 1.3, then HTTP/2 or HTTP/1.1 by ALPN), the admin
//! listener, the optional port-80 redirector, and certificate reloads.
//!
//! Listeners only adapt protocols: each request goes to
//! [`crate::pipeline::handle`]. Before TLS, a connection is checked against
//! the per-source connection limit and, for trusted load balancers, its
//! PROXY v2 header is read; slow or stuck clients are bounded by the header
//! timeout (handshake and request head alike).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::pipeline::{self, ConnInfo, Proto, Shared};
use crate::proxy_protocol;
use crate::tls::{self, CertResolver, CertStore, TlsError};

const H2_MAX_STREAMS: u32 = 128;
/// HTTP/2 streams a client may reset before the server accepted them, before the
/// connection is closed with GOAWAY (rapid reset, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server itself may reset for protocol errors before closing.
const H2_MAX_LOCAL_RESETS: usize = 64;
const CERT_POLL: Duration = Duration::from_secs(2);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material was refused.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The policy was refused.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The audit trail could not be opened.
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Keys, the session store or the IdP client could not be set up.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// Alerts or audit forwarding could not be set up.
    #[error("{0}")]
    Setup(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// One TCP listener per worker: the first bound as configured, the others on
/// the same address with `SO_REUSEPORT`, so the kernel spreads connections
/// over the workers.
fn tcp_listeners(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, ServeError> {
    // SO_REUSEPORT would let a second dermgate (an old one still running, say)
    // share the port without a word: first make sure nobody listens there.
    if addr.port() != 0 {
        probe_free(addr).map_err(|source| ServeError::Bind { addr, source })?;
    }
    let first = reuse_port_listener(addr).map_err(|source| ServeError::Bind { addr, source })?;
    let local = first
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let mut all = vec![first];
    for _ in 1..workers {
        match reuse_port_listener(local) {
            Ok(l) => all.push(l),
            Err(e) => {
                tracing::warn!(error = %e, "no SO_REUSEPORT listener; fewer TCP workers");
                break;
            }
        }
    }
    Ok(all)
}

/// Binds (and releases) `addr` without SO_REUSEPORT: fails with "address in
/// use" while any other socket listens there.
fn probe_free(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections of an earlier run in TIME_WAIT are no obstacle.
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// How many TCP workers: `TOKIO_WORKER_THREADS` when set, else the cores.
pub fn tcp_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

/// What every TCP worker needs.
#[derive(Clone)]
struct Worker {
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cfg: Arc<Config>,
}

impl Worker {
    /// Accepts connections on `listener` and serves them on this thread's
    /// runtime, until `stop` says so.
    async fn accept_loop(
        self,
        listener: std::net::TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "TCP listener could not be registered");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => {
                    match accepted {
                        Ok((tcp, peer)) => {
                            let Some(slot) = self.shared.conn_limiter.acquire(peer.ip()) else {
                                self.shared.metrics.refused("connection_limit");
                                tracing::debug!(src = %peer.ip(), "connection limit reached");
                                continue;
                            };
                            let _ = tcp.set_nodelay(true);
                            let w = self.clone();
                            tokio::spawn(async move {
                                connection(w.acceptor, w.shared, w.cfg, tcp, peer).await;
                                drop(slot);
                            });
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

/// A bound, not yet running proxy.
pub struct Proxy {
    cfg: Arc<Config>,
    /// One per TCP worker (see [`tcp_listeners`]).
    listeners: Vec<std::net::TcpListener>,
    admin: Option<TcpListener>,
    redirect: Option<TcpListener>,
    quic: Option<quinn::Endpoint>,
    acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Compiles `cfg` and binds its listeners.
    pub async fn bind(cfg: &Config) -> Result<Self, ServeError> {
        let resolver = Arc::new(CertResolver::new(CertStore::load(&cfg.tls)?));
        let server_cfg = tls::server_config_with(resolver.clone(), tls::ALPN_TCP)?;
        let listeners = tcp_listeners(cfg.listen.addr, tcp_workers())?;
        let local = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .ok_or_else(|| ServeError::Bind {
                addr: cfg.listen.addr,
                source: std::io::Error::other("no listener"),
            })?;
        let quic = crate::h3::endpoint(
            resolver.clone(),
            SocketAddr::new(local.ip(), local.port()),
            &cfg.limits,
        )?;
        let alt_svc_port = quic.as_ref().map(|_| local.port());
        let admin = match cfg.listen.admin {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let redirect = match cfg.listen.redirect_http {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let identity = match &cfg.identity {
            Some(id) => {
                let s = Arc::new(crate::identity::IdentityService::start(cfg, id).await?);
                crate::identity::streams::spawn_watcher(&s);
                Some(s)
            }
            None => None,
        };
        let shared = Arc::new(
            Shared::new(cfg, alt_svc_port, identity).map_err(|e| match e {
                pipeline::StartError::Tls(e) => ServeError::Tls(e),
                pipeline::StartError::Policy(e) => ServeError::Policy(e),
                pipeline::StartError::Audit(e) => ServeError::Audit(e),
                pipeline::StartError::Syslog(e) => ServeError::Setup(format!("audit syslog: {e}")),
                pipeline::StartError::Alerts(e) => ServeError::Setup(e.to_string()),
            })?,
        );
        Ok(Self {
            cfg: Arc::new(cfg.clone()),
            listeners,
            admin,
            redirect,
            quic,
            acceptor: TlsAcceptor::from(server_cfg),
            resolver,
            shared,
        })
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners.first().and_then(|l| l.local_addr().ok())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound redirect address.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound QUIC (HTTP/3) address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.admin {
            tasks.spawn(crate::admin::serve(l, self.shared.clone()));
        }
        if let Some(l) = self.redirect {
            let port = self
                .listeners
                .first()
                .and_then(|l| l.local_addr().ok())
                .map_or(443, |a| a.port());
            tasks.spawn(crate::admin::serve_redirect(l, self.shared.clone(), port));
        }
        if let Some(ep) = self.quic.clone() {
            tasks.spawn(crate::h3::serve(ep, self.shared.clone()));
        }
        tasks.spawn(watch_certs(self.cfg.clone(), self.resolver.clone()));
        tasks.spawn(watch_expiry(self.cfg.clone(), self.shared.clone()));
        tasks.spawn(crate::health::run(self.shared.clone()));
        tasks.spawn(crate::policy::watch(self.shared.clone()));
        // Each TCP worker runs its own single-threaded runtime: a connection,
        // its requests and its upstream connections stay on one core (no
        // cross-thread wake-ups); the kernel spreads connections (SO_REUSEPORT).
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let worker = Worker {
            acceptor: self.acceptor.clone(),
            shared: self.shared.clone(),
            cfg: self.cfg.clone(),
        };
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let (w, stop) = (worker.clone(), stop_rx.clone());
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let started = std::thread::Builder::new()
                        .name(format!("dermgate-tcp-{i}"))
                        .spawn(move || {
                            crate::forward::set_worker(i + 1);
                            rt.block_on(w.accept_loop(listener, stop))
                        });
                    if let Err(e) = started {
                        tracing::error!(error = %e, "TCP worker thread could not start");
                    }
                }
                // No runtime of its own: this listener is served by the main one.
                Err(e) => {
                    tracing::warn!(error = %e, "TCP worker runtime could not start; using the shared one");
                    tasks.spawn(w.accept_loop(listener, stop));
                }
            }
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        if let Some(ep) = self.quic {
            ep.close(0u32.into(), b"shutting down");
        }
        tasks.abort_all();
    }
}

/// The address the client really has: the PROXY v2 header's, from a trusted
/// balancer; otherwise the TCP peer. `None` refuses the connection.
async fn client_address(
    shared: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let trusted = proxy_protocol::is_trusted(&shared.listen.trusted_proxies, peer.ip());
    if shared.listen.proxy_protocol && trusted {
        return match tokio::time::timeout(
            shared.limits.header_timeout,
            proxy_protocol::read_v2(tcp),
        )
        .await
        {
            Ok(Ok(Some(client))) => Some(client),
            Ok(Ok(None)) => Some(peer),
            Ok(Err(e)) => {
                shared.metrics.refused("bad_proxy_header");
                tracing::info!(src = %peer.ip(), error = %e, "refused: bad PROXY header from a trusted proxy");
                None
            }
            Err(_) => {
                shared.metrics.refused("bad_proxy_header");
                None
            }
        };
    }
    // Anyone else who sends a PROXY header is trying to claim an address.
    let mut first = [0u8; 12];
    if let Ok(Ok(n)) =
        tokio::time::timeout(shared.limits.header_timeout, tcp.peek(&mut first)).await
        && n >= 5
        && first[..n] == proxy_protocol::SIGNATURE[..n]
    {
        shared.metrics.refused("untrusted_proxy_header");
        tracing::info!(src = %peer.ip(), "refused: PROXY header from an untrusted peer");
        return None;
    }
    Some(peer)
}

fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{Error, PeerIncompatible, PeerMisbehaved};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic,
        )) => "protocol_version",
        Some(Error::NoApplicationProtocol) => "no_application_protocol",
        // The first byte is no TLS record type: plaintext (HTTP) on the TLS port.
        Some(Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => "plaintext",
        Some(
            Error::PeerMisbehaved(PeerMisbehaved::IllegalMiddleboxChangeCipherSpec)
            | Error::PeerMisbehaved(_),
        ) => "peer_misbehaved",
        _ => "other",
    }
}

/// Checks the server certificates and upstream CAs for expiry at start and
/// every 12 hours; one near expiry raises a `cert_expiry` alert.
async fn watch_expiry(cfg: Arc<Config>, shared: Arc<Shared>) {
    let mut files = CertStore::files(&cfg.tls);
    files.extend(cfg.routes.iter().filter_map(|r| r.upstream_ca.clone()));
    files.sort();
    files.dedup();
    loop {
        shared.alerts.check_certificates(&files);
        tokio::time::sleep(Duration::from_secs(12 * 3600)).await;
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) {
    let Some(client) = client_address(&shared, &mut tcp, peer).await else {
        return;
    };
    let tls = match tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = tls_failure_reason(&e);
            shared.metrics.tls_failure(reason);
            let kind = match reason {
                "plaintext" => Some("plaintext_refused"),
                "protocol_version" => Some("old_tls_refused"),
                _ => None,
            };
            if let Some(kind) = kind {
                // One alert per kind per quiet period, whatever the address:
                // a scanner's many addresses cannot flood the trail or the receiver.
                shared.alerts.raise(crate::alerts::Alert {
                    kind,
                    detail: if kind == "plaintext_refused" {
                        format!(
                            "a client ({}) spoke plaintext to the TLS port; refused",
                            client.ip()
                        )
                    } else {
                        format!(
                            "a client ({}) offered only TLS 1.2 or older; refused (TLS 1.3 only)",
                            client.ip()
                        )
                    },
                    ..Default::default()
                });
            }
            tracing::debug!(src = %client.ip(), reason, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_failure("timeout");
            tracing::debug!(src = %client.ip(), "TLS handshake timed out");
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
    let conn = Arc::new(ConnInfo::new(peer, client.ip(), proto, tls_label));
    shared.metrics.connection(proto.index(), 1);
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(pipeline::handle(&shared, &conn, req).await) }
        })
    };
    let io = TokioIo::new(tls);
    let header_bytes = usize::try_from(cfg.limits.header_bytes).unwrap_or(usize::MAX);
    let result = match proto {
        Proto::H2 => {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
                .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
                .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
                .enable_connect_protocol();
            b.serve_connection(io, svc).await
        }
        _ => {
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.limits.header_timeout)
                // hyper's minimum; the pipeline enforces header_bytes exactly.
                .max_buf_size(header_bytes.max(8192))
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
    };
    shared.metrics.connection(proto.index(), -1);
    if let Err(e) = result {
        // Requests hyper refused before they reached the pipeline are counted here.
        if e.is_parse_too_large() {
            shared.metrics.refused("header_too_large");
        } else if e.is_parse() || e.is_parse_status() {
            shared.metrics.refused("malformed_request");
        } else if e.is_timeout() {
            shared.metrics.refused("header_timeout");
        }
        tracing::debug!(src = %client.ip(), error = %e, "connection ended with an error");
    }
}

/// Reloads certificates on SIGHUP and when their files change. A bad new
/// certificate or key is refused with a log line; the old one keeps serving.
async fn watch_certs(cfg: Arc<Config>, resolver: Arc<CertResolver>) {
    let files = CertStore::files(&cfg.tls);
    let stamp = |files: &[std::path::PathBuf]| -> Vec<Option<SystemTime>> {
        files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut last = stamp(&files);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let by_signal = tokio::select! {
            () = signalled => true,
            () = tokio::time::sleep(CERT_POLL) => false,
        };
        let now = stamp(&files);
        if !by_signal && now == last {
            continue;
        }
        last = now;
        match CertStore::load(&cfg.tls) {
            Ok(store) => {
                resolver.replace(store);
                tracing::info!(
                    trigger = if by_signal { "SIGHUP" } else { "file change" },
                    "certificates reloaded"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate reload refused; still serving the previous certificates");
            }
        }
    }
}

/// True when `ip` is a loopback address.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}
