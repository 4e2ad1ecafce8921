//! The request path: route → identify → decide → audit → forward.
//!
//! Every protocol listener hands each request to [`handle`] with the
//! connection's [`ConnInfo`]. One [`RequestCtx`] travels through the named
//! stages; each stage either fills in its part of the context or ends the
//! request with a refusal page. Stages that are still pass-throughs (identity
//! and policy land in later work) already have their place, so later work
//! plugs in without reshaping the path. The routing table and upstream pools
//! come from a [`Snapshot`] loaded once per request from an `ArcSwap`: no
//! lock is taken on the hot path, and a reload swaps the whole snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, STRICT_TRANSPORT_SECURITY};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::canonical::{self, CanonicalPath};
use crate::config::{Config, RouteConfig};
use crate::forward::{self, ForwardError, UpstreamPool};
use crate::pages;
use crate::route::RouteTable;
use crate::tls::TlsError;

/// Response body: the upstream's stream, or a page the proxy made.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Which HTTP version the client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1
    H1,
    /// HTTP/2
    H2,
}

impl Proto {
    /// The audit/log label.
    pub fn label(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
        }
    }
}

/// Facts about the client connection, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Negotiated protocol.
    pub proto: Proto,
    /// Negotiated TLS version label.
    pub tls: &'static str,
}

/// A compiled route: its configuration and its upstream pool.
#[derive(Debug)]
pub struct Route {
    /// As configured.
    pub cfg: RouteConfig,
    /// Where its requests go.
    pub upstream: UpstreamPool,
}

/// Everything a request reads, compiled once and swapped atomically.
#[derive(Debug)]
pub struct Snapshot {
    /// Host + path → route.
    pub routes: RouteTable<Route>,
}

impl Snapshot {
    /// Compiles a validated configuration.
    pub fn compile(cfg: &Config) -> Result<Self, TlsError> {
        let mut entries = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            let route = Route {
                upstream: UpstreamPool::new(r)?,
                cfg: r.clone(),
            };
            entries.push((r.host.clone(), r.path.clone(), Arc::new(route)));
        }
        Ok(Self {
            routes: RouteTable::new(entries),
        })
    }
}

/// State shared by all connections.
pub struct Shared {
    /// The current snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    next_id: AtomicU64,
    id_salt: u64,
}

impl Shared {
    /// Starts with `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let id_salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            .rotate_left(17);
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            next_id: AtomicU64::new(1),
            id_salt,
        }
    }
}

/// Who is asking. Until identity lands, only anonymous requests exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials were presented or needed.
    Anonymous,
}

/// The per-request context that travels through the stages.
pub struct RequestCtx<'c> {
    /// Request id (audit and logs link by it).
    pub id: u64,
    /// The client connection.
    pub conn: &'c ConnInfo,
    /// When the request head was received.
    pub start: Instant,
    /// Canonical host.
    pub host: String,
    /// Canonical path.
    pub path: CanonicalPath,
    /// Whether the client wants HTML pages (by `Accept`).
    pub html: bool,
    /// The route (stage 1).
    pub route: Option<Arc<Route>>,
    /// The identity (stage 2).
    pub identity: Identity,
}

/// A request ended by the proxy, with what the user is told.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// HTTP status.
    pub status: StatusCode,
    /// What happened.
    pub title: &'static str,
    /// What the user can do.
    pub detail: &'static str,
    /// Stable label for logs and metrics.
    pub reason: &'static str,
}

impl Refused {
    fn page(self, html: bool) -> Response<ProxyBody> {
        pages::page(self.status, self.title, self.detail, html).map(Either::Right)
    }
}

/// Handles one request end to end. Never fails: every error becomes a page.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed) ^ shared.id_salt;
    let html = pages::wants_html(req.headers());
    let snapshot = shared.snapshot.load();
    let mut ctx = match route(&snapshot, conn, &req, id, start, html) {
        Ok(ctx) => ctx,
        Err(refused) => {
            tracing::info!(
                id = format_args!("{id:016x}"),
                src = %conn.peer.ip(),
                proto = conn.proto.label(),
                method = %req.method(),
                status = refused.status.as_u16(),
                reason = refused.reason,
                "refused"
            );
            return refused.page(html);
        }
    };
    match identify(&mut ctx).and_then(|()| decide(&ctx)) {
        Ok(()) => {
            audit_decision(&ctx, req.method());
            forward(&ctx, req).await
        }
        Err(refused) => {
            audit_refusal(&ctx, req.method(), refused);
            refused.page(html)
        }
    }
}

/// Stage 1: canonical form, then the route. Ambiguous input → 400; no route → 404.
fn route<'c>(
    snapshot: &Snapshot,
    conn: &'c ConnInfo,
    req: &Request<Incoming>,
    id: u64,
    start: Instant,
    html: bool,
) -> Result<RequestCtx<'c>, Refused> {
    let canon =
        canonical::canonicalize(req.method(), req.uri(), req.headers()).map_err(|r| Refused {
            status: if r == canonical::Refusal::MethodNotAllowed {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::BAD_REQUEST
            },
            title: "Bad request",
            detail: r.message(),
            reason: r.label(),
        })?;
    let route = snapshot
        .routes
        .lookup(&canon.host, &canon.path.decoded)
        .cloned()
        .ok_or(Refused {
            status: StatusCode::NOT_FOUND,
            title: "No such site",
            detail: "This address is not served here. Check the link you followed.",
            reason: "no_route",
        })?;
    Ok(RequestCtx {
        id,
        conn,
        start,
        host: canon.host.into_owned(),
        path: canon.path,
        html,
        route: Some(route),
        identity: Identity::Anonymous,
    })
}

