//! The proxy's own endpoints under `/.dermgate/` (DESIGN.md section 2):
//! `login`, `callback` and `backchannel-logout` on the auth host; `handoff`,
//! `logout`, `mfa`, `logged-out` and `jwks.json` on every host. Nothing under
//! the prefix is ever forwarded.
//!
//! All session-making steps (login, step-up) run on the auth host; other hosts
//! receive the session through a one-time handoff code (30 s, single use,
//! bound to the host) exchanged in the store.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::{Deserialize, Serialize};

use super::pages::{self, clear_cookie, redirect, set_cookie};
use super::session::{SessionRecord, now};
use super::totp::{Enrollment, Verdict};
use super::{COOKIE_NAME, IdentityService, LOGIN_COOKIE, NoSession, Session, cookie};
use crate::canonical;
use crate::forward::Inbound;
use crate::pipeline::{ConnInfo, ProxyBody, Shared};
use crate::store::SessionStore;

const MAX_FORM: usize = 16 * 1024;
const HANDOFF_TTL: Duration = Duration::from_secs(30);

/// A handoff code's record.
#[derive(Serialize, Deserialize)]
struct Handoff {
    id: String,
    host: String,
}

/// Host (canonical) and the port suffix (`:8443`, or empty) of a request.
pub fn request_host(req: &Request<Inbound>) -> Option<(String, String)> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })?;
    let a: http::uri::Authority = authority.parse().ok()?;
    let host = canonical::canonical_host(a.host())?.into_owned();
    let port = match a.port_u16() {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    Some((host, port))
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn form_param(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn out(r: Response<Full<Bytes>>) -> Response<ProxyBody> {
    r.map(Either::Right)
}

fn msg(
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Response<ProxyBody> {
    out(pages::message(status, title, text, link))
}

impl IdentityService {
    /// A return address is acceptable when it is an https URL on a configured
    /// host (no open redirect); returns it with its host.
    pub fn valid_rd(&self, rd: &str) -> Option<(Uri, String)> {
        if rd.chars().any(|c| c.is_control() || c == '\\') {
            return None;
        }
        let u: Uri = rd.parse().ok()?;
        if u.scheme_str() != Some("https") {
            return None;
        }
        let a = u.authority()?;
        if a.as_str().contains('@') {
            return None;
        }
        let host = canonical::canonical_host(a.host())?.into_owned();
        if !self.hosts.contains(&host) || !u.path().starts_with('/') || u.path().starts_with("//") {
            return None;
        }
        Some((u, host))
    }

    fn auth_base(&self, port: &str) -> String {
        format!("https://{}{port}", self.cfg.session.auth_host)
    }

    /// Where a browser without a session is sent: the auth host's login.
    pub fn login_url(&self, host: &str, port: &str, path_and_query: &str) -> String {
        let rd = format!("https://{host}{port}{path_and_query}");
        format!("{}/.dermgate/login?rd={}", self.auth_base(port), enc(&rd))
    }

    /// Where a browser that needs a step-up is sent: the auth host's step-up.
    pub fn mfa_url(&self, host: &str, port: &str, path_and_query: &str) -> String {
        let rd = format!("https://{host}{port}{path_and_query}");
        format!("{}/.dermgate/mfa?rd={}", self.auth_base(port), enc(&rd))
    }

    /// After a session exists on the auth host: go to `rd` directly (same host)
    /// or through a one-time handoff code (another host).
    async fn deliver(
        &self,
        rd: &str,
        session: &Session,
        cookies: Vec<String>,
    ) -> Response<ProxyBody> {
        let Some((uri, host)) = self.valid_rd(rd) else {
            return out(redirect("/", &cookies));
        };
        if host == self.cfg.session.auth_host {
            return out(redirect(rd, &cookies));
        }
        let code = match crate::keys::token(32) {
            Ok(c) => c,
            Err(_) => return store_down(),
        };
        let h = Handoff {
            id: session.id.clone(),
            host: host.clone(),
        };
        let Ok(json) = serde_json::to_vec(&h) else {
            return store_down();
        };
        if self
            .sessions
            .store()
            .put(&format!("h:{code}"), &json, Some(HANDOFF_TTL))
            .await
            .is_err()
        {
            return store_down();
        }
        let port = uri.port_u16().map_or(String::new(), |p| format!(":{p}"));
        out(redirect(
            &format!(
                "https://{host}{port}/.dermgate/handoff?code={code}&rd={}",
                enc(rd)
            ),
            &cookies,
        ))
    }
}

fn store_down() -> Response<ProxyBody> {
    msg(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is unavailable",
        "The gateway cannot reach its session store right now, so nobody can sign in. Try again in a minute; your administrator has been alerted.",
        None,
    )
}

/// Same-origin check for POSTs: browsers send `Origin` on every POST.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|o| o.strip_prefix("https://"))
        .and_then(|o| o.parse::<http::uri::Authority>().ok())
        .and_then(|a| canonical::canonical_host(a.host()).map(|h| h.into_owned()))
        .is_some_and(|h| h == host)
}

async fn read_form(req: Request<Inbound>) -> Option<Bytes> {
    Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()
        .map(|b| b.to_bytes())
}

/// Appends an identity `event` record (and logs it; never secrets).
pub fn audit(
    shared: &Shared,
    event: &str,
    sub: Option<&str>,
    conn: &ConnInfo,
    reason: Option<String>,
    alert: bool,
) {
    if alert {
        tracing::warn!(target: "dermgate::audit", event, sub = sub.unwrap_or(""), src = %conn.client, reason = reason.as_deref().unwrap_or(""), alert, "identity event");
    } else {
        tracing::info!(target: "dermgate::audit", event, sub = sub.unwrap_or(""), src = %conn.client, reason = reason.as_deref().unwrap_or(""), "identity event");
    }
    if let Some(a) = &shared.audit {
        let mut r = crate::audit::Record::new("event");
        r.event = Some(event.to_string());
        r.sub = sub.map(str::to_string);
        r.src = Some(conn.client.to_string());
        r.reason = reason;
        r.proto = Some(conn.proto.label());
        r.tls = Some(conn.tls);
        r.alert = alert.then_some(true);
        a.record(r);
    }
}

/// Serves everything under `/.dermgate/` except `break-glass`.
pub async fn handle(
    shared: &Shared,
    id: &IdentityService,
    conn: &ConnInfo,
    req: Request<Inbound>,
) -> Response<ProxyBody> {
    let Some((host, port)) = request_host(&req) else {
        return msg(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request names no valid host.",
            None,
        );
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/.dermgate/jwks.json") => {
            let mut r = Response::new(Full::new(Bytes::from(id.assertion.jwks.clone())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
            out(r)
        }
        (Method::GET, "/.dermgate/login") => login(shared, id, conn, &req, &host, &port).await,
        (Method::GET, "/.dermgate/callback") => {
            callback(shared, id, conn, &req, &host, &port).await
        }
        (Method::GET, "/.dermgate/handoff") => handoff(id, &req, &host).await,
        (Method::POST, "/.dermgate/logout") => logout(shared, id, conn, req, &host, &port).await,
        (Method::GET, "/.dermgate/logged-out") => msg(
            StatusCode::OK,
            "You are signed out",
            "Your session has ended on every site of this practice. Close the browser if this is a shared computer.",
            Some(("/", "Sign in again")),
        ),
        (Method::GET | Method::POST, "/.dermgate/mfa") => {
            mfa(shared, id, conn, req, &host, &port).await
        }
        (Method::POST, "/.dermgate/backchannel-logout") => {
            backchannel(shared, id, conn, req, &host).await
        }
        (
            _,
            "/.dermgate/login"
            | "/.dermgate/callback"
            | "/.dermgate/handoff"
            | "/.dermgate/logout"
            | "/.dermgate/logged-out"
            | "/.dermgate/mfa"
            | "/.dermgate/backchannel-logout"
            | "/.dermgate/jwks.json",
        ) => msg(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "This gateway page does not accept that method.",
            None,
        ),
        _ => msg(
            StatusCode::NOT_FOUND,
            "Not found",
            "This gateway page does not exist.",
            None,
        ),
    }
}

async fn login(
    shared: &Shared,
    id: &IdentityService,
    conn: &ConnInfo,
    req: &Request<Inbound>,
    host: &str,
    port: &str,
) -> Response<ProxyBody> {
    let rd = query_param(req.uri(), "rd").unwrap_or_else(|| format!("https://{host}{port}/"));
    if id.valid_rd(&rd).is_none() {
        audit(
            shared,
            "login_refused",
            None,
            conn,
            Some("return address not allowed".into()),
            false,
        );
        return msg(
            StatusCode::BAD_REQUEST,
            "Unknown return address",
            "The sign-in link names a return address that is not one of this practice's sites. Open the site you want directly.",
            None,
        );
    }
    let ended = query_param(req.uri(), "ended").is_some_and(|v| v == "1");
    if host != id.cfg.session.auth_host {
        let ended = if ended { "&ended=1" } else { "" };
        return out(redirect(
            &format!(
                "{}/.dermgate/login?rd={}{ended}",
                id.auth_base(port),
                enc(&rd)
            ),
            &[],
        ));
    }
    // Already signed in here: hand the session on at once.
    if let Ok(Ok(s)) = id.session(req.headers(), None).await {
        return id.deliver(&rd, &s, Vec::new()).await;
    }
    // The session-ended page: why the clinician has to sign in again, and one
    // button to do it (no automatic redirect, so the reason is read).
    if ended {
        let again = format!("{}/.dermgate/login?rd={}", id.auth_base(port), enc(&rd));
        let idle = crate::alerts::human(id.cfg.session.idle);
        let absolute = crate::alerts::human(id.cfg.session.absolute);
        return msg(
            StatusCode::OK,
            "Your session has ended",
            &format!(
                "To protect patient information you are signed out after {idle} without activity, {absolute} after signing in, or when your session is ended from another place. Sign in again to continue where you were."
            ),
            Some((&again, "Sign in again")),
        );
    }
    let (url, state) = match id.idp.begin(&rd, now()).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a login");
            return msg(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "The practice's sign-in service cannot be reached right now. Try again in a minute.",
                None,
            );
        }
    };
    let sealed = serde_json::to_vec(&state)
        .ok()
        .and_then(|j| id.cookie_keys.load().seal(LOGIN_COOKIE.as_bytes(), &j).ok());
    let Some(sealed) = sealed else {
        return store_down();
    };
    out(redirect(
        &url,
        &[set_cookie(LOGIN_COOKIE, &sealed, Some(600))],
    ))
}

async fn callback(
    shared: &Shared,
    id: &IdentityService,
    conn: &ConnInfo,
    req: &Request<Inbound>,
    host: &str,
    port: &str,
) -> Response<ProxyBody> {
    let restart = format!("https://{host}{port}/.dermgate/login");
    let fail = |why: &str, text: &str| {
        audit(
            shared,
            "login_failed",
            None,
            conn,
            Some(why.to_string()),
            false,
        );
        let mut r = msg(
            StatusCode::BAD_REQUEST,
            "Sign-in did not complete",
            text,
            Some((&restart, "Start again")),
        );
        if let Ok(v) = HeaderValue::from_str(&clear_cookie(LOGIN_COOKIE)) {
            r.headers_mut().append(http::header::SET_COOKIE, v);
        }
        r
    };
    if host != id.cfg.session.auth_host {
        return fail(
            "callback on a route host",
            "This sign-in link is not valid here.",
        );
    }
    let uri = req.uri();
    if let Some(e) = query_param(uri, "error") {
        let e: String = e
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(40)
            .collect();
        return fail(
            &format!("idp error {e}"),
            "The sign-in was cancelled or refused by the identity provider.",
        );
    }
    let login: Option<super::oidc::LoginState> = cookie(req.headers(), LOGIN_COOKIE)
        .and_then(|v| id.cookie_keys.load().open(LOGIN_COOKIE.as_bytes(), v))
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(login) = login.filter(|l| l.exp > now()) else {
        return fail(
            "no or expired login cookie",
            "This sign-in attempt expired or was started in another browser. Start again.",
        );
    };
    let state = query_param(uri, "state").unwrap_or_default();
    if aws_lc_rs::constant_time::verify_slices_are_equal(state.as_bytes(), login.state.as_bytes())
        .is_err()
    {
        return fail(
            "state mismatch",
            "This sign-in response does not belong to your sign-in attempt. Start again.",
        );
    }
    // RFC 9207: when the IdP names itself, it must be ours (mix-up attacks).
    if let Some(iss) = query_param(uri, "iss")
        && iss.trim_end_matches('/') != id.cfg.oidc.issuer
    {
        return fail(
            "iss mismatch",
            "This sign-in response comes from an unexpected identity provider. Start again.",
        );
    }
    let Some(code) = query_param(uri, "code") else {
        return fail(
            "no code",
            "The identity provider sent no authorization code. Start again.",
        );
    };
    let (claims, id_token) = match id.idp.finish(&code, &login).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "login failed");
            return fail(
                &e.to_string(),
                "The identity provider's answer could not be verified. Start again.",
            );
        }
    };
    let t = now();
    let mfa_method = claims.mfa_method(&id.cfg.oidc.mfa_amr);
    let auth_time = claims.auth_time.unwrap_or(t).min(t);
    let record = SessionRecord {
        sub: claims.sub.clone(),
        groups: claims.groups.clone(),
        amr: claims.amr.clone(),
        auth_time,
        mfa_time: mfa_method.as_ref().map(|_| auth_time),
        mfa_method: mfa_method.map(|m| format!("idp:{m}")),
        device: None,
        created: t,
        last_seen: t,
        sid: claims.sid.clone(),
        id_token: Some(id_token),
        email: claims.email.clone(),
    };
    // A new id at every login; a session this browser had is ended (no fixation).
    if let Ok(Some(old)) = id.open_cookie(req.headers()) {
        let _ = id.sessions.revoke(&old.i).await;
    }
    let session = match id.sessions.create(record).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot store a session");
            return store_down();
        }
    };
    let Ok(sealed) = id.seal_cookie(&session) else {
        return store_down();
    };
    audit(
        shared,
        "login",
        Some(&session.record.sub),
        conn,
        Some(match &session.record.mfa_method {
            Some(m) => format!("mfa={m}"),
            None => "mfa=none".into(),
        }),
        false,
    );
    let cookies = vec![
        set_cookie(COOKIE_NAME, &sealed, None),
        clear_cookie(LOGIN_COOKIE),
    ];
    id.deliver(&login.rd, &session, cookies).await
}

