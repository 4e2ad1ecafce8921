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
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::config::{RouteConfig, Timeouts};
use crate::metrics::{Metrics, RouteMetrics};
use crate::tls::{self, TlsError};

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 1024;

/// Errors of bodies in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as it arrives from any listener.
pub enum Inbound {
    /// HTTP/1.1 and HTTP/2 (hyper).
    Hyper(Incoming),
    /// HTTP/3: the receiving half of the request stream.
    H3(h3::server::RequestStream<h3_quinn::RecvStream, Bytes>),
    /// A body checked against its `Content-Digest`/`Repr-Digest` (integrity routes).
    Integrity(Box<IntegrityBody>),
    /// No body.
    Empty,
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H3(s) => match s.poll_recv_data(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Some(mut buf))) => {
                    let n = buf.remaining();
                    Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(n)))))
                }
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            },
            Self::Integrity(b) => Pin::new(b.as_mut()).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::H3(_) => false,
            Self::Integrity(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::H3(_) => SizeHint::default(),
            Self::Integrity(b) => b.inner.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An upload whose digest did not match the one its sender stated.
#[derive(Debug, thiserror::Error)]
#[error("request body does not match its Content-Digest/Repr-Digest")]
pub struct DigestMismatch;

/// SHA-256 of a body computed while it streams (no buffering beyond one
/// frame). When the sender stated a digest, the last frame is held back
/// until the digest is checked, so on a mismatch the upstream never receives
/// the end of the body and its connection is reset: a partial or damaged
/// object is never committed.
pub struct IntegrityBody {
    inner: Inbound,
    hash: aws_lc_rs::digest::Context,
    expected: Option<Vec<u8>>,
    held: Option<Bytes>,
    trailers: Option<Frame<Bytes>>,
    done: bool,
    result: Arc<std::sync::OnceLock<String>>,
}

impl IntegrityBody {
    /// Wraps `inner`; the hex digest is published into `result` at the end.
    pub fn new(
        inner: Inbound,
        expected: Option<Vec<u8>>,
        result: Arc<std::sync::OnceLock<String>>,
    ) -> Self {
        Self {
            inner,
            hash: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            expected,
            held: None,
            trailers: None,
            done: false,
            result,
        }
    }
}

impl Body for IntegrityBody {
    type Data = Bytes;
    type Error = BoxError;

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none() && self.trailers.is_none()
    }

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                // Verified: release the held data, then any trailers, then the end.
                if let Some(b) = self.held.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                return Poll::Ready(self.trailers.take().map(Ok));
            }
            let end = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.hash.update(&data);
                        if let Some(prev) = self.held.replace(data) {
                            return Poll::Ready(Some(Ok(Frame::data(prev))));
                        }
                        continue;
                    }
                    // Trailers end the data: check the digest before anything more goes out.
                    Err(trailers) => Some(trailers),
                },
                Poll::Ready(None) => None,
            };
            self.trailers = end;
            let digest = self.hash.clone().finish();
            let _ = self.result.set(hex_of(digest.as_ref()));
            self.done = true;
            if let Some(want) = &self.expected
                && want.as_slice() != digest.as_ref()
            {
                self.held = None;
                self.trailers = None;
                return Poll::Ready(Some(Err(Box::new(DigestMismatch))));
            }
        }
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter()
        .flat_map(|x| {
            [
                b"0123456789abcdef"[usize::from(x >> 4)],
                b"0123456789abcdef"[usize::from(x & 15)],
            ]
        })
        .map(char::from)
        .collect()
}

/// A `Content-Digest`/`Repr-Digest` header that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed Content-Digest or Repr-Digest header")]
pub struct BadDigestHeader;

/// The SHA-256 an upload states in `Content-Digest` or `Repr-Digest` (RFC 9530):
/// `sha-256=:BASE64:`. `Err` when a digest header is present but malformed.
pub fn stated_sha256(headers: &HeaderMap) -> Result<Option<Vec<u8>>, BadDigestHeader> {
    use base64::Engine;
    for name in ["content-digest", "repr-digest"] {
        for v in headers.get_all(name) {
            let v = v.to_str().map_err(|_| BadDigestHeader)?;
            for item in v.split(',') {
                let Some((alg, val)) = item.trim().split_once('=') else {
                    return Err(BadDigestHeader);
                };
                if alg.trim().eq_ignore_ascii_case("sha-256") {
                    let b64 = val
                        .trim()
                        .strip_prefix(':')
                        .and_then(|x| x.strip_suffix(':'))
                        .ok_or(BadDigestHeader)?;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| BadDigestHeader)?;
                    if raw.len() != 32 {
                        return Err(BadDigestHeader);
                    }
                    return Ok(Some(raw));
                }
            }
        }
    }
    Ok(None)
}

