//! Shared harness: the real `dermgate` binary on ephemeral ports, a real TLS
//! upstream that records what it receives, and real TLS/HTTP clients.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_dermgate");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("dermgate-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Development certificates made by the real `dermgate certs dev`.
pub struct Certs {
    pub dir: TempDir,
}

impl Certs {
    pub fn new() -> Self {
        let dir = TempDir::new("certs");
        let out = Command::new(BIN)
            .args(["certs", "dev", "--out"])
            .arg(dir.path())
            .args([
                "--name",
                "ehr.test",
                "--name",
                "img.test",
                "--name",
                "gate.test",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "certs dev failed: {out:?}");
        Self { dir }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        r.add(c.unwrap()).unwrap();
    }
    r
}

/// A TLS 1.3 client config trusting the dev CA, with the given ALPN list.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// A client limited to TLS 1.2.
pub fn tls12_client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// The real proxy, started from a config text; killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// What the proxy printed on standard output (`[audit] stdout = true`).
    pub stdout: Arc<Mutex<String>>,
    pub dir: TempDir,
}

impl Proxy {
    /// Writes `config` (with `{cert}`, `{key}`, `{ca}` placeholders filled) and runs `dermgate serve`.
    pub fn start(certs: &Certs, config: &str) -> Self {
        let dir = TempDir::new("proxy");
        let text = config
            .replace("{cert}", &certs.server_cert().display().to_string())
            .replace("{key}", &certs.server_key().display().to_string())
            .replace("{ca}", &certs.ca().display().to_string());
        let path = dir.path().join("dermgate.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let out = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stdout2 = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut l = stdout2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("dermgate listening on https://")
                    && rest.ends_with("(tcp)")
                    && let Some(tx) = tx.take()
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("proxy did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Self {
            child,
            addr,
            log,
            stdout,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the upstream received for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target exactly as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real TLS 1.3 HTTP/1.1 upstream (dev CA) that records every request.
///
/// - `/big/download?bytes=N` streams N pattern bytes in 64 KiB chunks
/// - `/big/upload` reads the whole body, checking the pattern, and answers the count
/// - `/file` serves 1 MiB of pattern bytes with single-range support
/// - anything else answers 200 "ok <target>"
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

pub const FILE_LEN: usize = 1 << 20;

type UpBody = http_body_util::Either<Full<Bytes>, pattern_body::Chunks>;

pub mod idp;
pub mod redis;

pub mod pattern_body {
    //! A tiny pattern stream: N bytes in 64 KiB frames, generated on demand.
    use bytes::Bytes;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Chunks {
        pub sent: u64,
        pub total: u64,
        pub chunk: Bytes,
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent >= self.total {
                return Poll::Ready(None);
            }
            let n = (self.total - self.sent).min(self.chunk.len() as u64) as usize;
            self.sent += n as u64;
            Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.total - self.sent)
        }
    }
}

impl Upstream {
    pub async fn start(certs: &Certs) -> Self {
        Self::start_on(certs, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Stops accepting and closes every open connection (a crashed backend).
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }

    /// Starts on a given address (to bring a stopped upstream back).
    pub async fn start_on(certs: &Certs, addr: SocketAddr) -> Self {
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(certs.server_cert())
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.server_key()).unwrap();
        let mut cfg =
            rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let port = addr.port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = seen2.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let mut r = upstream_handle(req, &seen).await;
                            r.headers_mut().insert("x-upstream-port", port.into());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            task,
            stop,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

async fn upstream_handle(mut req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<UpBody> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target: target.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let path = req.uri().path().to_string();
    let full = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
        *r.status_mut() = status;
        r
    };
    match path.as_str() {
        "/healthz" => full(StatusCode::OK, b"ok".to_vec()),
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return full(
                    StatusCode::BAD_REQUEST,
                    b"not a websocket handshake".to_vec(),
                );
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
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
            let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Vec::new());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("sec-websocket-accept", accept.parse().unwrap());
            r
        }
        "/big/download" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // The pattern repeats every 251 bytes; a chunk of 251*261 bytes keeps it aligned.
            let chunk = Bytes::from(pattern(0, 251 * 261));
            Response::new(http_body_util::Either::Right(pattern_body::Chunks {
                sent: 0,
                total: n,
                chunk,
            }))
        }
        "/big/upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            let mut ok = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return full(StatusCode::BAD_REQUEST, b"broken body".to_vec());
                };
                if let Some(d) = frame.data_ref() {
                    if ok
                        && d.iter()
                            .enumerate()
                            .any(|(i, &b)| b != ((n + i as u64) % 251) as u8)
                    {
                        ok = false;
                    }
                    n += d.len() as u64;
                }
            }
            // Record that an upload arrived whole, so tests can tell it was (not) committed.
            seen.lock().unwrap().push(Seen {
                method: "UPLOAD-COMPLETE".into(),
                target: n.to_string(),
                headers: Vec::new(),
            });
            full(
                StatusCode::OK,
                format!("received {n} intact={ok}").into_bytes(),
            )
        }
        "/file" => {
            let data = pattern(0, FILE_LEN);
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            match range {
                Some((a, b)) if a <= b && b < FILE_LEN => {
                    let mut r = full(StatusCode::PARTIAL_CONTENT, data[a..=b].to_vec());
                    r.headers_mut().insert(
                        "content-range",
                        format!("bytes {a}-{b}/{FILE_LEN}").parse().unwrap(),
                    );
                    r
                }
                _ => full(StatusCode::OK, data),
            }
        }
        _ => full(StatusCode::OK, format!("ok {target}").into_bytes()),
    }
}

/// Sends raw bytes over TLS (h1) and returns the response text (until close or 10 s).
pub async fn raw_h1(addr: SocketAddr, ca: &Path, request: &[u8]) -> String {
    let mut s = tls_connect(addr, client_config(ca, &[b"http/1.1"]), "localhost")
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An HTTP/2 connection to the proxy.
pub async fn h2_client(
    addr: SocketAddr,
    ca: &Path,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = tls_connect(addr, client_config(ca, &[b"h2"]), "localhost")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// An HTTP/1.1 connection to the proxy, with a body type that can stream.
pub async fn h1_client<B>(addr: SocketAddr, ca: &Path) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let s = tls_connect(addr, client_config(ca, &[b"http/1.1"]), "localhost")
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

pub async fn body_string(resp: Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

pub fn frame_data(b: Bytes) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(b))
}

/// Resident set size of a process in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A config with one public route to `upstream` on host `localhost` (and any extra routes).
pub fn public_config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[tls]
cert = "{{cert}}"
key = "{{key}}"

[log]
level = "info"
format = "json"

[[route]]
name = "app"
host = "localhost"
upstreams = ["https://{upstream}"]
upstream_ca = "{{ca}}"
public = true
timeouts = {{ connect = "2s", header = "5s" }}
{extra}
"#
    )
}