async fn handoff(id: &IdentityService, req: &Request<Inbound>, host: &str) -> Response<ProxyBody> {
    let code = query_param(req.uri(), "code").unwrap_or_default();
    let rd = query_param(req.uri(), "rd").unwrap_or_default();
    let bad = || {
        msg(
            StatusCode::BAD_REQUEST,
            "This sign-in link has expired",
            "Sign-in links work once, for 30 seconds. Open the site again to sign in.",
            None,
        )
    };
    if code.is_empty() || code.len() > 100 {
        return bad();
    }
    let taken = match id.sessions.store().take(&format!("h:{code}")).await {
        Ok(t) => t,
        Err(_) => return store_down(),
    };
    let Some(h) = taken.and_then(|b| serde_json::from_slice::<Handoff>(&b).ok()) else {
        return bad();
    };
    if h.host != host {
        return bad();
    }
    let target = match id.valid_rd(&rd) {
        Some((_, rd_host)) if rd_host == host => rd,
        _ => "/".to_string(),
    };
    let record = match id.sessions.get(&h.id).await {
        Ok(Some(r)) => r,
        Ok(None) => return bad(),
        Err(_) => return store_down(),
    };
    let session = Session { id: h.id, record };
    let Ok(sealed) = id.seal_cookie(&session) else {
        return store_down();
    };
    out(redirect(&target, &[set_cookie(COOKIE_NAME, &sealed, None)]))
}

