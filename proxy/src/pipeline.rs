//! The request path: route → identify → decide → audit → forward.
//!
//! Every protocol listener (h1, h2, h3) hands each request to [`handle`] with
//! the connection's [`ConnInfo`]. One [`RequestCtx`] travels through the
//! named stages; each stage either fills in its part of the context or ends
//! the request with a refusal page. Stages that are still pass-throughs
//! (identity and policy land in later work) already have their place, so
//! later work plugs in without reshaping the path. The routing table and
//! upstream pools come from a [`Snapshot`] loaded once per request from an
//! `ArcSwap`: no lock is taken on the hot path, and a reload swaps the whole
//! snapshot.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, STRICT_TRANSPORT_SECURITY};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::canonical::{self, CanonicalPath};
use crate::config::{Config, Limits, Listen, PolicyConfig, RouteConfig};
use crate::forward::{self, ForwardError, Inbound, ResponseBody, UpstreamPool};
use crate::limits::{ConnectionLimiter, RateLimiter};
use crate::metrics::Metrics;
use crate::pages;
use crate::route::RouteTable;
use crate::tls::TlsError;

/// Response body: the upstream's stream, or a page the proxy made.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// Which protocol the client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1
    H1,
    /// HTTP/2
    H2,
    /// HTTP/3
    H3,
}

impl Proto {
    /// The audit/log label.
    pub fn label(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
            Self::H3 => "h3",
        }
    }

    /// Index into [`crate::metrics::PROTOS`].
    pub fn index(self) -> usize {
        match self {
            Self::H1 => 0,
            Self::H2 => 1,
            Self::H3 => 2,
        }
    }
}

/// Facts about the client connection, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The transport peer (a load balancer, when there is one).
    pub peer: SocketAddr,
    /// The client's address: the peer, or what a trusted PROXY header said.
    pub client: IpAddr,
    /// Negotiated protocol.
    pub proto: Proto,
    /// Negotiated TLS version label.
    pub tls: &'static str,
    /// The forwarding headers for `client`, made once per connection.
    pub fwd: forward::ClientHeaders,
}

impl ConnInfo {
    /// The facts of one client connection.
    pub fn new(peer: SocketAddr, client: IpAddr, proto: Proto, tls: &'static str) -> Self {
        Self {
            peer,
            client,
            proto,
            tls,
            fwd: forward::ClientHeaders::new(client),
        }
    }
}

/// A compiled route: its configuration and its upstream pool.
#[derive(Debug)]
pub struct Route {
    /// As configured.
    pub cfg: RouteConfig,
    /// Where its requests go.
    pub upstream: UpstreamPool,
    /// `Host` and forwarding headers for its host, made once.
    pub host_headers: forward::HostHeaders,
}

/// Everything a request reads, compiled once and swapped atomically.
#[derive(Debug)]
pub struct Snapshot {
    /// Host + path → route.
    pub routes: RouteTable<Route>,
    /// The same routes, in file order (health checks, admin API).
    pub list: Vec<Arc<Route>>,
}

impl Snapshot {
    /// Compiles a validated configuration.
    pub fn compile(cfg: &Config, metrics: &Metrics) -> Result<Self, TlsError> {
        let mut list = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            list.push(Arc::new(Route {
                upstream: UpstreamPool::new(r, metrics)?,
                host_headers: forward::HostHeaders::new(&r.host),
                cfg: r.clone(),
            }));
        }
        let routes = RouteTable::new(
            list.iter()
                .map(|r| (r.cfg.host.clone(), r.cfg.path.clone(), r.clone())),
        );
        Ok(Self { routes, list })
    }
}

/// State shared by all connections and listeners.
pub struct Shared {
    /// The current snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Listener settings (trusted proxies, PROXY protocol, admin token).
    pub listen: Listen,
    /// `[limits]`.
    pub limits: Limits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Requests per minute per source.
    pub rate: RateLimiter,
    /// Open connections per source (TCP and QUIC together).
    pub conn_limiter: Arc<ConnectionLimiter>,
    /// `Alt-Svc` for TCP responses, when HTTP/3 is on.
    pub alt_svc: Option<HeaderValue>,
    /// Config, certificates and first upstream health round are loaded.
    pub ready: AtomicBool,
    /// The admin API token, if configured.
    pub admin_token: Option<String>,
    /// The running policy (`None`: no `[policy]`, only public routes are reachable).
    pub policy: arc_swap::ArcSwapOption<dermgate_policy::CompiledPolicy>,
    /// `[policy]`.
    pub policy_cfg: Option<PolicyConfig>,
    /// Open break-the-glass elevations.
    pub elevations: crate::break_glass::Elevations,
    /// The tamper-evident audit trail, when `[audit]` is configured.
    pub audit: Option<crate::audit::Audit>,
    /// Sessions, bearer tokens and the sign-in endpoints, when `[oidc]` is configured.
    pub identity: Option<Arc<crate::identity::IdentityService>>,
    /// Alerts (audit record, counter, webhook).
    pub alerts: Arc<crate::alerts::Alerts>,
    started: Instant,
    next_id: AtomicU64,
    id_salt: u64,
}

