//! Break-the-glass: emergency access that a policy rule with
//! `break_glass = true` grants only after the user states why.
//!
//! `GET /.dermgate/break-glass?route=R&rd=/path` shows a form; `POST` with a
//! justification of at least [`MIN_JUSTIFICATION`] characters opens an
//! elevation for that signed-in user and route, for `[policy]
//! break_glass_for` (default 1 h). Every grant and every request it allows is
//! an audit event that raises an alert. The elevation is keyed by the user's
//! subject: an anonymous request can never open one. The form is protected
//! against cross-site posting (its `Origin` must be this host) and only
//! returns to a path on the same host (no open redirect).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::canonical;
use crate::forward::Inbound;
use crate::pages;
use crate::pipeline::{ConnInfo, Identity, ProxyBody, Shared};

/// Shortest justification accepted.
pub const MIN_JUSTIFICATION: usize = 20;
const MAX_FORM: usize = 16 * 1024;

/// Open elevations: (subject, route) → until. Consulted only when a policy
/// deny says break-the-glass would help, never on the common path.
#[derive(Debug, Default)]
pub struct Elevations {
    open: Mutex<HashMap<(String, String), Instant>>,
}

impl Elevations {
    /// Opens (or extends) an elevation.
    pub fn grant(&self, subject: &str, route: &str, lasts: Duration, now: Instant) {
        let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, until| *until > now);
        m.insert((subject.to_string(), route.to_string()), now + lasts);
    }

    /// True when `subject` holds an unexpired elevation for `route`.
    pub fn active(&self, subject: &str, route: &str, now: Instant) -> bool {
        let m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(subject.to_string(), route.to_string()))
            .is_some_and(|until| *until > now)
    }
}

/// Why a break-the-glass request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Nobody is signed in: there is no one to hold the elevation or answer for it.
    SignInFirst,
    /// The justification is shorter than [`MIN_JUSTIFICATION`] characters.
    TooShort,
    /// No such route.
    UnknownRoute,
    /// The return address is not a path on this host.
    BadReturn,
    /// The form was posted from another site.
    CrossSite,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Self::SignInFirst => {
                "Sign in first: emergency access is granted to a signed-in user, who answers for it."
            }
            Self::TooShort => "Say why you need emergency access, in at least 20 characters.",
            Self::UnknownRoute => "There is no such site on this gateway.",
            Self::BadReturn => "The return address must be a page on this site.",
            Self::CrossSite => "This form must be sent from this site.",
        }
    }
}

/// The form's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// Route name.
    pub route: String,
    /// Why.
    pub justification: String,
    /// Where to return (a path on this host).
    pub rd: String,
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `application/x-www-form-urlencoded` (also used for the query string).
pub fn parse_form(s: &str) -> Form {
    let mut f = Form::default();
    for pair in s.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(v) else { continue };
        match k {
            "route" => f.route = v,
            "justification" => f.justification = v,
            "rd" => f.rd = v,
            _ => {}
        }
    }
    f
}

/// A return address is acceptable when it is a path on this host.
pub fn safe_return(rd: &str) -> bool {
    rd.starts_with('/')
        && !rd.starts_with("//")
        && !rd.contains('\\')
        && !rd.chars().any(char::is_control)
}