async fn logout(
    shared: &Shared,
    id: &IdentityService,
    conn: &ConnInfo,
    req: Request<Inbound>,
    host: &str,
    port: &str,
) -> Response<ProxyBody> {
    if !same_origin(req.headers(), host) {
        audit(
            shared,
            "logout_refused",
            None,
            conn,
            Some("cross-site request".into()),
            false,
        );
        return msg(
            StatusCode::FORBIDDEN,
            "Sign-out refused",
            "Sign out from the page's own button.",
            None,
        );
    }
    let mut id_token = None;
    let mut sub = None;
    if let Ok(Some(c)) = id.open_cookie(req.headers()) {
        if let Ok(Some(rec)) = id.sessions.get(&c.i).await {
            id_token = id.sessions.id_token(&c.i).await.ok().flatten();
            sub = Some(rec.sub);
        }
        if id.sessions.revoke(&c.i).await.is_err() {
            return store_down();
        }
    }
    audit(shared, "logout", sub.as_deref(), conn, None, false);
    let after = format!("{}/.dermgate/logged-out", id.auth_base(port));
    let to = id
        .idp
        .end_session_url(id_token.as_deref(), &after)
        .unwrap_or(after);
    out(redirect(&to, &[clear_cookie(COOKIE_NAME)]))
}