impl Shared {
    /// Appends an `event` record to the audit trail, when there is one.
    pub fn audit_event(
        &self,
        event: &str,
        route: Option<&str>,
        reason: Option<String>,
        policy: Option<&str>,
    ) {
        if let Some(a) = &self.audit {
            let mut r = crate::audit::Record::new("event");
            r.event = Some(event.to_string());
            r.route = route.map(str::to_string);
            r.reason = reason;
            r.policy = policy.map(str::to_string);
            a.record(r);
        }
    }

    /// Route names of the running snapshot (for validating policies).
    pub fn route_names(&self) -> Vec<String> {
        self.snapshot
            .load()
            .list
            .iter()
            .map(|r| r.cfg.name.clone())
            .collect()
    }

    /// Compiles `cfg` into the first snapshot and loads its policy.
    pub fn new(
        cfg: &Config,
        alt_svc_port: Option<u16>,
        identity: Option<Arc<crate::identity::IdentityService>>,
    ) -> Result<Self, StartError> {
        let policy = match &cfg.policy {
            Some(p) => Some(Arc::new(crate::policy::load(p, None, &cfg.route_names())?)),
            None => None,
        };
        let audit = match &cfg.audit {
            Some(a) => {
                let key = crate::audit::load_or_create_key(&a.keys_dir)?;
                let syslog = match &a.syslog {
                    Some(s) => Some(
                        crate::syslog::Syslog::start(s)
                            .map_err(|e| StartError::Syslog(e.to_string()))?,
                    ),
                    None => None,
                };
                let outputs = crate::audit::Outputs {
                    stdout: a.stdout,
                    syslog,
                };
                Some(crate::audit::Audit::start_with(
                    &a.file, a.sync, key, outputs,
                )?)
            }
            None => None,
        };
        let alerts =
            crate::alerts::Alerts::start(&cfg.alerts, cfg.keys_dir.as_deref(), audit.clone())?;
        let metrics = Arc::new(Metrics::default());
        let snapshot = Snapshot::compile(cfg, &metrics)?;
        let id_salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            .rotate_left(17);
        let admin_token = match &cfg.listen.admin_token_file {
            Some(p) => std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            None => None,
        };
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            listen: cfg.listen.clone(),
            limits: cfg.limits,
            rate: RateLimiter::new(cfg.limits.requests_per_minute_per_user),
            conn_limiter: Arc::new(ConnectionLimiter::new(cfg.limits.connections_per_source)),
            metrics,
            alt_svc: alt_svc_port
                .and_then(|p| HeaderValue::from_str(&format!("h3=\":{p}\"; ma=86400")).ok()),
            ready: AtomicBool::new(false),
            admin_token,
            policy: arc_swap::ArcSwapOption::new(policy),
            policy_cfg: cfg.policy.clone(),
            elevations: Default::default(),
            audit,
            identity,
            alerts,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            id_salt,
        })
    }
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS material for an upstream was refused.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The policy was refused.
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The audit trail could not be opened.
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The syslog forwarder could not be set up.
    #[error("audit syslog: {0}")]
    Syslog(String),
    /// The alert webhook could not be set up.
    #[error("{0}")]
    Alerts(#[from] crate::alerts::AlertsError),
}

pub use crate::identity::Identity;

/// A WebSocket handshake, by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocket {
    /// HTTP/1.1 `Upgrade: websocket`.
    Upgrade,
    /// HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441).
    ExtendedConnect,
}

/// The per-request context that travels through the stages.
pub struct RequestCtx<'c> {
    /// Request id (audit and logs link by it).
    pub id: u64,
    /// The client connection.
    pub conn: &'c ConnInfo,
    /// The client address policy sees.
    pub client: IpAddr,
    /// When the request head was received.
    pub start: Instant,
    /// Canonical host.
    pub host: String,
    /// Canonical path.
    pub path: CanonicalPath,
    /// Whether the client wants HTML pages (by `Accept`).
    pub html: bool,
    /// A WebSocket handshake.
    pub websocket: Option<WebSocket>,
    /// The route (stage 1).
    pub route: Option<Arc<Route>>,
    /// The identity (stage 2).
    pub identity: Identity,
    /// The deciding policy rule (stage 3).
    pub rule: Option<String>,
    /// The policy version that decided.
    pub policy: Option<String>,
    /// Why there is no session (stage 2), for the sign-in answer.
    pub no_session: crate::identity::NoSession,
    /// The port the client named (for building sign-in URLs).
    pub port: Option<u16>,
}

/// A request ended by the proxy, with what the user is told.
#[derive(Debug, Clone)]
pub struct Refused {
    /// HTTP status.
    pub status: StatusCode,
    /// What happened.
    pub title: &'static str,
    /// What the user can do.
    pub detail: Cow<'static, str>,
    /// Stable label for logs and metrics.
    pub reason: &'static str,
}