/// The request body passed a route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body")]
pub struct BodyTooLarge;

/// The request body on its way upstream: the client's stream, passed through
/// frame by frame. It counts bytes, stops at `max_body` (so the upstream never
/// receives an oversized body in full), and tells the forwarder when its last
/// byte has gone out: the upstream's response-head timeout only starts then,
/// so a slow 10 GiB upload is never cut off as a "timeout".
pub struct RequestBody {
    inner: Inbound,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
    /// Set once the whole body has gone upstream (`None`: there was none).
    done: Option<Arc<AtomicBool>>,
    bytes: u64,
    max: u64,
    metrics: Arc<RouteMetrics>,
    counter: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    fn new(
        inner: Inbound,
        max: Option<u64>,
        metrics: Arc<RouteMetrics>,
        counter: Option<Arc<AtomicU64>>,
    ) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let mut body = Self {
            inner,
            sent: Some(tx),
            done,
            bytes: 0,
            max: max.unwrap_or(u64::MAX),
            metrics,
            counter,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        (body, rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
        if let Some(d) = &self.done {
            d.store(true, Ordering::Release);
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.metrics.bytes(self.bytes, 0);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                    if let Some(c) = &self.counter {
                        c.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    if self.bytes > self.max {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once a response body ends: bytes sent, and its SHA-256 when hashed.
pub type OnComplete = Box<dyn FnOnce(u64, Option<String>) + Send + Sync>;

/// The upstream's response body on its way to the client, counted.
pub struct ResponseBody {
    inner: Incoming,
    bytes: u64,
    metrics: Arc<RouteMetrics>,
    on_complete: Option<OnComplete>,
    hash: Option<aws_lc_rs::digest::Context>,
    cut: Option<Arc<crate::identity::streams::StreamFlag>>,
    /// The upstream connection, back to its pool once this body has ended
    /// and the request's own body has gone (an upstream may answer before an
    /// upload ends; the connection is not free until it has).
    release: Option<Release>,
    ended: bool,
}

/// A pooled connection waiting for its exchange to end.
struct Release {
    idle: Arc<IdleConns>,
    sender: http1::SendRequest<RequestBody>,
    request_done: Option<Arc<AtomicBool>>,
}

/// The stream was cut because its session ended.
#[derive(Debug, thiserror::Error)]
#[error("the session of this stream ended")]
pub struct SessionEnded;

impl ResponseBody {
    /// Ends the body with an error (the client sees a reset, never a clean
    /// but truncated end) once `flag` is closed.
    pub fn cut_when(&mut self, flag: Arc<crate::identity::streams::StreamFlag>) {
        self.cut = Some(flag);
    }

    /// Runs `f` with the body bytes sent (and the SHA-256, when hashing) once
    /// the response ends or is abandoned.
    pub fn on_complete(&mut self, f: OnComplete) {
        self.on_complete = Some(f);
    }

    /// Hashes the body as it streams (integrity routes).
    pub fn hash(&mut self) {
        self.hash = Some(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A connection whose response was read to the end is reused; one
        // abandoned half-way is closed (its remaining bytes are not ours).
        if let Some(r) = self.release.take()
            && (self.ended || self.inner.is_end_stream())
            && r.request_done
                .as_ref()
                .is_none_or(|d| d.load(Ordering::Acquire))
        {
            r.idle.put(r.sender);
        }
        self.metrics.bytes(0, self.bytes);
        if let Some(f) = self.on_complete.take() {
            let sha = self.hash.take().map(|h| hex_of(h.finish().as_ref()));
            f(self.bytes, sha);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(flag) = &self.cut {
            if flag.is_closed() {
                return Poll::Ready(Some(Err(Box::new(SessionEnded))));
            }
            flag.register(cx.waker());
        }
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error);
        if let Poll::Ready(None) = &polled {
            self.ended = true;
        }
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.bytes += d.len() as u64;
            if let Some(h) = self.hash.as_mut() {
                h.update(d);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One upstream endpoint and what is known of its health.
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    /// Where to connect, and how (TLS with its server name, or plaintext).
    dial: Dial,
    idle: Arc<IdleConns>,
    healthy: AtomicBool,
    /// Consecutive active-check failures.
    fails: AtomicU32,
    /// Passive health: not picked before this instant (ms since pool creation).
    down_until_ms: AtomicU64,
    gauge: Arc<AtomicI64>,
}

impl Endpoint {
    fn usable(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// `scheme://authority`, for logs and metrics labels.
    pub fn label(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// How to reach an endpoint.
enum Dial {
    Plain,
    Tls(tokio_rustls::TlsConnector, ServerName<'static>),
}

thread_local! {
    /// The TCP worker this thread is (0: the main runtime). Idle upstream
    /// connections are kept per worker: a connection's task runs on the
    /// worker that opened it, so its requests stay there too.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as TCP worker `n` (1-based; see `server::Worker`).
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n));
}

type IdleList = std::collections::VecDeque<(Instant, http1::SendRequest<RequestBody>)>;

/// Idle HTTP/1.1 connections to one endpoint, one list per worker, newest
/// last (reused first, so the oldest age out). A worker only touches its own
/// list, and the lock is held for a push or a pop, never across an await.
pub struct IdleConns {
    lists: Box<[std::sync::Mutex<IdleList>]>,
    /// Connections idle longer than this are closed (`timeouts.idle`).
    max_idle: Duration,
}

impl IdleConns {
    fn new(max_idle: Duration, workers: usize) -> Self {
        Self {
            lists: (0..=workers).map(|_| std::sync::Mutex::default()).collect(),
            max_idle,
        }
    }

    /// This worker's list (`lists` is never empty).
    fn mine(&self) -> Option<std::sync::MutexGuard<'_, IdleList>> {
        let i = WORKER.with(std::cell::Cell::get) % self.lists.len().max(1);
        self.lists
            .get(i)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn put(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let Some(mut v) = self.mine() else { return };
        // The oldest ones age out here, so a quiet pool does not hold dead sockets.
        while v
            .front()
            .is_some_and(|(since, s)| s.is_closed() || since.elapsed() >= self.max_idle)
        {
            v.pop_front();
        }
        if v.len() < MAX_IDLE {
            v.push_back((Instant::now(), sender));
        }
    }

    fn take(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut v = self.mine()?;
        while let Some((since, sender)) = v.pop_back() {
            if !sender.is_closed() && since.elapsed() < self.max_idle {
                return Some(sender);
            }
        }
        None
    }
}

/// The upstream endpoints of one route and their connection pool.
pub struct UpstreamPool {
    endpoints: Box<[Endpoint]>,
    next: AtomicUsize,
    timeouts: Timeouts,
    max_body: Option<u64>,
    health: Option<PathAndQuery>,
    started: Instant,
    metrics: Arc<RouteMetrics>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// Why forwarding failed. Each maps to a clean page.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection could be made (refused, unreachable, …).
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// The TLS handshake with the upstream failed (certificate not verified,
    /// no TLS 1.3, plaintext where TLS was expected): an encryption failure.
    #[error("upstream TLS failed: {0}")]
    Tls(String),
    /// The upstream did not send a response head in time.
    #[error("upstream response timed out")]
    Timeout,
    /// The upstream sent something that is not HTTP, or closed early.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// Every endpoint is out of service.
    #[error("no healthy upstream")]
    NoHealthy,
    /// The request body passed `max_body`.
    #[error("request body too large")]
    TooLarge,
    /// The upload did not match its stated digest.
    #[error("request body digest mismatch")]
    DigestMismatch,
}

/// Passive health: after a connect failure, an endpoint sits out this long
/// (active checks, where configured, bring it back sooner).
const PASSIVE_COOL_OFF: Duration = Duration::from_secs(10);
/// Active check failures before an endpoint is taken out.
const ACTIVE_FAILS_DOWN: u32 = 2;

impl UpstreamPool {
    /// Builds the pool for a route: TLS 1.3 verified against `upstream_ca`,
    /// plaintext only where the route allows it.
    pub fn new(route: &RouteConfig, metrics: &Metrics) -> Result<Self, TlsError> {
        let roots = match &route.upstream_ca {
            Some(ca) => tls::load_roots(ca)?,
            None => rustls::RootCertStore::empty(),
        };
        let mut tls_cfg = tls::upstream_client_config(roots)?;
        tls_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_cfg));
        let endpoints = route
            .upstreams
            .iter()
            .filter_map(|u| {
                let (scheme, authority) = (u.uri.scheme()?.clone(), u.uri.authority()?.clone());
                let dial = if scheme == Scheme::HTTPS {
                    let host = authority
                        .host()
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    let Ok(name) = ServerName::try_from(host.to_string()) else {
                        tracing::warn!(route = %route.name, upstream = %u.uri, "upstream host is not a usable TLS server name; endpoint left out");
                        return None;
                    };
                    Dial::Tls(connector.clone(), name)
                } else if route.allow_plaintext {
                    Dial::Plain
                } else {
                    return None;
                };
                let gauge = metrics.upstream_gauge(&route.name, &format!("{scheme}://{authority}"));
                gauge.store(1, Ordering::Relaxed);
                Some(Endpoint {
                    scheme,
                    authority,
                    dial,
                    idle: Arc::new(IdleConns::new(
                        route.timeouts.idle,
                        crate::server::tcp_workers(),
                    )),
                    healthy: AtomicBool::new(true),
                    fails: AtomicU32::new(0),
                    down_until_ms: AtomicU64::new(0),
                    gauge,
                })
            })
            .collect();
        Ok(Self {
            endpoints,
            next: AtomicUsize::new(0),
            timeouts: route.timeouts,
            max_body: route.max_body,
            health: route
                .health
                .as_deref()
                .and_then(|h| PathAndQuery::try_from(h).ok()),
            started: Instant::now(),
            metrics: metrics.route(&route.name),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The next usable endpoint after `skip` others, round robin.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.endpoints.len();
        let now = self.now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(i) && self.endpoints[*i].usable(now))
    }

    fn mark_failed(&self, i: usize) {
        if let Some(e) = self.endpoints.get(i) {
            let until = self.now_ms() + PASSIVE_COOL_OFF.as_millis() as u64;
            e.down_until_ms.store(until, Ordering::Relaxed);
            e.gauge.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %e.label(), "upstream taken out after a failed connection");
        }
    }

    /// Whether the route's requests can be refused early (body too large by its Content-Length).
    pub fn refuses_length(&self, headers: &HeaderMap) -> bool {
        let Some(max) = self.max_body else {
            return false;
        };
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max)
    }

    /// The route's metrics.
    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.metrics
    }

    /// Sends the request (already carrying the proxy's headers) to a healthy
    /// endpoint. A request that is idempotent and has no body is retried on
    /// another endpoint when the first could not be reached, or dropped the
    /// connection before answering: such a request may be repeated safely.
    pub async fn send(
        &self,
        req: Request<Inbound>,
        path_and_query: PathAndQuery,
        bytes_in: Option<Arc<AtomicU64>>,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let (mut parts, body) = req.into_parts();
        // Retrying needs the head again: keep a copy only when a retry is possible.
        let retryable =
            body.is_end_stream() && is_idempotent(&parts.method) && self.endpoints.len() > 1;
        let mut tried: Vec<usize> = Vec::new();
        let mut body = Some(body);
        loop {
            let i = self.pick(&tried).ok_or(ForwardError::NoHealthy)?;
            tried.push(i);
            let ep = &self.endpoints[i];
            let this_body = match body.take() {
                Some(b) => b,
                None => Inbound::Empty,
            };
            let (rb, body_sent) = RequestBody::new(
                this_body,
                self.max_body,
                self.metrics.clone(),
                bytes_in.clone(),
            );
            let request_done = rb.done.clone();
            let mut req = Request::new(rb);
            *req.method_mut() = parts.method.clone();
            *req.headers_mut() = if retryable {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            *req.version_mut() = http::Version::HTTP_11;
            // Origin form on the wire; `Host` is among the headers already.
            *req.uri_mut() = Uri::from(path_and_query.clone());
            match self.request(ep, req, body_sent).await {
                Err(e @ (ForwardError::Connect(_) | ForwardError::Tls(_))) => {
                    self.mark_failed(i);
                    if retryable && tried.len() < self.endpoints.len() {
                        tracing::info!(error = %e, "retrying an idempotent request on another upstream");
                        continue;
                    }
                    return Err(e);
                }
                // A pooled connection the upstream had just closed (it died or
                // restarted): an idempotent request may be sent again (RFC 9110
                // 9.2.2), on another endpoint.
                Err(ForwardError::Protocol(e))
                    if retryable && tried.len() < self.endpoints.len() =>
                {
                    tracing::info!(error = %e, "retrying an idempotent request on another upstream");
                    continue;
                }
                other => {
                    return other.map(|(resp, sender)| {
                        // A switched protocol keeps its connection; others go back when read.
                        let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                        let release = reusable.then(|| Release {
                            idle: ep.idle.clone(),
                            sender,
                            request_done,
                        });
                        resp.map(|inner| ResponseBody {
                            inner,
                            bytes: 0,
                            metrics: self.metrics.clone(),
                            on_complete: None,
                            hash: None,
                            cut: None,
                            release,
                            ended: false,
                        })
                    });
                }
            }
        }
    }

    async fn request(
        &self,
        ep: &Endpoint,
        req: Request<RequestBody>,
        body_sent: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(Response<Incoming>, http1::SendRequest<RequestBody>), ForwardError> {
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
        let exchange = async {
            let mut req = req;
            // An idle connection first. One the upstream closed meanwhile hands
            // the request back unsent, and it goes on a new connection.
            while let Some(mut sender) = ep.idle.take() {
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, sender)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(classify(&e.into_error())),
                    },
                }
            }
            let mut sender = self.connect(ep).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => Ok((resp, sender)),
                Err(e) => Err(classify(&e.into_error())),
            }
        };
        tokio::select! {
            () = deadline => Err(ForwardError::Timeout),
            result = exchange => result,
        }
    }

    /// A new HTTP/1.1 connection to `ep` (TCP, then TLS 1.3 where the
    /// endpoint is https), its connection task spawned.
    async fn connect(
        &self,
        ep: &Endpoint,
    ) -> Result<http1::SendRequest<RequestBody>, ForwardError> {
        let port = ep.authority.port_u16().unwrap_or(match ep.dial {
            Dial::Tls(..) => 443,
            Dial::Plain => 80,
        });
        let host = ep.authority.host();
        let tcp = tokio::time::timeout(
            self.timeouts.connect,
            tokio::net::TcpStream::connect((
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            )),
        )
        .await
        .map_err(|_| ForwardError::Connect("connect timed out".into()))?
        .map_err(|e| ForwardError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &ep.dial {
            Dial::Plain => handshake(tcp).await,
            Dial::Tls(connector, name) => {
                let tls = tokio::time::timeout(
                    self.timeouts.connect,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| ForwardError::Tls("TLS handshake timed out".into()))?
                .map_err(|e| ForwardError::Tls(error_chain(&e)))?;
                handshake(tls).await
            }
        }
    }

    /// One round of active health checks (routes with `health`): GET the path
    /// on every endpoint; 2xx/3xx is healthy.
    pub async fn check_health(&self) {
        let Some(path) = &self.health else {
            return;
        };
        for ep in self.endpoints.iter() {
            let (body, sent) = RequestBody::new(Inbound::Empty, None, self.metrics.clone(), None);
            let mut req = Request::new(body);
            *req.uri_mut() = Uri::from(path.clone());
            if let Ok(host) = HeaderValue::from_str(ep.authority.host()) {
                req.headers_mut().insert(header::HOST, host);
            }
            let limit = self.timeouts.connect + self.timeouts.header;
            let ok = tokio::time::timeout(limit, async {
                let (resp, sender) = self.request(ep, req, sent).await.ok()?;
                let good = resp.status().is_success() || resp.status().is_redirection();
                // Read the (small) answer so the connection can serve requests again.
                if http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .is_ok()
                {
                    ep.idle.put(sender);
                }
                Some(good)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
            let was = ep.healthy.load(Ordering::Relaxed);
            if ok {
                ep.fails.store(0, Ordering::Relaxed);
                ep.healthy.store(true, Ordering::Relaxed);
                ep.down_until_ms.store(0, Ordering::Relaxed);
                ep.gauge.store(1, Ordering::Relaxed);
                if !was {
                    tracing::info!(upstream = %ep.label(), "upstream back in service");
                }
            } else if ep.fails.fetch_add(1, Ordering::Relaxed) + 1 >= ACTIVE_FAILS_DOWN {
                ep.healthy.store(false, Ordering::Relaxed);
                ep.gauge.store(0, Ordering::Relaxed);
                if was {
                    tracing::warn!(upstream = %ep.label(), "upstream failed its health checks; taken out");
                }
            }
        }
    }

    /// True when this route has active health checks.
    pub fn has_health_check(&self) -> bool {
        self.health.is_some()
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn find_source<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<E>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The HTTP/1.1 client handshake over `io`; the connection runs on its own task.
async fn handshake<T>(io: T) -> Result<http1::SendRequest<RequestBody>, ForwardError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ForwardError::Protocol(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %error_chain(&e), "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// What a failed exchange on an open connection means.
fn classify(e: &hyper::Error) -> ForwardError {
    if find_source::<BodyTooLarge>(e) {
        ForwardError::TooLarge
    } else if find_source::<DigestMismatch>(e) {
        ForwardError::DigestMismatch
    } else {
        ForwardError::Protocol(error_chain(e))
    }
}

/// An error and its sources, joined for a log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

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

/// True for a header that belongs to one connection, never forwarded (RFC
/// 9110 7.6.1); compared as header names, no string parsing per request.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, those named in `Connection`, and (`spoofable`)
/// client-sent forwarding claims, in place: most requests carry none, so
/// nothing is rebuilt or re-hashed.
fn drop_headers(headers: &mut HeaderMap, spoofable: bool) {
    let named = if headers.contains_key(header::CONNECTION) {
        connection_named(headers)
    } else {
        Vec::new()
    };
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            is_hop_by_hop(n) || named.contains(n) || (spoofable && is_spoofable(n.as_str()))
        })
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(n);
    }
}

/// The forwarding headers of one client address, made once per connection.
#[derive(Debug, Clone)]
pub struct ClientHeaders {
    /// `X-Forwarded-For`.
    pub xff: HeaderValue,
    /// `for=<node>` of `Forwarded` (RFC 7239: IPv6 quoted and bracketed).
    for_node: Bytes,
}

impl ClientHeaders {
    /// The headers for `client`.
    pub fn new(client: IpAddr) -> Self {
        let (xff, node) = match client {
            IpAddr::V4(ip) => (ip.to_string(), format!("for={ip}")),
            IpAddr::V6(ip) => (ip.to_string(), format!("for=\"[{ip}]\"")),
        };
        Self {
            xff: HeaderValue::from_str(&xff).unwrap_or(HeaderValue::from_static("unknown")),
            for_node: Bytes::from(node),
        }
    }
}

/// The forwarding headers of one route host, made once when the route is compiled.
#[derive(Debug, Clone)]
pub struct HostHeaders {
    /// The host, for `Host` and `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
    /// `;proto=https;host=<host>` of `Forwarded`.
    forwarded_tail: Bytes,
}

impl HostHeaders {
    /// The headers for `host` (a canonical host name).
    pub fn new(host: &str) -> Self {
        Self {
            host: HeaderValue::from_str(host).ok(),
            forwarded_tail: Bytes::from(format!(";proto=https;host={host}")),
        }
    }
}

/// Rebuilds request headers for the upstream, in place: drops hop-by-hop,
/// Connection-named and spoofable headers, then sets `Host` and the proxy's
/// own forwarding headers.
pub fn upstream_request_headers(
    mut headers: HeaderMap,
    host: &HostHeaders,
    client: &ClientHeaders,
) -> HeaderMap {
    drop_headers(&mut headers, true);
    match &host.host {
        Some(v) => {
            headers.insert(header::HOST, v.clone());
            headers.insert(X_FORWARDED_HOST, v.clone());
        }
        None => {
            headers.remove(header::HOST);
        }
    }
    headers.insert(X_FORWARDED_FOR, client.xff.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    let mut fwd = BytesMut::with_capacity(client.for_node.len() + host.forwarded_tail.len());
    fwd.extend_from_slice(&client.for_node);
    fwd.extend_from_slice(&host.forwarded_tail);
    if let Ok(v) = HeaderValue::from_maybe_shared(fwd.freeze()) {
        headers.insert(header::FORWARDED, v);
    }
    headers
}

/// Cleans the upstream's response headers: drops hop-by-hop and Connection-named.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    drop_headers(headers, false);
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
        let out = upstream_request_headers(
            h,
            &HostHeaders::new("ehr.example.com"),
            &ClientHeaders::new("10.1.2.3".parse().unwrap()),
        );
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