async fn backchannel(
    shared: &Shared,
    id: &IdentityService,
    conn: &ConnInfo,
    req: Request<Inbound>,
    host: &str,
) -> Response<ProxyBody> {
    let json = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        out(r)
    };
    if host != id.cfg.session.auth_host {
        return json(StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}");
    }
    let Some(body) = read_form(req).await else {
        return json(StatusCode::BAD_REQUEST, "{\"error\":\"invalid_request\"}");
    };
    let Some(token) = form_param(&body, "logout_token") else {
        return json(StatusCode::BAD_REQUEST, "{\"error\":\"invalid_request\"}");
    };
    let (sub, sid) = match id.idp.verify_logout_token(&token).await {
        Ok(x) => x,
        Err(e) => {
            audit(
                shared,
                "backchannel_logout_refused",
                None,
                conn,
                Some(e.to_string()),
                false,
            );
            return json(StatusCode::BAD_REQUEST, "{\"error\":\"invalid_request\"}");
        }
    };
    let ended = match (&sid, &sub) {
        (Some(sid), _) => id.sessions.revoke_sid(sid).await,
        (None, Some(sub)) => id.sessions.revoke_user(sub).await,
        (None, None) => Ok(Vec::new()),
    };
    match ended {
        Ok(ids) => {
            audit(
                shared,
                "backchannel_logout",
                sub.as_deref(),
                conn,
                Some(format!("sessions={}", ids.len())),
                false,
            );
            json(StatusCode::OK, "{}")
        }
        Err(_) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"temporarily_unavailable\"}",
        ),
    }
}