impl Refused {
    fn page(self, html: bool) -> Response<ProxyBody> {
        pages::page(self.status, self.title, &self.detail, html).map(Either::Right)
    }
}

const RATE_LIMITED: Refused = Refused {
    status: StatusCode::TOO_MANY_REQUESTS,
    title: "Too many requests",
    detail: Cow::Borrowed(
        "Too many requests came from your address in the last minute. Wait a minute and try again.",
    ),
    reason: "rate_limited",
};
const HEADER_TOO_LARGE: Refused = Refused {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    title: "Request headers too large",
    detail: Cow::Borrowed(
        "The request's headers are larger than this gateway accepts. Clearing this site's cookies may help.",
    ),
    reason: "header_too_large",
};
const BODY_TOO_LARGE: Refused = Refused {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    title: "Upload too large",
    detail: Cow::Borrowed("The upload is larger than this site accepts."),
    reason: "body_too_large",
};
const WEBSOCKET_NOT_ALLOWED: Refused = Refused {
    status: StatusCode::FORBIDDEN,
    title: "Not available here",
    detail: Cow::Borrowed("Live connections (WebSocket) are not permitted on this site."),
    reason: "websocket_not_allowed",
};

/// Handles one request end to end. Never fails: every error becomes a page.
pub async fn handle<B>(shared: &Shared, conn: &ConnInfo, req: Request<B>) -> Response<ProxyBody>
where
    B: Into<Inbound>,
{
    let start = Instant::now();
    let req = req.map(Into::into);
    let path = req.uri().path();
    if path.starts_with("/.dermgate/")
        && (shared.identity.is_some() || path == "/.dermgate/break-glass")
    {
        return own_endpoint(shared, conn, req).await;
    }
    let html = pages::wants_html(req.headers());
    let snapshot = shared.snapshot.load();
    let mut resp = match route(shared, &snapshot, conn, &req, start, html) {
        Ok(ctx) => decide_and_forward(shared, ctx, req).await,
        Err(refused) => {
            shared.metrics.refused(refused.reason);
            shared.metrics.unrouted().request(
                conn.proto.index(),
                refused.status.as_u16(),
                start.elapsed(),
            );
            tracing::info!(
                src = %conn.client,
                proto = conn.proto.label(),
                method = %req.method(),
                status = refused.status.as_u16(),
                reason = refused.reason,
                "refused"
            );
            // Malformed and unroutable requests are in the trail too (DESIGN
            // "Bad input"), without their raw target: it may carry a query
            // string, and it is not the canonical form. A rate-limited flood is
            // counted in the metrics only, so it cannot fill the disk.
            if refused.reason != RATE_LIMITED.reason
                && let Some(a) = &shared.audit
            {
                let mut r = crate::audit::Record::new("decision");
                r.src = Some(client_address(shared, conn, &req).to_string());
                r.method = Some(req.method().as_str().to_string());
                r.proto = Some(conn.proto.label());
                r.tls = Some(conn.tls);
                r.decision = Some("deny");
                r.reason = Some(refused.reason.to_string());
                r.status = Some(refused.status.as_u16());
                a.record(r);
            }
            refused.page(html)
        }
    };
    if conn.proto != Proto::H3
        && let Some(alt) = &shared.alt_svc
    {
        resp.headers_mut().insert(header::ALT_SVC, alt.clone());
    }
    resp
}

/// The proxy's own pages under `/.dermgate/` (sign-in, step-up, break-the-glass).
/// Rate-limited like everything else; never forwarded.
async fn own_endpoint(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Inbound>,
) -> Response<ProxyBody> {
    let html = pages::wants_html(req.headers());
    let minute = shared.started.elapsed().as_secs() / 60;
    if !shared
        .rate
        .allow(client_address(shared, conn, &req), minute)
    {
        shared.metrics.refused(RATE_LIMITED.reason);
        return RATE_LIMITED.page(html);
    }
    let Some(id) = shared.identity.as_ref() else {
        return crate::break_glass::handle(shared, conn, &Identity::Anonymous, req).await;
    };
    if req.uri().path() == "/.dermgate/break-glass" {
        let identity = match id.identify(req.headers(), None).await {
            Ok((i, _)) => i,
            Err(_) => Identity::Anonymous,
        };
        return crate::break_glass::handle(shared, conn, &identity, req).await;
    }
    crate::identity::endpoints::handle(shared, id, conn, req).await
}

