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
    admin_get(shared, &req)
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
            shared.metrics.render(),
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