async fn mfa(
    shared: &Shared,
    id: &IdentityService,
    conn: &ConnInfo,
    req: Request<Inbound>,
    host: &str,
    port: &str,
) -> Response<ProxyBody> {
    // The client behind a trusted balancer, for the per-address failure count.
    let client = crate::pipeline::client_address(shared, conn, &req);
    let is_post = req.method() == Method::POST;
    if is_post && !same_origin(req.headers(), host) {
        audit(
            shared,
            "mfa_refused",
            None,
            conn,
            Some("cross-site request".into()),
            false,
        );
        return msg(
            StatusCode::FORBIDDEN,
            "Refused",
            "Use the form on this page.",
            None,
        );
    }
    let query_rd = query_param(req.uri(), "rd");
    if host != id.cfg.session.auth_host {
        let rd = query_rd.unwrap_or_else(|| format!("https://{host}{port}/"));
        return out(redirect(
            &format!("{}/.dermgate/mfa?rd={}", id.auth_base(port), enc(&rd)),
            &[],
        ));
    }
    let session = match id.session(req.headers(), None).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => {
            let rd = query_rd.unwrap_or_else(|| format!("https://{host}{port}/"));
            return out(redirect(&format!("/.dermgate/login?rd={}", enc(&rd)), &[]));
        }
        Err(_) => return store_down(),
    };
    let sub = session.record.sub.clone();
    let store = id.sessions.store().clone();
    let (code, rd) = if is_post {
        let Some(body) = read_form(req).await else {
            return msg(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The form could not be read.",
                None,
            );
        };
        (form_param(&body, "code"), form_param(&body, "rd"))
    } else {
        (None, query_rd)
    };
    let rd = rd
        .filter(|r| id.valid_rd(r).is_some())
        .unwrap_or_else(|| format!("https://{host}{port}/"));
    let page = |status: StatusCode, error: Option<&str>, enrollment: &Enrollment| match enrollment {
        Enrollment::Enrolled => out(pages::step_up(status, &sub, &rd, error)),
        Enrollment::Pending(secret) => {
            let uri = super::totp::otpauth_uri(secret, &sub).unwrap_or_default();
            let svg = super::totp::qr_svg(&uri).unwrap_or_default();
            out(pages::enroll(
                status,
                &sub,
                &svg,
                &super::totp::base32(secret),
                &rd,
                error,
            ))
        }
    };
    let enrollment = match id.totp.enrollment(&store, &sub).await {
        Ok(e) => e,
        Err(_) => return store_down(),
    };
    let Some(code) = code else {
        return page(StatusCode::OK, None, &enrollment);
    };
    let verdict = match id.totp.verify(&store, &sub, &code, now()).await {
        Ok(v) => v,
        Err(_) => return store_down(),
    };
    match verdict {
        Verdict::Accepted => {
            let mut record = session.record.clone();
            let t = now();
            record.mfa_time = Some(t);
            record.mfa_method = Some("totp".into());
            if !record.amr.iter().any(|a| a == "otp") {
                record.amr.push("otp".into());
            }
            // A new session id at step-up (no fixation); other hosts pick it up by handoff.
            let renewed = match id.sessions.renew(&session.id, record).await {
                Ok(s) => s,
                Err(_) => return store_down(),
            };
            let Ok(sealed) = id.seal_cookie(&renewed) else {
                return store_down();
            };
            let event = if matches!(enrollment, Enrollment::Pending(_)) {
                "totp_enrolled"
            } else {
                "step_up"
            };
            audit(
                shared,
                event,
                Some(&sub),
                conn,
                Some("mfa=totp".into()),
                false,
            );
            id.deliver(&rd, &renewed, vec![set_cookie(COOKIE_NAME, &sealed, None)])
                .await
        }
        Verdict::Wrong | Verdict::Replayed => {
            let why = if verdict == Verdict::Replayed {
                "code already used"
            } else {
                "wrong code"
            };
            audit(
                shared,
                "mfa_failure",
                Some(&sub),
                conn,
                Some(why.into()),
                false,
            );
            shared.alerts.mfa_failed(&sub, &client.to_string());
            page(
                StatusCode::UNAUTHORIZED,
                Some(if verdict == Verdict::Replayed {
                    "That code was already used. Wait for the next code and enter it."
                } else {
                    "That code is not right. Check your authenticator app and try again."
                }),
                &enrollment,
            )
        }
        Verdict::LockedNow | Verdict::Locked => {
            if verdict == Verdict::LockedNow {
                audit(
                    shared,
                    "mfa_lockout",
                    Some(&sub),
                    conn,
                    Some(format!(
                        "{} failures in 5 minutes",
                        super::totp::MAX_FAILURES
                    )),
                    true,
                );
            }
            msg(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong codes",
                "The second-factor check is locked for 15 minutes after 5 wrong codes. Try again later, or contact your administrator.",
                None,
            )
        }
        Verdict::NotEnrolled => page(StatusCode::OK, None, &enrollment),
    }
}

/// Whether a request without a usable session should be sent to sign in
/// (a browser asking for a page) or told 401 (an API client).
pub fn reason_text(why: NoSession) -> &'static str {
    match why {
        NoSession::None => "Sign in to continue.",
        NoSession::BadCookie => "Your sign-in could not be read. Sign in again.",
        NoSession::Ended => "Your session has ended. Sign in again.",
    }
}