async fn decide_and_forward(
    shared: &Shared,
    mut ctx: RequestCtx<'_>,
    req: Request<Inbound>,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let outcome = match identify(shared, &mut ctx, req.headers()).await {
        Ok(()) => decide(shared, &mut ctx, &method),
        Err(r) => Err(r),
    };
    let resp = match outcome {
        Ok(()) => {
            audit_decision(&ctx, &method);
            // No access to a protected route without its audit record.
            let recorded = match &shared.audit {
                Some(a) => a.append(decision_record(&ctx, &method, None)).await,
                None => true,
            };
            let protected = ctx.route.as_ref().is_some_and(|r| !r.cfg.public);
            if !recorded && protected {
                shared.metrics.refused(AUDIT_UNAVAILABLE.reason);
                shared.alerts.raise(crate::alerts::Alert {
                    kind: "audit_unwritable",
                    detail: "the audit trail cannot be written: protected routes answer 503 until it can".into(),
                    ..Default::default()
                });
                AUDIT_UNAVAILABLE.page(ctx.html)
            } else {
                forward(shared, &ctx, req).await
            }
        }
        Err(refused) => {
            shared.metrics.refused(refused.reason);
            audit_refusal(&ctx, &method, &refused);
            if let Some(a) = &shared.audit {
                a.record(decision_record(&ctx, &method, Some(&refused)));
            }
            refusal(shared, &ctx, refused, req.uri())
        }
    };
    if let Some(r) = &ctx.route {
        let proto = if ctx.websocket.is_some() {
            3
        } else {
            ctx.conn.proto.index()
        };
        r.upstream
            .metrics()
            .request(proto, resp.status().as_u16(), ctx.start.elapsed());
    }
    resp
}

/// The client address policy sees: the connection's, or — behind a trusted
/// proxy that does not speak PROXY protocol — the last untrusted hop of
/// `X-Forwarded-For`.
pub(crate) fn client_address(shared: &Shared, conn: &ConnInfo, req: &Request<Inbound>) -> IpAddr {
    if shared.listen.trusted_proxies.is_empty() || shared.listen.proxy_protocol {
        return conn.client;
    }
    crate::proxy_protocol::client_from_xff(
        &shared.listen.trusted_proxies,
        conn.client,
        req.headers()
            .get_all(HeaderName::from_static("x-forwarded-for"))
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

fn websocket_kind(req: &Request<Inbound>, proto: Proto) -> Option<WebSocket> {
    match proto {
        Proto::H1 => {
            let upgrade = req
                .headers()
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            (upgrade && req.method() == Method::GET).then_some(WebSocket::Upgrade)
        }
        Proto::H2 => (req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket")))
        .then_some(WebSocket::ExtendedConnect),
        Proto::H3 => None,
    }
}

/// Stage 1: limits, canonical form, then the route. Ambiguous input → 400;
/// no route → 404.
fn route<'c>(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &'c ConnInfo,
    req: &Request<Inbound>,
    start: Instant,
    html: bool,
) -> Result<RequestCtx<'c>, Refused> {
    let client = client_address(shared, conn, req);
    let minute = shared.started.elapsed().as_secs() / 60;
    if !shared.rate.allow(client, minute) {
        return Err(RATE_LIMITED);
    }
    let head_bytes: u64 = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + req
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len() as u64);
    if head_bytes > shared.limits.header_bytes {
        return Err(HEADER_TOO_LARGE);
    }
    let websocket = websocket_kind(req, conn.proto);
    let method = if websocket == Some(WebSocket::ExtendedConnect) {
        &Method::GET
    } else {
        req.method()
    };
    let canon = canonical::canonicalize(method, req.uri(), req.headers()).map_err(|r| Refused {
        status: if r == canonical::Refusal::MethodNotAllowed {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::BAD_REQUEST
        },
        title: "Bad request",
        detail: Cow::Borrowed(r.message()),
        reason: r.label(),
    })?;
    // The proxy's own endpoints live under /.dermgate/ on every host; nothing
    // there is ever forwarded.
    let p = canon.path.decoded.as_str();
    if p == "/.dermgate" || p.starts_with("/.dermgate/") {
        return Err(Refused {
            status: StatusCode::NOT_FOUND,
            title: "Not found",
            detail: Cow::Borrowed("This gateway page does not exist."),
            reason: "reserved_path",
        });
    }
    let route = snapshot
        .routes
        .lookup(&canon.host, &canon.path.decoded)
        .cloned()
        .ok_or(Refused {
            status: StatusCode::NOT_FOUND,
            title: "No such site",
            detail: Cow::Borrowed("This address is not served here. Check the link you followed."),
            reason: "no_route",
        })?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed) ^ shared.id_salt;
    Ok(RequestCtx {
        id,
        conn,
        client,
        start,
        host: canon.host.into_owned(),
        path: canon.path,
        html,
        websocket,
        route: Some(route),
        identity: Identity::Anonymous,
        rule: None,
        policy: None,
        no_session: crate::identity::NoSession::None,
        port: req.uri().port_u16().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .and_then(|a| a.port_u16())
        }),
    })
}

