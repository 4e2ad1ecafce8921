//! `dermgate demo`: everything on one machine, for a first look. DEVELOPMENT ONLY.
//!
//! Makes development certificates (kept in the state directory so a browser
//! that trusts the dev CA keeps trusting it), starts the demo backends on
//! loopback over TLS 1.3 signed by the dev CA (an EHR page; an imaging store
//! with a generated multi-MB image that supports Range and upload), writes a
//! `dermgate.toml` for them into the state directory, loads it with the same
//! loader as `serve`, and prints where to point a browser.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::header::{CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use dermgate_proxy::config::{Config, LogConfig, LogFormat};

/// Runs the demo until Ctrl-C.
pub fn run(state_dir: &Path, listen: SocketAddr) -> ExitCode {
    crate::serve::init_logging(&LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match demo(state_dir, listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dermgate demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn demo(state_dir: &Path, listen: SocketAddr) -> Result<(), String> {
    let certs_dir = state_dir.join("certs");
    let uploads = state_dir.join("uploads");
    std::fs::create_dir_all(&uploads).map_err(|e| format!("{}: {e}", uploads.display()))?;
    if !certs_dir.join("server.key").is_file() {
        dermgate_proxy::certs::generate_dev(&certs_dir, &[]).map_err(|e| e.to_string())?;
    }
    let tls = dermgate_proxy::tls::server_config(
        &certs_dir.join("server.pem"),
        &certs_dir.join("server.key"),
    )
    .map_err(|e| e.to_string())?;
    let image = Arc::new(Bytes::from(lesion_bmp(1600, 1200)));
    let backend = Arc::new(Backend {
        image: image.clone(),
        uploads: uploads.clone(),
    });
    let ehr = start_backend(tls.clone(), backend.clone(), Kind::Ehr).await?;
    let img = start_backend(tls.clone(), backend.clone(), Kind::Imaging).await?;
    let video = start_backend(tls.clone(), backend, Kind::Video).await?;

    // The proxy's port must be known up front: the dev IdP registers its callback.
    let listen = if listen.port() == 0 {
        let probe = std::net::TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
        probe.local_addr().map_err(|e| e.to_string())?
    } else {
        listen
    };
    let port = listen.port();
    let admin = std::net::TcpListener::bind((listen.ip(), 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("admin port: {e}"))?;
    let secrets = state_dir.join("secrets");
    dermgate_proxy::keys::private_dir(&secrets)
        .map_err(|e| format!("{}: {e}", secrets.display()))?;
    let client_secret = dermgate_proxy::keys::token(24).map_err(|e| e.to_string())?;
    let admin_token = dermgate_proxy::keys::token(24).map_err(|e| e.to_string())?;
    for (name, value) in [
        ("oidc-client-secret", &client_secret),
        ("admin-token", &admin_token),
    ] {
        let p = secrets.join(name);
        let _ = std::fs::remove_file(&p);
        dermgate_proxy::keys::write_private(&p, value.as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("dev IdP: {e}"))?;
    let idp_port = idp_listener.local_addr().map_err(|e| e.to_string())?.port();
    let idp = crate::dev_idp::start(
        idp_listener,
        crate::dev_idp::DevIdpConfig {
            tls,
            issuer: format!("https://localhost:{idp_port}"),
            client_id: "dermgate".into(),
            client_secret,
            redirect_uris: vec![format!("https://localhost:{port}/.dermgate/callback")],
            post_logout_redirect_uris: vec![format!(
                "https://localhost:{port}/.dermgate/logged-out"
            )],
        },
    )
    .await?;
    let policy_path = state_dir.join("policy.toml");
    if !policy_path.is_file() {
        std::fs::write(&policy_path, DEMO_POLICY)
            .map_err(|e| format!("{}: {e}", policy_path.display()))?;
    }

    let config_path = state_dir.join("dermgate.toml");
    let config_text = format!(
        r#"# Written by `dermgate demo` (DEVELOPMENT ONLY). Regenerated at every start.
[listen]
addr = "{listen}"
admin = "{admin}"
admin_token_file = "secrets/admin-token"

[tls]
cert = "certs/server.pem"
key = "certs/server.key"

[log]
level = "info"
format = "text"

# The dev IdP runs inside `dermgate demo` (DEVELOPMENT ONLY, demo users).
[oidc]
issuer = "{issuer}"
client_id = "dermgate"
client_secret_file = "secrets/oidc-client-secret"
callback = "https://localhost:{port}/.dermgate/callback"
ca = "certs/ca.pem"
mfa_amr = ["otp", "mfa"]
api_audience = "dermgate-api"

[session]
auth_host = "localhost"
idle = "30m"
absolute = "12h"

[keys]
dir = "secrets"

[store]
kind = "embedded"
path = "store"

[policy]
file = "policy.toml"

[audit]
file = "audit/audit.jsonl"

[[route]]
name = "ehr"
host = "localhost"
upstreams = ["https://{ehr}"]
upstream_ca = "certs/ca.pem"

[[route]]
name = "imaging"
host = "localhost"
path = "/imaging"
upstreams = ["https://{img}"]
upstream_ca = "certs/ca.pem"
max_body = "2GiB"
integrity = true

[[route]]
name = "video"
host = "localhost"
path = "/visit"
upstreams = ["https://{video}"]
upstream_ca = "certs/ca.pem"
websocket = true
"#,
        issuer = idp.issuer,
    );
    std::fs::write(&config_path, config_text)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let cfg = Config::load(&config_path).map_err(|e| e.to_string())?;
    let proxy = crate::serve::start(&cfg)
        .await
        .map_err(|_| "the proxy could not start".to_string())?;
    let ca = certs_dir.join("ca.pem");
    let users: String = crate::dev_idp::DEMO_USERS
        .iter()
        .map(|u| {
            format!(
                "                       {:<10} password {:<20} {}\n",
                u.username,
                u.password,
                match (u.groups.first(), u.mfa) {
                    (None, _) => "no groups: every page is denied".to_string(),
                    (Some(&"patients"), _) => "patients: the video visit only".to_string(),
                    (Some(g), true) => format!("{g}, IdP did MFA"),
                    (Some(g), false) => format!("{g}, no MFA at the IdP: dermgate's TOTP step-up"),
                }
            )
        })
        .collect();
    println!(
        r#"
 ┌─ dermgate demo ── DEVELOPMENT ONLY: dev CA, dev IdP, demo users, demo backends ─┐

  Open in a browser:   https://localhost:{port}/            (demo EHR)
                       https://localhost:{port}/imaging/    (imaging viewer, Range, upload)
                       https://localhost:{port}/visit/      (video visit: WebSocket signaling)
                       HTTP/3 is on the same port (UDP); browsers switch to it via Alt-Svc

  Sign in as (dev IdP at {issuer}, DEVELOPMENT ONLY):
{users}
  Trust the dev CA:    {ca}
    Chromium/Chrome: Settings → Privacy and security → Security → Manage certificates
                     → Authorities → Import, then tick "Trust this certificate for identifying websites"
    Firefox:         Settings → Certificates → View Certificates → Authorities → Import
    or just try it:  curl --cacert {ca} https://localhost:{port}/   (401: sign in first)

  Sessions:            dermgate sessions list --config {config}
  Audit trail:         dermgate audit verify {audit}

  Config in use:       {config}   (dermgate check --config {config})
  Backends:            ehr https://{ehr}   imaging https://{img}   video https://{video}   (TLS 1.3, dev CA)
  Stop with Ctrl-C.
"#,
        ca = ca.display(),
        config = config_path.display(),
        issuer = idp.issuer,
        audit = state_dir.join("audit/audit.jsonl").display(),
    );
    proxy.run(crate::serve::shutdown_signal()).await;
    drop(idp);
    Ok(())
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The demo's segmentation policy (written once; edit it, or use `dermgate policy`).
const DEMO_POLICY: &str = r#"# dermgate demo policy (DEVELOPMENT ONLY). Default deny.
[[rule]]
name = "clinicians-ehr-imaging"
effect = "allow"
routes = ["ehr", "imaging"]
groups = ["clinicians"]
mfa_max_age = "12h"

[[rule]]
name = "clinicians-visits"
effect = "allow"
routes = ["video"]
groups = ["clinicians"]
mfa_max_age = "12h"

[[rule]]
name = "patients-visits"
effect = "allow"
routes = ["video"]
groups = ["patients"]
"#;

#[derive(Clone, Copy)]
enum Kind {
    Ehr,
    Imaging,
    Video,
}

struct Backend {
    image: Arc<Bytes>,
    uploads: PathBuf,
}

async fn start_backend(
    tls: Arc<rustls::ServerConfig>,
    backend: Arc<Backend>,
    kind: Kind,
) -> Result<SocketAddr, String> {
    let mut cfg = (*tls).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("demo backend: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let backend = backend.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let backend = backend.clone();
                    async move { Ok::<_, Infallible>(backend.handle(kind, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

type DemoBody = Full<Bytes>;

fn html(body: String) -> Response<DemoBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn status(code: StatusCode, text: &'static str) -> Response<DemoBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r
}

impl Backend {
    async fn handle(&self, kind: Kind, req: Request<Incoming>) -> Response<DemoBody> {
        let who = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        // A real backend verifies the assertion with /.dermgate/jwks.json; the demo only shows it.
        let user = req
            .headers()
            .get("x-dermgate-assertion")
            .and_then(|v| v.to_str().ok())
            .and_then(|jwt| jwt.split('.').nth(1))
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c.get("sub").and_then(|s| s.as_str()).map(escape_html))
            .unwrap_or_else(|| "nobody".into());
        match (kind, req.method(), req.uri().path()) {
            (Kind::Ehr, &Method::GET, "/") => html(format!(
                "<!doctype html><meta charset=utf-8><title>Demo EHR</title>\
<style>body{{font:16px system-ui;max-width:40em;margin:2em auto}}td,th{{padding:.3em 1em;text-align:left}}</style>\
<h1>Demo EHR</h1><p>Signed in as <b id=\"user\">{user}</b> (from dermgate's signed identity assertion). \
Reached through dermgate over TLS 1.3. The gateway says you are at <b>{who}</b>.</p>\
<form method=\"post\" action=\"/.dermgate/logout\"><button>Sign out</button></form>\
<table><tr><th>Patient</th><th>Visit</th><th>Reason</th></tr>\
<tr><td>Demo Patient A</td><td>2026-11-23</td><td>Pigmented lesion, left shoulder</td></tr>\
<tr><td>Demo Patient B</td><td>2026-11-24</td><td>Psoriasis follow-up</td></tr></table>\
<p><a href=\"/imaging/\">Open the imaging viewer</a></p>"
            )),
            (Kind::Imaging, &Method::GET, "/imaging" | "/imaging/") => html(
                "<!doctype html><meta charset=utf-8><title>Demo imaging</title>\
<style>body{font:16px system-ui;max-width:60em;margin:2em auto}img{max-width:100%}</style>\
<h1>Demo imaging viewer</h1><p>Dermoscopy image (generated, 5.5 MiB BMP, served with Range support):</p>\
<img src=\"/imaging/lesion.bmp\" alt=\"generated dermoscopy image\">\
<h2>Upload</h2><input type=file id=f> <button onclick=\"up()\">Upload</button> <span id=r></span>\
<script>async function up(){const f=document.getElementById('f').files[0];if(!f)return;\
const r=await fetch('/imaging/upload/'+encodeURIComponent(f.name),{method:'PUT',body:f});\
document.getElementById('r').textContent=r.status+' '+await r.text();}</script>"
                    .to_string(),
            ),
            (Kind::Video, &Method::GET, "/visit" | "/visit/") => html(VISIT_PAGE.to_string()),
            (Kind::Video, &Method::GET, "/visit/signal") => signaling_echo(req),
            (Kind::Imaging, &Method::GET | &Method::HEAD, "/imaging/lesion.bmp") => {
                serve_range(&self.image, req.headers().get(RANGE).and_then(|v| v.to_str().ok()))
            }
            (Kind::Imaging, &Method::PUT, p) if p.starts_with("/imaging/upload/") => {
                let name: String = p["/imaging/upload/".len()..]
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    .collect();
                if name.is_empty() || name.starts_with('.') {
                    return status(StatusCode::BAD_REQUEST, "bad name\n");
                }
                match self.store(&name, req.into_body()).await {
                    Ok((n, sha)) => html(format!("stored {name}: {n} bytes, sha256 {sha}\n")),
                    Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "upload failed\n"),
                }
            }
            _ => status(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Streams an upload to disk (never held in memory), hashing as it goes.
    async fn store(&self, name: &str, mut body: Incoming) -> std::io::Result<(u64, String)> {
        let path = self.uploads.join(name);
        let mut f = tokio::fs::File::create(&path).await?;
        let mut n = 0u64;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(std::io::Error::other)?;
            if let Some(data) = frame.data_ref() {
                ctx.update(data);
                n += data.len() as u64;
                f.write_all(data).await?;
            }
        }
        f.flush().await?;
        let sha: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((n, sha))
    }
}

/// The demo video-visit page: joins the signaling socket and shows the echo.
const VISIT_PAGE: &str = "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>\
<title>Demo video visit</title><style>body{font:16px system-ui;max-width:40em;margin:2em auto}\
#log{background:#f3f5f7;padding:1em;min-height:6em;white-space:pre-wrap}</style>\
<h1>Demo video visit</h1><p>Signaling runs over a WebSocket through dermgate (TLS 1.3).</p>\
<input id=m value='offer: demo-sdp'> <button onclick='send()'>Send</button><div id=log></div>\
<script>const log=t=>document.getElementById('log').textContent+=t+'\\n';\
const ws=new WebSocket('wss://'+location.host+'/visit/signal');\
ws.onopen=()=>log('connected');ws.onmessage=e=>log('echo: '+e.data);ws.onclose=()=>log('closed');\
function send(){ws.send(document.getElementById('m').value)}</script>";

/// The demo signaling server: a WebSocket that echoes text and binary messages.
fn signaling_echo(mut req: Request<Incoming>) -> Response<DemoBody> {
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return status(StatusCode::BAD_REQUEST, "expected a WebSocket handshake\n");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        let Ok(io) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = status(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A single `bytes=` range (the forms browsers and curl send); anything else gets the whole body.
fn serve_range(data: &Bytes, range: Option<&str>) -> Response<DemoBody> {
    let len = data.len() as u64;
    let parsed = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|spec| {
            let (a, b) = spec.split_once('-')?;
            match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
                (Some(a), Some(b)) => Some((a, b.min(len.saturating_sub(1)))),
                (Some(a), None) if b.is_empty() => Some((a, len.saturating_sub(1))),
                (None, Some(n)) if a.is_empty() => {
                    Some((len.saturating_sub(n), len.saturating_sub(1)))
                }
                _ => None,
            }
        });
    let mut r = match parsed {
        Some((a, b)) if a <= b && a < len => {
            let slice = data.slice(a as usize..=b as usize);
            let mut r = Response::new(Full::new(slice));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = format!("bytes {a}-{b}/{len}").parse() {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            r
        }
        Some(_) => {
            let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE, "");
            if let Ok(v) = format!("bytes */{len}").parse() {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            return r;
        }
        None => Response::new(Full::new(data.clone())),
    };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, http::HeaderValue::from_static("image/bmp"));
    h.insert("accept-ranges", http::HeaderValue::from_static("bytes"));
    r
}

/// A generated dermoscopy-like image: skin background, an irregular pigmented lesion.
fn lesion_bmp(w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(b"BM");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0u8; 24]);
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (
                (x as f32 - cx) / (w as f32 * 0.28),
                (y as f32 - cy) / (h as f32 * 0.3),
            );
            let angle = dy.atan2(dx);
            let border = 1.0 + 0.12 * (angle * 5.0).sin() + 0.06 * (angle * 13.0).cos();
            let r = (dx * dx + dy * dy).sqrt() / border;
            let grain = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)) % 17) as f32;
            let (b, g, rd) = if r < 1.0 {
                let t = r * r;
                (
                    30.0 + 40.0 * t + grain,
                    45.0 + 50.0 * t + grain,
                    70.0 + 80.0 * t + grain,
                )
            } else {
                (150.0 + grain, 170.0 + grain, 225.0 + grain * 0.5)
            };
            out.extend_from_slice(&[b as u8, g as u8, rd as u8]);
        }
        out.resize(out.len() + (row - w * 3) as usize, 0);
    }
    out
}
