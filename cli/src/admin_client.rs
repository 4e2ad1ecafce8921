//! Talking to a running proxy through its admin API (address and token from
//! the configuration): the one client every live-state command uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use dermgate_proxy::config::Config;

/// A request to the admin API failed; the text says why.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No admin listener or token in the configuration.
    #[error("{0}")]
    NotConfigured(String),
    /// The proxy could not be reached.
    #[error(
        "cannot reach the proxy's admin API at {addr}: {source} (is `dermgate serve` running?)"
    )]
    Unreachable {
        /// Where it was tried.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The proxy answered with an error status.
    #[error("{status}: {body}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The proxy's explanation.
        body: String,
    },
    /// Anything else on the wire.
    #[error("admin API: {0}")]
    Protocol(String),
}

/// Where to reach the admin API of the proxy configured in `config`.
fn target(cfg: &Config) -> Result<(SocketAddr, String), AdminError> {
    let mut addr = cfg.listen.admin.ok_or_else(|| {
        AdminError::NotConfigured(format!(
            "{}: [listen] admin is not set, so there is no admin API to talk to",
            cfg.file.display()
        ))
    })?;
    // A wildcard bind is reached over loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let token_file = cfg.listen.admin_token_file.as_deref().ok_or_else(|| {
        AdminError::NotConfigured(format!(
            "{}: [listen] admin_token_file is not set; the admin API refuses requests without a token",
            cfg.file.display()
        ))
    })?;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| AdminError::NotConfigured(format!("{}: {e}", token_file.display())))?;
    Ok((addr, token.trim().to_string()))
}

/// Sends one request to the admin API and returns the response body.
pub fn call(config: &Path, method: Method, path: &str, body: Bytes) -> Result<String, AdminError> {
    let cfg = Config::load(config).map_err(|e| AdminError::NotConfigured(e.to_string()))?;
    let (addr, token) = target(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::Protocol(e.to_string()))?;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Unreachable { addr, source })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(body))
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(AdminError::Refused {
                status,
                body: text.trim_end().to_string(),
            })
        }
    })
}