/// Stage 2: who is asking — a bearer JWT, else the session cookie, else
/// anonymous (see [`crate::identity`]). Public routes skip it. Fail closed: a
/// store or IdP that cannot answer is a 503, a refused token a 401.
async fn identify(
    shared: &Shared,
    ctx: &mut RequestCtx<'_>,
    headers: &http::HeaderMap,
) -> Result<(), Refused> {
    ctx.identity = Identity::Anonymous;
    let Some(id) = &shared.identity else {
        return Ok(());
    };
    let route = ctx.route.as_ref().map(|r| &r.cfg);
    if route.is_some_and(|r| r.public) {
        return Ok(());
    }
    match id.identify(headers, route).await {
        Ok((identity, why)) => {
            ctx.identity = identity;
            ctx.no_session = why;
            Ok(())
        }
        Err(crate::identity::IdentifyError::Store(e)) => {
            tracing::error!(error = %e, "session store unavailable: refusing");
            Err(STORE_UNAVAILABLE)
        }
        Err(crate::identity::IdentifyError::IdpUnavailable) => Err(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "Sign-in service unavailable",
            detail: Cow::Borrowed(
                "Your token cannot be checked because the identity provider cannot be reached. Try again in a minute.",
            ),
            reason: "idp_unavailable",
        }),
        Err(crate::identity::IdentifyError::Bearer(why)) => Err(Refused {
            status: StatusCode::UNAUTHORIZED,
            title: "Invalid token",
            detail: Cow::Borrowed(why),
            reason: "bearer_invalid",
        }),
    }
}

/// Responses larger than this (or of unknown length) are watched as live streams.
const LIVE_STREAM_BYTES: u64 = 1 << 20;

const STORE_UNAVAILABLE: Refused = Refused {
    status: StatusCode::SERVICE_UNAVAILABLE,
    title: "Temporarily unavailable",
    detail: Cow::Borrowed(
        "Your session cannot be checked right now, so this protected site cannot be reached. Try again in a minute; your administrator has been alerted.",
    ),
    reason: "store_unavailable",
};

