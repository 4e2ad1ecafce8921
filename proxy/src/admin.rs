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

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
                    text(
                        StatusCode::OK,
                        "application/json",
                        format!(
                            "{{\"version\":\"{}\",\"ready\":{},\"routes\":[{}]}}",
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
                let resp = admin(&shared, &req);
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