/// Decides a break-the-glass request (pure: the caller grants and audits).
pub fn check(subject: Option<&str>, form: &Form, routes: &[String]) -> Result<(), Refusal> {
    if !routes.contains(&form.route) {
        return Err(Refusal::UnknownRoute);
    }
    if !form.rd.is_empty() && !safe_return(&form.rd) {
        return Err(Refusal::BadReturn);
    }
    if subject.is_none() {
        return Err(Refusal::SignInFirst);
    }
    if form.justification.trim().chars().count() < MIN_JUSTIFICATION {
        return Err(Refusal::TooShort);
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn form_page(status: StatusCode, form: &Form, error: Option<&str>) -> Response<ProxyBody> {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Emergency access</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:8vh auto;padding:0 1em;color:#1d2733}}\
textarea{{width:100%;min-height:7em}}.e{{color:#a4161a}}</style></head><body>\
<h1>Emergency access (break the glass)</h1>\
<p>Access to <b>{route}</b> needs a stated reason. Your reason, your name and every page you open \
are recorded and reviewed; an alert is raised now.</p>{err}\
<form method=\"post\" action=\"/.dermgate/break-glass\">\
<input type=\"hidden\" name=\"route\" value=\"{route}\"><input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
<label for=\"j\">Why do you need access? (at least {min} characters)</label>\
<textarea id=\"j\" name=\"justification\" minlength=\"{min}\" required></textarea>\
<p><button type=\"submit\">Request emergency access</button></p></form></body></html>",
        route = escape(&form.route),
        rd = escape(&form.rd),
        min = MIN_JUSTIFICATION,
        err = error.map_or(String::new(), |e| format!(
            "<p class=\"e\">{}</p>",
            escape(e)
        )),
    );
    let mut r = pages::page(status, "", "", true).map(|_| Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The form posts to itself only.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    r.map(Either::Right)
}

/// Serves `/.dermgate/break-glass`.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    identity: &Identity,
    req: Request<Inbound>,
) -> Response<ProxyBody> {
    let routes = shared.route_names();
    let host = canonical::canonicalize(&Method::GET, req.uri(), req.headers())
        .map(|c| c.host.into_owned());
    match *req.method() {
        Method::GET => {
            let form = parse_form(req.uri().query().unwrap_or(""));
            if !routes.contains(&form.route) {
                return form_page(
                    StatusCode::NOT_FOUND,
                    &form,
                    Some(Refusal::UnknownRoute.message()),
                );
            }
            let note = identity
                .subject()
                .is_none()
                .then_some(Refusal::SignInFirst.message());
            form_page(StatusCode::OK, &form, note)
        }
        Method::POST => {
            // Same-origin only: browsers send Origin on every POST.
            let origin_ok = match (
                &host,
                req.headers()
                    .get(header::ORIGIN)
                    .and_then(|v| v.to_str().ok()),
            ) {
                (Ok(h), Some(o)) => o
                    .strip_prefix("https://")
                    .and_then(canonical::canonical_host)
                    .is_some_and(|oh| oh == h.as_str()),
                _ => false,
            };
            let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            let form = parse_form(std::str::from_utf8(&body).unwrap_or(""));
            let result = if origin_ok {
                check(identity.subject(), &form, &routes)
            } else {
                Err(Refusal::CrossSite)
            };
            match result {
                Ok(()) => {
                    let subject = identity.subject().unwrap_or_default();
                    let lasts = shared
                        .policy_cfg
                        .as_ref()
                        .map_or(Duration::from_secs(3600), |p| p.break_glass_for);
                    shared
                        .elevations
                        .grant(subject, &form.route, lasts, Instant::now());
                    tracing::warn!(
                        target: "dermgate::audit",
                        event = "break_glass",
                        alert = true,
                        sub = subject,
                        route = %form.route,
                        src = %conn.client,
                        justification = %form.justification.trim(),
                        minutes = lasts.as_secs() / 60,
                        "break-the-glass elevation opened"
                    );
                    // The elevation's record: who, where from, which route, and why.
                    shared.alerts.raise_now(crate::alerts::Alert {
                        kind: "break_glass",
                        sub: Some(subject.to_string()),
                        src: Some(conn.client.to_string()),
                        route: Some(form.route.clone()),
                        detail: form.justification.trim().to_string(),
                    });
                    let rd = if form.rd.is_empty() {
                        "/".to_string()
                    } else {
                        form.rd.clone()
                    };
                    let mut r = Response::new(Either::Right(Full::default()));
                    *r.status_mut() = StatusCode::SEE_OTHER;
                    if let Ok(v) = HeaderValue::from_str(&rd) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r.headers_mut()
                        .insert(header::STRICT_TRANSPORT_SECURITY, pages::HSTS);
                    r
                }
                Err(refusal) => {
                    tracing::info!(
                        target: "dermgate::audit",
                        event = "break_glass_refused",
                        route = %form.route,
                        src = %conn.client,
                        reason = ?refusal,
                        "break-the-glass request refused"
                    );
                    shared.audit_event(
                        "break_glass_refused",
                        Some(&form.route),
                        Some(format!("{refusal:?}")),
                        None,
                    );
                    let status = match refusal {
                        Refusal::SignInFirst => StatusCode::UNAUTHORIZED,
                        Refusal::CrossSite => StatusCode::FORBIDDEN,
                        Refusal::UnknownRoute => StatusCode::NOT_FOUND,
                        Refusal::TooShort | Refusal::BadReturn => StatusCode::BAD_REQUEST,
                    };
                    form_page(status, &form, Some(refusal.message()))
                }
            }
        }
        _ => form_page(
            StatusCode::METHOD_NOT_ALLOWED,
            &Form::default(),
            Some("Use the form."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_in_order() {
        let routes = vec!["ehr".to_string()];
        let mut f = Form {
            route: "ehr".into(),
            justification: "patient in anaphylaxis, chart needed".into(),
            rd: "/chart/42".into(),
        };
        assert_eq!(check(Some("alice"), &f, &routes), Ok(()));
        assert_eq!(check(None, &f, &routes), Err(Refusal::SignInFirst));
        f.justification = "   short reason      ".into();
        assert_eq!(check(Some("alice"), &f, &routes), Err(Refusal::TooShort));
        f.rd = "//evil.example/".into();
        assert_eq!(check(Some("alice"), &f, &routes), Err(Refusal::BadReturn));
        f.route = "nope".into();
        assert_eq!(
            check(Some("alice"), &f, &routes),
            Err(Refusal::UnknownRoute)
        );
    }

    #[test]
    fn form_parsing_and_returns() {
        let f = parse_form("route=ehr&justification=code+blue%2C+bed+4&rd=%2Fchart%2F1");
        assert_eq!(f.justification, "code blue, bed 4");
        assert_eq!(f.rd, "/chart/1");
        for bad in ["//x", "https://x/", "/\\x", "x", "/a\nb"] {
            assert!(!safe_return(bad), "{bad}");
        }
    }

    #[test]
    fn elevations_expire_and_are_per_user_and_route() {
        let e = Elevations::default();
        let t0 = Instant::now();
        e.grant("alice", "ehr", Duration::from_secs(60), t0);
        assert!(e.active("alice", "ehr", t0));
        assert!(!e.active("bob", "ehr", t0));
        assert!(!e.active("alice", "imaging", t0));
        assert!(!e.active("alice", "ehr", t0 + Duration::from_secs(61)));
    }
}
