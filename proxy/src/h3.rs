//! HTTP/3: QUIC (quinn) on the same port number as TCP, over UDP, ALPN `h3`,
//! through the same request stages as h1/h2.
//!
//! The TLS side shares the TCP listener's certificate resolver, so a
//! certificate reload covers both. 0-RTT stays off. The UDP socket's buffers
//! are sized for throughput (quinn uses GSO/GRO where the kernel has them).
//! Limits: streams per connection, idle timeout, connections per source
//! (shared with TCP) and in total.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;

use crate::config::Limits;
use crate::forward::Inbound;
use crate::pipeline::{self, ConnInfo, Proto, Shared};
use crate::server::ServeError;
use crate::tls::{self, CertResolver, TlsError};

const MAX_STREAMS_PER_CONN: u32 = 128;
const MAX_CONNECTIONS: usize = 20_000;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const UDP_BUFFER: usize = 8 << 20;

/// Binds the QUIC endpoint on `addr` (UDP).
pub fn endpoint(
    resolver: Arc<CertResolver>,
    addr: SocketAddr,
    limits: &Limits,
) -> Result<Option<quinn::Endpoint>, ServeError> {
    let rustls_cfg = tls::server_config_with(resolver, &[b"h3"])?;
    let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
        .map_err(|e| ServeError::Tls(TlsError::Rustls(rustls::Error::General(e.to_string()))))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONN.into())
        // h3 control + QPACK encoder/decoder streams, and a little slack.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .stream_receive_window((4u32 << 20).into())
        .receive_window((16u32 << 20).into())
        .send_window(16 << 20);
    server.transport_config(Arc::new(transport));
    // Retry only matters under attack; handshake time is bounded by the header timeout.
    let _ = limits;
    let socket = udp_socket(addr).map_err(|source| ServeError::Bind { addr, source })?;
    let runtime = quinn::default_runtime().ok_or_else(|| ServeError::Bind {
        addr,
        source: std::io::Error::other("no async runtime for QUIC"),
    })?;
    let ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Some(ep))
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel may cap these (net.core.rmem_max).
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Accepts QUIC connections until the endpoint closes.
pub async fn serve(ep: quinn::Endpoint, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = ep.accept().await {
        let remote = incoming.remote_address();
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            shared.metrics.refused("connection_limit");
            incoming.refuse();
            continue;
        }
        let Some(slot) = shared.conn_limiter.acquire(remote.ip()) else {
            shared.metrics.refused("connection_limit");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            connection(incoming, shared.clone(), remote).await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>, remote: SocketAddr) {
    let conn = match tokio::time::timeout(shared.limits.header_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.metrics.tls_failure("other");
            tracing::debug!(src = %remote.ip(), error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_failure("timeout");
            return;
        }
    };
    let info = Arc::new(ConnInfo::new(remote, remote.ip(), Proto::H3, "TLSv1.3"));
    shared.metrics.connection(Proto::H3.index(), 1);
    let mut h3c: h3::server::Connection<h3_quinn::Connection, Bytes> =
        match h3::server::Connection::new(h3_quinn::Connection::new(conn)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(src = %remote.ip(), error = %e, "HTTP/3 setup failed");
                shared.metrics.connection(Proto::H3.index(), -1);
                return;
            }
        };
    let mut requests = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = h3c.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let shared = shared.clone();
                    let info = info.clone();
                    requests.spawn(async move {
                        if let Err(e) = request(resolver, &shared, &info).await {
                            tracing::info!(error = %e, "HTTP/3 request ended with an error");
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(src = %remote.ip(), error = %e, "HTTP/3 connection closed");
                    break;
                }
            },
            // Reap finished requests so the set does not grow on long connections.
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    // Dropping the connection closes it: let requests in flight finish first.
    while requests.join_next().await.is_some() {}
    shared.metrics.connection(Proto::H3.index(), -1);
}

async fn request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    shared: &Shared,
    info: &ConnInfo,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (req, stream) = resolver.resolve_request().await?;
    let (mut send, recv) = stream.split();
    // HTTP/3 has no "no body" marker but the stream's end: a GET (HEAD, …)
    // without Content-Length is forwarded bodiless, as over h1/h2, and its
    // receiving half is kept open until the response is sent.
    let bodiless = !req.headers().contains_key(http::header::CONTENT_LENGTH)
        && matches!(
            *req.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::DELETE
        );
    let (req, _keep_open) = if bodiless {
        (req.map(|()| Inbound::Empty), Some(recv))
    } else {
        (req.map(|()| Inbound::H3(recv)), None)
    };
    let resp = pipeline::handle(shared, info, req).await;
    let (parts, mut body) = resp.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    send.send_data(data).await?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    send.finish().await?;
    Ok(())
}
