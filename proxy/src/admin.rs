//! The admin listener (`listen.admin`) and the port-80 redirector.
//!
//! Admin: `/healthz` (the process is up), `/readyz` (config, certificates and
//! the first upstream health round are loaded), `/metrics` (Prometheus text)
//! and the admin API under `/admin/`, which needs `Authorization: Bearer
//! <token>` with the token from `admin_token_file` (compared in constant
//! time) and refuses everything when no token is configured. Plain HTTP:
//! bind it to loopback.
//!
//! Redirector (`listen.redirect_http`): answers `308` to the https URL on a
//! configured route host and proxies nothing; unknown hosts get 404, so it
//! is not an open redirect.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::pipeline::Shared;

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Constant-time comparison of the presented bearer token with the configured one.
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(want) = shared.admin_token.as_deref() else {
        return false;
    };
    let Some(got) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(got.as_bytes(), want.as_bytes()).is_ok()
}

/// Largest policy text the admin API accepts.
const MAX_POLICY_BYTES: usize = 4 << 20;

async fn admin(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/admin/v1/policy" && authorized(shared, &req) {
        return apply_policy(shared, req).await;
    }
    if req.uri().path() == "/.dermgate/jwks.json"
        && let Some(id) = &shared.identity
    {
        return text(
            StatusCode::OK,
            "application/jwk-set+json",
            id.assertion.jwks.clone(),
        );
    }
    let p = req.uri().path();
    if (p.starts_with("/admin/v1/sessions")
        || p.starts_with("/admin/v1/totp/")
        || p == "/admin/v1/keys/rotate")
        && authorized(shared, &req)
    {
        return identity_admin(shared, req).await;
    }
    admin_get(shared, &req)
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(b) => text(status, "application/json", b),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n",
        ),
    }
}

/// Sessions, TOTP and cookie keys of the running proxy.
async fn identity_admin(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::identity::ops;
    const PLAIN: &str = "text/plain; charset=utf-8";
    let Some(id) = shared.identity.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "identity is not configured ([oidc])\n",
        );
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let query_user = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "user")
            .map(|(_, v)| v.replace('+', " "))
    });
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let body = match http_body_util::BodyExt::collect(limited).await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, PLAIN, "body too large\n"),
    };
    let store_err = |e: crate::store::StoreError| {
        text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e}\n"))
    };
    #[derive(serde::Deserialize)]
    struct UserCode {
        user: String,
        #[serde(default)]
        code: String,
    }
    match (method, path.as_str()) {
        (http::Method::GET, "/admin/v1/sessions") => {
            match ops::list(&id.sessions, query_user.as_deref()).await {
                Ok(l) => json(StatusCode::OK, &l),
                Err(e) => store_err(e),
            }
        }
        (http::Method::POST, "/admin/v1/sessions/revoke") => {
            let Ok(r) = serde_json::from_slice::<ops::RevokeRequest>(&body) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    PLAIN,
                    "expected {\"id\": …} or {\"user\": …}\n",
                );
            };
            match ops::revoke(&id.sessions, &r).await {
                Ok(n) => {
                    shared.audit_event(
                        "revoke",
                        None,
                        Some(format!(
                            "sessions={n} user={}",
                            r.user.as_deref().unwrap_or("-")
                        )),
                        None,
                    );
                    json(StatusCode::OK, &serde_json::json!({ "revoked": n }))
                }
                Err(e) => store_err(e),
            }
        }
        (http::Method::POST, "/admin/v1/keys/rotate") => match id.rotate_cookie_keys() {
            Ok(kid) => {
                shared.audit_event(
                    "key_rotation",
                    None,
                    Some(format!("session cookie key {kid}")),
                    None,
                );
                json(StatusCode::OK, &serde_json::json!({ "kid": kid }))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
        },
        (http::Method::POST, "/admin/v1/totp/enroll") => {
            let Ok(u) = serde_json::from_slice::<UserCode>(&body) else {
                return text(StatusCode::BAD_REQUEST, PLAIN, "expected {\"user\": …}\n");
            };
            match ops::totp_enroll(&id.totp, id.sessions.store(), &u.user).await {
                Ok(e) => {
                    shared.audit_event(
                        "totp_enrolled",
                        None,
                        Some(format!("user={} by admin", u.user)),
                        None,
                    );
                    json(StatusCode::OK, &e)
                }
                Err(e) => store_err(e),
            }
        }
        (http::Method::POST, "/admin/v1/totp/verify") => {
            let Ok(u) = serde_json::from_slice::<UserCode>(&body) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    PLAIN,
                    "expected {\"user\": …, \"code\": …}\n",
                );
            };
            match ops::totp_verify(&id.totp, id.sessions.store(), &u.user, &u.code).await {
                Ok(v) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "result": ops::verdict_label(v) }),
                ),
                Err(e) => store_err(e),
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "no such admin endpoint\n"),
    }
}

/// `POST /admin/v1/policy` (body: the policy text): validate, test, write, swap.
async fn apply_policy(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != http::Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "POST the policy text\n",
        );
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_POLICY_BYTES);
    let body = match http_body_util::BodyExt::collect(limited).await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                PLAIN,
                "policy too large or unreadable\n",
            );
        }
    };
    let Ok(policy_text) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, PLAIN, "policy is not UTF-8\n");
    };
    match crate::policy::apply(shared, policy_text) {
        Ok(version) => text(
            StatusCode::OK,
            "application/json",
            format!("{{\"applied\":true,\"version\":\"{version}\"}}"),
        ),
        Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, PLAIN, format!("{e}\n")),
    }
}

fn admin_get(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            if shared.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            {
                let mut m = shared.metrics.render();
                shared.alerts.render(&mut m);
                m
            },
        ),
        p if p.starts_with("/admin/") => {
            if !authorized(shared, req) {
                let mut r = text(StatusCode::UNAUTHORIZED, PLAIN, "admin token required\n");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"dermgate-admin\""),
                );
                return r;
            }
            match p {
                "/admin/v1/status" => {
                    let snap = shared.snapshot.load();
                    let routes: Vec<String> = snap
                        .list
                        .iter()
                        .map(|r| format!("\"{}\"", r.cfg.name))
                        .collect();
                    let policy = shared
                        .policy
                        .load()
                        .as_ref()
                        .map_or("null".to_string(), |p| format!("\"{}\"", p.version()));
                    text(
                        StatusCode::OK,
                        "application/json",
                        format!(
                            "{{\"version\":\"{}\",\"ready\":{},\"routes\":[{}],\"policy\":{policy}}}",
                            env!("CARGO_PKG_VERSION"),
                            shared.ready.load(Ordering::Relaxed),
                            routes.join(",")
                        ),
                    )
                }
                _ => text(StatusCode::NOT_FOUND, PLAIN, "no such admin endpoint\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Serves the admin listener.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(admin(&shared, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn redirect(shared: &Shared, req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::canonical::canonical_host);
    let known = host.as_ref().is_some_and(|h| {
        shared
            .snapshot
            .load()
            .list
            .iter()
            .any(|r| r.cfg.host == h.as_ref())
    });
    let (Some(host), true) = (host, known) else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        );
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{pq}");
    let mut r = text(
        StatusCode::PERMANENT_REDIRECT,
        "text/plain; charset=utf-8",
        "",
    );
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
    }
}

/// Serves the port-80 redirector.
pub async fn serve_redirect(listener: TcpListener, shared: Arc<Shared>, https_port: u16) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = redirect(&shared, &req, https_port);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