/// Stage 2: who is asking. Public routes need no identity; until identity is
/// configured, every other route is refused (never forwarded).
fn identify(ctx: &mut RequestCtx<'_>) -> Result<(), Refused> {
    let public = ctx.route.as_ref().is_some_and(|r| r.cfg.public);
    if public {
        ctx.identity = Identity::Anonymous;
        return Ok(());
    }
    Err(Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        title: "Identity not configured",
        detail: "Sign-in is not configured on this gateway yet, so this protected site cannot be reached. Contact your administrator.",
        reason: "identity_not_configured",
    })
}

/// Stage 3: may this identity reach this route? Fail closed: only what is
/// explicitly allowed passes. Public routes are allowed; identify() has
/// already refused everything else.
fn decide(ctx: &RequestCtx<'_>) -> Result<(), Refused> {
    match (&ctx.identity, &ctx.route) {
        (Identity::Anonymous, Some(r)) if r.cfg.public => Ok(()),
        _ => Err(Refused {
            status: StatusCode::FORBIDDEN,
            title: "Not permitted",
            detail: "You are not permitted to reach this site.",
            reason: "default_deny",
        }),
    }
}

/// Stage 4: the decision record (the tamper-evident audit trail replaces this
/// log line). Never the query string, cookies, tokens or bodies.
fn audit_decision(ctx: &RequestCtx<'_>, method: &http::Method) {
    tracing::info!(
        id = format_args!("{:016x}", ctx.id),
        src = %ctx.conn.peer.ip(),
        proto = ctx.conn.proto.label(),
        tls = ctx.conn.tls,
        host = %ctx.host,
        route = ctx.route.as_ref().map_or("", |r| r.cfg.name.as_str()),
        method = %method,
        path = %ctx.path.decoded,
        decision = "allow",
        "decision"
    );
}

fn audit_refusal(ctx: &RequestCtx<'_>, method: &http::Method, refused: Refused) {
    tracing::info!(
        id = format_args!("{:016x}", ctx.id),
        src = %ctx.conn.peer.ip(),
        proto = ctx.conn.proto.label(),
        host = %ctx.host,
        route = ctx.route.as_ref().map_or("", |r| r.cfg.name.as_str()),
        method = %method,
        path = %ctx.path.decoded,
        decision = "deny",
        status = refused.status.as_u16(),
        reason = refused.reason,
        "decision"
    );
}

/// Stage 5: forward and stream the response back.
async fn forward(ctx: &RequestCtx<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(route) = ctx.route.as_ref() else {
        return internal_error(ctx.html);
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{}?{}", ctx.path.encoded, q),
        None => ctx.path.encoded.clone(),
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return internal_error(ctx.html);
    };
    let (mut parts, body) = req.into_parts();
    parts.headers = forward::upstream_request_headers(
        std::mem::take(&mut parts.headers),
        &ctx.host,
        ctx.conn.peer.ip(),
    );
    let result = route
        .upstream
        .send(Request::from_parts(parts, body), pq)
        .await;
    let elapsed_ms = ctx.start.elapsed().as_millis();
    match result {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            forward::clean_response_headers(&mut parts.headers);
            if !parts.headers.contains_key(STRICT_TRANSPORT_SECURITY) {
                parts.headers.insert(STRICT_TRANSPORT_SECURITY, pages::HSTS);
            }
            tracing::info!(
                id = format_args!("{:016x}", ctx.id),
                route = route.cfg.name.as_str(),
                status = parts.status.as_u16(),
                ms = elapsed_ms as u64,
                "response"
            );
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => {
            // The operator log says what failed; the client page never names internals.
            tracing::warn!(
                id = format_args!("{:016x}", ctx.id),
                route = route.cfg.name.as_str(),
                error = %e,
                "upstream failed"
            );
            let refused = match e {
                ForwardError::Timeout => Refused {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    title: "The service took too long to answer",
                    detail: "The site behind this gateway did not answer in time. Try again in a moment.",
                    reason: "upstream_timeout",
                },
                ForwardError::Connect(_) | ForwardError::Protocol(_) => Refused {
                    status: StatusCode::BAD_GATEWAY,
                    title: "The service is unavailable",
                    detail: "The site behind this gateway could not be reached. Try again in a moment; if it persists, contact your administrator.",
                    reason: "upstream_unavailable",
                },
            };
            refused.page(ctx.html)
        }
    }
}

fn internal_error(html: bool) -> Response<ProxyBody> {
    Refused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        title: "Something went wrong",
        detail: "The gateway could not handle this request. Try again.",
        reason: "internal",
    }
    .page(html)
}

/// Adds HSTS to a response the proxy made outside the pipeline.
pub fn with_hsts<B>(mut resp: Response<B>) -> Response<B> {
    resp.headers_mut()
        .entry(STRICT_TRANSPORT_SECURITY)
        .or_insert(HeaderValue::from_static(
            "max-age=31536000; includeSubDomains",
        ));
    resp
}