/// The response for a refused request: a page, or — when signing in or a
/// step-up would help — a redirect for a browser and a 401 with
/// `WWW-Authenticate` for an API client.
fn refusal(
    shared: &Shared,
    ctx: &RequestCtx<'_>,
    refused: Refused,
    uri: &http::Uri,
) -> Response<ProxyBody> {
    let Some(id) = &shared.identity else {
        return refused.page(ctx.html);
    };
    let pq = match uri.query() {
        Some(q) => format!("{}?{q}", ctx.path.encoded),
        None => ctx.path.encoded.clone(),
    };
    let port = match ctx.port {
        Some(p) if p != 443 => format!(":{p}"),
        _ => String::new(),
    };
    let challenge = match refused.reason {
        "login_required" => {
            if ctx.html && ctx.websocket.is_none() {
                let mut to = id.login_url(&ctx.host, &port, &pq);
                // A session that timed out or was ended: say so before signing in again.
                if ctx.no_session == crate::identity::NoSession::Ended {
                    to.push_str("&ended=1");
                }
                return crate::identity::pages::redirect(&to, &[]).map(Either::Right);
            }
            match ctx.no_session {
                crate::identity::NoSession::None => "Bearer realm=\"dermgate\"".to_string(),
                _ => "Bearer realm=\"dermgate\", error=\"invalid_token\", error_description=\"the session has ended\"".to_string(),
            }
        }
        "mfa_required" => {
            if ctx.html && ctx.websocket.is_none() && matches!(ctx.identity, Identity::Session(_)) {
                return crate::identity::pages::redirect(&id.mfa_url(&ctx.host, &port, &pq), &[])
                    .map(Either::Right);
            }
            "Bearer realm=\"dermgate\", error=\"insufficient_user_authentication\", error_description=\"a more recent multi-factor authentication is required\"".to_string()
        }
        "bearer_invalid" => format!(
            "Bearer realm=\"dermgate\", error=\"invalid_token\", error_description=\"{}\"",
            refused.detail
        ),
        _ => return refused.page(ctx.html),
    };
    let mut r = Refused {
        status: StatusCode::UNAUTHORIZED,
        ..refused
    }
    .page(ctx.html);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Stage 3: may this request reach this route? Fail closed: public routes
/// pass; every other route is decided by the compiled policy, and without a
/// policy it is refused (never forwarded). WebSocket only where the route
/// allows it.
fn decide(shared: &Shared, ctx: &mut RequestCtx<'_>, method: &Method) -> Result<(), Refused> {
    let Some(r) = ctx.route.clone() else {
        return Err(DEFAULT_DENY);
    };
    if ctx.websocket.is_some() && !r.cfg.websocket {
        return Err(WEBSOCKET_NOT_ALLOWED);
    }
    if r.cfg.public {
        return Ok(());
    }
    let guard = shared.policy.load();
    let Some(policy) = guard.as_ref() else {
        return Err(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "Access policy not configured",
            detail: Cow::Borrowed(
                "This protected site has no access policy on this gateway yet, so it cannot be reached. Contact your administrator.",
            ),
            reason: "identity_not_configured",
        });
    };
    let mut facts = dermgate_policy::RequestFacts {
        route: &r.cfg.name,
        method: method.as_str(),
        path: &ctx.path.decoded,
        source: ctx.client,
        user: ctx.identity.subject(),
        groups: ctx.identity.groups(),
        claims: match &ctx.identity {
            Identity::Bearer(c) => Some(&c.all),
            _ => None,
        },
        mfa_age: ctx.identity.mfa_age(crate::identity::session::now()),
        time: dermgate_policy::Timestamp::now(),
        device: None,
        visit_room: None,
        break_glass: false,
    };
    let mut decision = policy.evaluate(&facts);
    // Only when a break-the-glass rule would help is the elevation table consulted.
    if decision.break_glass_available()
        && let Some(sub) = ctx.identity.subject()
        && shared.elevations.active(sub, &r.cfg.name, Instant::now())
    {
        facts.break_glass = true;
        decision = policy.evaluate(&facts);
    }
    ctx.rule = Some(decision.rule().to_string());
    ctx.policy = Some(policy.version().to_string());
    match decision {
        dermgate_policy::Decision::Allow { rule, break_glass } => {
            if break_glass {
                tracing::warn!(
                    target: "dermgate::audit",
                    event = "break_glass_use",
                    alert = true,
                    id = format_args!("{:016x}", ctx.id),
                    sub = ctx.identity.subject().unwrap_or(""),
                    route = r.cfg.name.as_str(),
                    rule,
                    path = %ctx.path.decoded,
                    "request allowed by break-the-glass"
                );
                if let Some(a) = &shared.audit {
                    let mut rec = crate::audit::Record::new("event");
                    rec.event = Some("break_glass_use".into());
                    rec.id = Some(format!("{:016x}", ctx.id));
                    rec.sub = ctx.identity.subject().map(str::to_string);
                    rec.route = Some(r.cfg.name.clone());
                    rec.rule = Some(rule.to_string());
                    rec.path = Some(ctx.path.decoded.clone());
                    a.record(rec);
                }
            }
            Ok(())
        }
        denied => {
            let reason = denied
                .reason()
                .unwrap_or(dermgate_policy::DenyReason::NotPermitted);
            tracing::info!(
                id = format_args!("{:016x}", ctx.id),
                rule = denied.rule(),
                policy = policy.version(),
                "policy denied"
            );
            let mut detail = capitalised(reason.message());
            detail.push_str(". ");
            detail.push_str(reason.remedy());
            if denied.break_glass_available() {
                detail.push_str(&format!(
                    " In an emergency, request break-the-glass access at /.dermgate/break-glass?route={}",
                    r.cfg.name
                ));
            }
            Err(Refused {
                status: StatusCode::FORBIDDEN,
                title: "Access denied",
                detail: Cow::Owned(detail),
                reason: reason.code(),
            })
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

const BAD_DIGEST: Refused = Refused {
    status: StatusCode::BAD_REQUEST,
    title: "Bad digest",
    detail: Cow::Borrowed(
        "The upload's Content-Digest or Repr-Digest header is malformed; expected sha-256=:BASE64:.",
    ),
    reason: "bad_digest",
};

const AUDIT_UNAVAILABLE: Refused = Refused {
    status: StatusCode::SERVICE_UNAVAILABLE,
    title: "Temporarily unavailable",
    detail: Cow::Borrowed(
        "This protected site cannot be reached right now because access cannot be recorded. Try again in a few minutes; your administrator has been alerted.",
    ),
    reason: "audit_unavailable",
};

/// The audit record of a decision (allow, or the refusal).
fn decision_record(
    ctx: &RequestCtx<'_>,
    method: &Method,
    refused: Option<&Refused>,
) -> crate::audit::Record {
    let mut r = crate::audit::Record::new("decision");
    r.id = Some(hex::encode(ctx.id.to_be_bytes()));
    r.sub = ctx.identity.subject().map(str::to_string);
    // The connection's address is formatted once per connection.
    r.src = Some(match ctx.conn.fwd.xff.to_str() {
        Ok(s) if ctx.client == ctx.conn.client => s.to_string(),
        _ => ctx.client.to_string(),
    });
    r.host = Some(ctx.host.clone());
    r.route = ctx.route.as_ref().map(|x| x.cfg.name.clone());
    r.method = Some(method.as_str().to_string());
    r.path = Some(ctx.path.decoded.clone());
    r.proto = Some(if ctx.websocket.is_some() {
        "ws"
    } else {
        ctx.conn.proto.label()
    });
    r.tls = Some(ctx.conn.tls);
    r.decision = Some(if refused.is_some() { "deny" } else { "allow" });
    r.auth = Some(ctx.identity.kind());
    r.sid = ctx
        .identity
        .session_id()
        .map(crate::identity::session_handle);
    if !ctx.identity.amr().is_empty() {
        r.amr = Some(ctx.identity.amr().to_vec());
    }
    r.rule = ctx.rule.clone();
    r.policy = ctx.policy.clone();
    if let Some(f) = refused {
        r.reason = Some(f.reason.to_string());
        r.status = Some(f.status.as_u16());
    }
    r
}

/// The `complete` record of a forwarded request.
fn complete_record(ctx: &RequestCtx<'_>, status: u16) -> crate::audit::Record {
    let mut r = crate::audit::Record::new("complete");
    r.id = Some(hex::encode(ctx.id.to_be_bytes()));
    r.sub = ctx.identity.subject().map(str::to_string);
    r.route = ctx.route.as_ref().map(|x| x.cfg.name.clone());
    r.proto = Some(if ctx.websocket.is_some() {
        "ws"
    } else {
        ctx.conn.proto.label()
    });
    r.tls = Some(ctx.conn.tls);
    r.status = Some(status);
    r
}

const DEFAULT_DENY: Refused = Refused {
    status: StatusCode::FORBIDDEN,
    title: "Not permitted",
    detail: Cow::Borrowed("You are not permitted to reach this site."),
    reason: "default_deny",
};

/// Stage 4: the decision record (the tamper-evident audit trail replaces this
/// log line). Never the query string, cookies, tokens or bodies.
fn audit_decision(ctx: &RequestCtx<'_>, method: &Method) {
    tracing::info!(
        id = format_args!("{:016x}", ctx.id),
        src = %ctx.client,
        proto = if ctx.websocket.is_some() { "ws" } else { ctx.conn.proto.label() },
        tls = ctx.conn.tls,
        host = %ctx.host,
        route = ctx.route.as_ref().map_or("", |r| r.cfg.name.as_str()),
        method = %method,
        path = %ctx.path.decoded,
        decision = "allow",
        "decision"
    );
}

fn audit_refusal(ctx: &RequestCtx<'_>, method: &Method, refused: &Refused) {
    tracing::info!(
        id = format_args!("{:016x}", ctx.id),
        src = %ctx.client,
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
async fn forward(
    shared: &Shared,
    ctx: &RequestCtx<'_>,
    mut req: Request<Inbound>,
) -> Response<ProxyBody> {
    let Some(route) = ctx.route.as_ref() else {
        return internal_error(ctx.html);
    };
    if route.upstream.refuses_length(req.headers()) {
        shared.metrics.refused(BODY_TOO_LARGE.reason);
        return BODY_TOO_LARGE.page(ctx.html);
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{}?{}", ctx.path.encoded, q),
        None => ctx.path.encoded.clone(),
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return internal_error(ctx.html);
    };
    let client_upgrade = ctx.websocket.map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // Made once per route and per connection; rebuilt only when they differ
    // (a wildcard-free route always matches its own host; a client named by a
    // trusted proxy differs from the connection's).
    let host_headers;
    let host_headers = if ctx.host == route.cfg.host {
        &route.host_headers
    } else {
        host_headers = forward::HostHeaders::new(&ctx.host);
        &host_headers
    };
    let client_headers;
    let client_headers = if ctx.client == ctx.conn.client {
        &ctx.conn.fwd
    } else {
        client_headers = forward::ClientHeaders::new(ctx.client);
        &client_headers
    };
    parts.headers = forward::upstream_request_headers(
        std::mem::take(&mut parts.headers),
        host_headers,
        client_headers,
    );
    if let Some(id) = &shared.identity {
        crate::identity::strip_own_cookies(&mut parts.headers);
        if let Some(a) = id
            .assertion(&ctx.identity, &route.cfg.name)
            .and_then(|a| HeaderValue::from_str(&a).ok())
        {
            parts
                .headers
                .insert(HeaderName::from_static("x-dermgate-assertion"), a);
        }
    }
    if let Some(kind) = ctx.websocket {
        crate::websocket::upstream_handshake_headers(&mut parts, kind);
    }
    let bytes_in = shared.audit.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    // Integrity routes: hash the body as it streams and check a stated digest.
    let upload_sha = Arc::new(std::sync::OnceLock::new());
    let body = if route.cfg.integrity {
        match forward::stated_sha256(&parts.headers) {
            Ok(expected) => Inbound::Integrity(Box::new(forward::IntegrityBody::new(
                body,
                expected,
                upload_sha.clone(),
            ))),
            Err(_) => {
                shared.metrics.refused(BAD_DIGEST.reason);
                return BAD_DIGEST.page(ctx.html);
            }
        }
    } else {
        body
    };
    let result = route
        .upstream
        .send(Request::from_parts(parts, body), pq, bytes_in.clone())
        .await;
    let elapsed_ms = ctx.start.elapsed().as_millis();
    match result {
        Ok(mut resp) => {
            // Streams of a session end when the session does (see identity::streams).
            let cut = match (&shared.identity, ctx.identity.session_id()) {
                (Some(id), Some(sid))
                    if ctx.websocket.is_some()
                        || http_body::Body::size_hint(resp.body())
                            .exact()
                            .is_none_or(|n| n > LIVE_STREAM_BYTES) =>
                {
                    Some(id.streams.register(sid))
                }
                _ => None,
            };
            if let (Some(kind), Some(client_upgrade)) = (ctx.websocket, client_upgrade) {
                return crate::websocket::splice(kind, client_upgrade, &mut resp, cut)
                    .unwrap_or_else(|| {
                        Refused {
                            status: StatusCode::BAD_GATEWAY,
                            title: "The live connection could not be opened",
                            detail: Cow::Borrowed("The site behind this gateway refused the live connection. Try again in a moment."),
                            reason: "upstream_unavailable",
                        }
                        .page(ctx.html)
                    });
            }
            let (mut parts, mut body) = resp.into_parts();
            if route.cfg.integrity {
                body.hash();
            }
            if let Some(flag) = cut {
                body.cut_when(flag);
            }
            // Image downloads count towards the user's export volume.
            let export = match (route.cfg.integrity, ctx.identity.subject()) {
                (true, Some(sub)) => Some((
                    shared.alerts.clone(),
                    sub.to_string(),
                    route.cfg.name.clone(),
                )),
                _ => None,
            };
            if let Some(audit) = shared.audit.clone() {
                let mut rec = complete_record(ctx, parts.status.as_u16());
                let start = ctx.start;
                body.on_complete(Box::new(move |bytes_out, response_sha| {
                    if let Some((alerts, sub, route)) = &export {
                        alerts.exported(sub, route, bytes_out);
                    }
                    let bytes_in = bytes_in.map(|b| b.load(Ordering::Relaxed));
                    rec.bytes_in = bytes_in;
                    rec.bytes_out = Some(bytes_out);
                    rec.ms = Some(start.elapsed().as_millis() as u64);
                    // The image that moved: the upload's hash, else the download's.
                    rec.sha256 = match (bytes_in, upload_sha.get()) {
                        (Some(n), Some(h)) if n > 0 => Some(h.clone()),
                        _ => response_sha,
                    };
                    audit.record(rec);
                }));
            } else if let Some((alerts, sub, route)) = export {
                body.on_complete(Box::new(move |bytes_out, _| {
                    alerts.exported(&sub, &route, bytes_out);
                }));
            }
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
                ForwardError::TooLarge => BODY_TOO_LARGE,
                ForwardError::DigestMismatch => Refused {
                    status: StatusCode::BAD_REQUEST,
                    title: "Upload damaged",
                    detail: Cow::Borrowed(
                        "The upload does not match its stated digest, so it was not stored. Upload it again.",
                    ),
                    reason: "digest_mismatch",
                },
                ForwardError::Timeout => Refused {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    title: "The service took too long to answer",
                    detail: Cow::Borrowed(
                        "The site behind this gateway did not answer in time. Try again in a moment.",
                    ),
                    reason: "upstream_timeout",
                },
                ForwardError::NoHealthy => Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    title: "The service is unavailable",
                    detail: Cow::Borrowed(
                        "The site behind this gateway is out of service right now. Try again in a few minutes; if it persists, contact your administrator.",
                    ),
                    reason: "no_healthy_upstream",
                },
                ForwardError::Tls(ref detail) => {
                    shared.alerts.raise(crate::alerts::Alert {
                        kind: "upstream_tls",
                        route: Some(route.cfg.name.clone()),
                        detail: format!("TLS to the upstream failed: {detail}"),
                        ..Default::default()
                    });
                    Refused {
                        status: StatusCode::BAD_GATEWAY,
                        title: "The service is unavailable",
                        detail: Cow::Borrowed(
                            "The site behind this gateway could not be reached securely. Try again in a moment; if it persists, contact your administrator.",
                        ),
                        reason: "upstream_tls",
                    }
                }
                ForwardError::Connect(_) | ForwardError::Protocol(_) => Refused {
                    status: StatusCode::BAD_GATEWAY,
                    title: "The service is unavailable",
                    detail: Cow::Borrowed(
                        "The site behind this gateway could not be reached. Try again in a moment; if it persists, contact your administrator.",
                    ),
                    reason: "upstream_unavailable",
                },
            };
            shared.metrics.refused(refused.reason);
            if let Some(a) = &shared.audit {
                let mut rec = complete_record(ctx, refused.status.as_u16());
                rec.reason = Some(refused.reason.to_string());
                rec.ms = Some(ctx.start.elapsed().as_millis() as u64);
                a.record(rec);
            }
            refused.page(ctx.html)
        }
    }
}

fn internal_error(html: bool) -> Response<ProxyBody> {
    Refused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        title: "Something went wrong",
        detail: Cow::Borrowed("The gateway could not handle this request. Try again."),
        reason: "internal",
    }
    .page(html)
}

impl From<Incoming> for Inbound {
    fn from(b: Incoming) -> Self {
        Self::Hyper(b)
    }
}
