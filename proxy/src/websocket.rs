//! WebSocket through the proxy: HTTP/1.1 `Upgrade` and HTTP/2 extended
//! CONNECT (RFC 8441) from the client, always an HTTP/1.1 upgrade towards the
//! upstream. Once both sides have switched protocols, bytes are spliced in
//! both directions until either side closes.

use base64::Engine;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::forward::ResponseBody;
use crate::pages;
use crate::pipeline::{ProxyBody, WebSocket};

/// Turns the forwarded head into an HTTP/1.1 WebSocket handshake for the upstream.
pub fn upstream_handshake_headers(parts: &mut Parts, kind: WebSocket) {
    parts.method = Method::GET;
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if kind == WebSocket::ExtendedConnect || !h.contains_key(header::SEC_WEBSOCKET_KEY) {
        // RFC 8441 has no key: the proxy makes one for the HTTP/1.1 leg.
        let mut nonce = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut nonce).is_ok() {
            let key = base64::engine::general_purpose::STANDARD.encode(nonce);
            if let Ok(v) = HeaderValue::from_str(&key) {
                h.insert(header::SEC_WEBSOCKET_KEY, v);
            }
        }
    }
    h.entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// Given the upstream's answer, answers the client and splices the two
/// upgraded connections. `None` when the upstream did not switch protocols.
pub fn splice(
    kind: WebSocket,
    client: OnUpgrade,
    upstream: &mut Response<ResponseBody>,
    cut: Option<std::sync::Arc<crate::identity::streams::StreamFlag>>,
) -> Option<Response<ProxyBody>> {
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        tracing::info!(
            status = upstream.status().as_u16(),
            "upstream refused the WebSocket upgrade"
        );
        return None;
    }
    let upstream_io = hyper::upgrade::on(&mut *upstream);
    let mut resp = Response::new(Either::Right(Full::default()));
    *resp.status_mut() = match kind {
        WebSocket::Upgrade => StatusCode::SWITCHING_PROTOCOLS,
        WebSocket::ExtendedConnect => StatusCode::OK,
    };
    let h = resp.headers_mut();
    for name in [
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(v) = upstream.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    match kind {
        WebSocket::Upgrade => {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            // The client's key went upstream unchanged, so the upstream's accept value answers it.
            if let Some(v) = upstream.headers().get(header::SEC_WEBSOCKET_ACCEPT) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v.clone());
            }
        }
        WebSocket::ExtendedConnect => {}
    }
    h.insert(header::STRICT_TRANSPORT_SECURITY, pages::HSTS);
    tokio::spawn(async move {
        let (c, u) = tokio::join!(client, upstream_io);
        match (c, u) {
            (Ok(c), Ok(u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                let ended = async {
                    match &cut {
                        Some(flag) => flag.closed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
                        Ok((up, down)) => {
                            tracing::info!(bytes_in = up, bytes_out = down, "websocket closed")
                        }
                        Err(e) => tracing::debug!(error = %e, "websocket ended with an error"),
                    },
                    () = ended => tracing::info!("websocket cut: its session ended"),
                }
            }
            (c, u) => tracing::debug!(
                client = c.is_ok(),
                upstream = u.is_ok(),
                "websocket upgrade did not complete"
            ),
        }
    });
    Some(resp)
}
