//! Stage 5 of the request path: send the canonical request upstream and
//! stream the response back.
//!
//! Bodies are never buffered: hyper's `Incoming` request body is handed to
//! the upstream connection as it arrives and the upstream's body is handed
//! back the same way, so back-pressure runs end to end and a 10 GiB image
//! never sits in memory. Headers are rebuilt, not patched: hop-by-hop headers,
//! those named in `Connection`, and every client-sent identity or forwarding
//! header (`X-Forwarded-*`, `Forwarded`, `X-Dermgate-*`, `X-Real-IP`, … in any
//! case and with `_` for `-`) are dropped, then the proxy's own are added.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{RouteConfig, Timeouts};
use crate::tls::{self, TlsError};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The request body on its way upstream: the client's stream, passed through
/// frame by frame, telling the forwarder when its last byte has gone out (the
/// upstream's response-head timeout only starts then, so a slow 10 GiB upload
/// is never cut off as a "timeout").
pub struct RequestBody {
    inner: Incoming,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RequestBody {
    /// Wraps `inner`; `sent` fires when the body has been read to its end.
    fn new(inner: Incoming) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = Self {
            inner,
            sent: Some(tx),
        };
        if http_body::Body::is_end_stream(&body.inner) {
            body.finish();
        }
        (body, rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = &polled {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream endpoints of one route and their connection pool.
pub struct UpstreamPool {
    client: Client<Connector, RequestBody>,
    endpoints: Box<[(Scheme, Authority)]>,
    next: AtomicUsize,
    timeouts: Timeouts,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Why forwarding failed. Each maps to a clean 502 or 504 page.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection could be made (refused, TLS verification failed, …).
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// The upstream did not send a response head in time.
    #[error("upstream response timed out")]
    Timeout,
    /// The upstream sent something that is not HTTP, or closed early.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

impl UpstreamPool {
    /// Builds the pool for a route: TLS 1.3 verified against `upstream_ca`,
    /// plaintext only where the route allows it.
    pub fn new(route: &RouteConfig) -> Result<Self, TlsError> {
        let roots = match &route.upstream_ca {
            Some(ca) => tls::load_roots(ca)?,
            None => rustls::RootCertStore::empty(),
        };
        let tls_cfg = tls::upstream_client_config(roots)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(route.timeouts.connect));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_cfg);
        let connector = if route.allow_plaintext {
            builder.https_or_http().enable_http1().wrap_connector(http)
        } else {
            builder.https_only().enable_http1().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(route.timeouts.idle)
            .set_host(false)
            .build(connector);
        let endpoints = route
            .upstreams
            .iter()
            .filter_map(|u| Some((u.uri.scheme()?.clone(), u.uri.authority()?.clone())))
            .collect();
        Ok(Self {
            client,
            endpoints,
            next: AtomicUsize::new(0),
            timeouts: route.timeouts,
        })
    }

    fn pick(&self) -> Option<&(Scheme, Authority)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.endpoints.get(i)
    }

    /// Sends `req` (already carrying the proxy's headers) to the next endpoint.
    /// `path_and_query` is the canonical encoded path plus the raw query.
    pub async fn send(
        &self,
        req: Request<Incoming>,
        path_and_query: PathAndQuery,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (parts, body) = req.into_parts();
        let (body, body_sent) = RequestBody::new(body);
        let mut req = Request::from_parts(parts, body);
        let (scheme, authority) = self
            .pick()
            .ok_or_else(|| ForwardError::Connect("no upstream endpoints".into()))?;
        *req.uri_mut() = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ForwardError::Protocol(e.to_string()))?;
        *req.version_mut() = http::Version::HTTP_11;
        // The response head must arrive within `header` of the request's last byte.
        let header_timeout = self.timeouts.header;
        let deadline = async move {
            // A dropped sender means the body was abandoned; the request errors out itself.
            if body_sent.await.is_ok() {
                tokio::time::sleep(header_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = deadline => Err(ForwardError::Timeout),
            result = self.client.request(req) => match result {
                Ok(resp) => Ok(resp),
                Err(e) if e.is_connect() => Err(ForwardError::Connect(error_chain(&e))),
                Err(e) => Err(ForwardError::Protocol(error_chain(&e))),
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Header names (after mapping `_` to `-`) a client may use to impersonate
/// the proxy or an earlier hop.
const SPOOFABLE_EXACT: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded",
];
const SPOOFABLE_PREFIX: &[&str] = &["x-forwarded-", "x-dermgate-"];

fn eq_dash(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name
            .iter()
            .zip(want)
            .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// True for a client-sent header that claims to come from a proxy.
pub fn is_spoofable(name: &str) -> bool {
    let n = name.as_bytes();
    SPOOFABLE_EXACT.iter().any(|w| eq_dash(n, w.as_bytes()))
        || SPOOFABLE_PREFIX
            .iter()
            .any(|p| n.len() > p.len() && eq_dash(&n[..p.len()], p.as_bytes()))
}

fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// True for a header that must not cross the proxy in either direction.
fn is_hop_by_hop(name: &HeaderName, named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || named.contains(name)
}

/// Rebuilds request headers for the upstream: drops hop-by-hop, Connection-named
/// and spoofable headers, then adds `Host` and the proxy's own forwarding headers.
pub fn upstream_request_headers(src: HeaderMap, host: &str, client: IpAddr) -> HeaderMap {
    let named = connection_named(&src);
    let mut out = HeaderMap::with_capacity(src.len() + 5);
    let mut current: Option<HeaderName> = None;
    for (name, value) in src {
        if let Some(n) = name {
            current = Some(n);
        }
        let Some(n) = &current else { continue };
        if is_hop_by_hop(n, &named) || is_spoofable(n.as_str()) || n == header::HOST {
            continue;
        }
        out.append(n.clone(), value);
    }
    let for_node = match client {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    if let Ok(v) = HeaderValue::from_str(host) {
        out.insert(header::HOST, v.clone());
        out.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("for={for_node};proto=https;host={host}")) {
        out.insert(header::FORWARDED, v);
    }
    out
}

/// Cleans the upstream's response headers: drops hop-by-hop and Connection-named.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    for n in named {
        headers.remove(n);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spoofable_names() {
        for n in [
            "x-forwarded-for",
            "X-Forwarded-Host",
            "x_forwarded_for",
            "X_FORWARDED-PROTO",
            "forwarded",
            "x-dermgate-assertion",
            "x_dermgate_user",
            "x-real-ip",
            "x-original-url",
        ] {
            assert!(is_spoofable(n), "{n}");
        }
        for n in [
            "x-forwardedfoo",
            "authorization",
            "x-dermgate",
            "range",
            "accept",
        ] {
            assert!(!is_spoofable(n), "{n}");
        }
    }

    #[test]
    fn rebuilds_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert(
            HeaderName::from_static("x_dermgate_assertion"),
            "forged".parse().unwrap(),
        );
        h.insert("host", "evil".parse().unwrap());
        h.insert("range", "bytes=0-1".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        let out = upstream_request_headers(h, "ehr.example.com", "10.1.2.3".parse().unwrap());
        assert!(out.get("x-secret").is_none());
        assert!(out.get("connection").is_none());
        assert!(out.get("x_dermgate_assertion").is_none());
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["host"], "ehr.example.com");
        assert_eq!(out["range"], "bytes=0-1");
        assert_eq!(out.get_all("accept").iter().count(), 2);
        assert_eq!(
            out["forwarded"],
            "for=10.1.2.3;proto=https;host=ehr.example.com"
        );
    }
}
