//! Operations: limits (431, 413, slowloris, HTTP/2 rapid reset, requests per
//! minute), certificate reload (file change, SIGHUP, a bad certificate
//! refused) and `[[tls.sni]]`, PROXY protocol v2 and trusted proxies, the
//! admin listener and the port-80 redirector.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::*;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- helpers

/// Adds lines to the `[listen]` table of a [`public_config`].
fn with_listen(config: &str, lines: &str) -> String {
    let addr = "addr = \"127.0.0.1:0\"";
    assert!(config.contains(addr), "no listen addr in:\n{config}");
    config.replacen(addr, &format!("{addr}\n{lines}"), 1)
}

/// Appends a `[limits]` table.
fn with_limits(config: &str, lines: &str) -> String {
    format!("{config}\n[limits]\n{lines}\n")
}

/// The address on the proxy's `PREFIX ADDR` stderr line (waits for it).
pub async fn logged_addr(proxy: &Proxy, prefix: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = proxy
            .log()
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no `{prefix}` line; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One plain-HTTP/1.1 GET (`Connection: close`): (status, head, body).
pub async fn plain_get(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("no complete response within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status_of(head), head.to_string(), body.to_string())
}

/// A header's value in a raw response head.
fn header_in<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads until the end of a response head (or EOF), within 10 s.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS 1.3 client config trusting every CA in `cas`.
fn trusting(cas: &[&Path], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// The leaf (first) certificate of a PEM chain file, as DER.
fn leaf_in(pem: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// The leaf certificate a new handshake with `sni` is served.
async fn served_leaf(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, sni: &str) -> Vec<u8> {
    let s = tls_connect(addr, cfg, sni).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Runs the real `dermgate certs dev` into `dir` (a new CA every time).
fn dev_certs(dir: &Path, names: &[&str]) {
    let mut cmd = Command::new(BIN);
    cmd.args(["certs", "dev", "--out"]).arg(dir);
    for n in names {
        cmd.args(["--name", n]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "certs dev failed: {out:?}");
}

/// Replaces `dst` atomically with `contents` (write a temporary file, rename
/// it over), optionally giving it a modification time first.
fn replace_file(dst: &Path, contents: &[u8], mtime: Option<std::time::SystemTime>) {
    let tmp: PathBuf = dst.with_extension("swap-tmp");
    std::fs::write(&tmp, contents).unwrap();
    if let Some(t) = mtime {
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    std::fs::rename(&tmp, dst).unwrap();
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// HTTP/1.1 over an established TLS stream.
async fn h1_on<B>(tls: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// HTTP/2 over an established TLS stream.
async fn h2_on<B>(tls: TlsStream<TcpStream>) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn get(uri: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", host)
        .body(Full::default())
        .unwrap()
}

/// GET `path` on `localhost` over a new HTTP/1.1 connection: the status.
async fn h1_status(addr: SocketAddr, ca: &Path, path: &str) -> u16 {
    let mut h1 = h1_client::<Full<Bytes>>(addr, ca).await;
    let resp = h1.send_request(get(path, "localhost")).await.unwrap();
    resp.status().as_u16()
}

/// The value of one Prometheus sample line (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// A TLS HTTP/1.1 upstream that counts the request body bytes it receives,
/// as they arrive (a body cut off half-way is still counted).
struct CountingUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingUpstream {
    async fn start(certs: &Certs) -> Self {
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<_> = CertificateDer::pem_file_iter(certs.server_cert())
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
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let (r2, b2) = (requests.clone(), body_bytes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (requests, body_bytes) = (r2.clone(), b2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (requests, body_bytes) = (requests.clone(), body_bytes.clone());
                        async move {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let mut body = req.into_body();
                            let mut n = 0u64;
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Some(d) = frame.data_ref() {
                                    n += d.len() as u64;
                                    body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "received {n}"
                            )))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            body_bytes,
            task,
        }
    }
}

/// A body of `total` bytes in 64 KiB frames, of unknown length (chunked on HTTP/1.1).
fn unsized_body(total: usize) -> BoxBody<Bytes, Infallible> {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames = total / chunk.len();
    StreamBody::new(futures_util::stream::iter(
        (0..frames).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    ))
    .boxed()
}

// ------------------------------------------------------------------ limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_bodies_are_refused() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = CountingUpstream::start(&certs).await;
    let cfg = with_limits(
        &public_config(up.addr, "max_body = \"1MiB\""),
        "header_bytes = \"8KiB\"",
    );
    let proxy = Proxy::start(&certs, &cfg);
    let big = "a".repeat(20 * 1024);

    // 431: one 20 KiB header, over HTTP/1.1 ...
    let resp = raw_h1(
        proxy.addr,
        &ca,
        format!("GET /h1 HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 431, "h1 response:\n{resp}");
    // ... and over HTTP/2.
    let mut h2 = h2_client(proxy.addr, &ca).await;
    let resp = h2
        .send_request(
            Request::get("https://localhost/h2")
                .header("x-big", big.as_str())
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    // A header just under the limit still passes.
    let resp = h2_client(proxy.addr, &ca)
        .await
        .send_request(
            Request::get("https://localhost/small")
                .header("x-small", "b".repeat(4 * 1024))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);

    // 413 by Content-Length, over HTTP/1.1: refused before the upstream is asked.
    let mut s = tls_connect(proxy.addr, client_config(&ca, &[b"http/1.1"]), "localhost")
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            2 * MIB
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let _ = s.write_all(&vec![b'x'; 64 * 1024]).await;
    let head = read_head(&mut s).await;
    assert_eq!(status_of(&head), 413, "h1 response:\n{head}");
    drop(s);
    // ... and over HTTP/2.
    let resp = h2_client(proxy.addr, &ca)
        .await
        .send_request(
            Request::post("https://localhost/upload")
                .body(Full::new(Bytes::from(vec![b'x'; 2 * MIB])))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "a body over max_body by Content-Length reached the upstream"
    );

    // A 4 MiB body of unknown length (chunked on h1, no content-length on h2):
    // refused or cut off, and the upstream never gets more than max_body.
    for proto in ["h1", "h2"] {
        let before = up.body_bytes.load(Ordering::SeqCst);
        let result = if proto == "h1" {
            let mut c = h1_client::<BoxBody<Bytes, Infallible>>(proxy.addr, &ca).await;
            let req = Request::post("/upload")
                .header("host", "localhost")
                .body(unsized_body(4 * MIB))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(30), c.send_request(req)).await
        } else {
            let tls = tls_connect(proxy.addr, client_config(&ca, &[b"h2"]), "localhost")
                .await
                .unwrap();
            let mut c = h2_on::<BoxBody<Bytes, Infallible>>(tls).await;
            let req = Request::post("https://localhost/upload")
                .body(unsized_body(4 * MIB))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(30), c.send_request(req)).await
        };
        let result = result.unwrap_or_else(|_| panic!("{proto}: no answer within 30 s"));
        if let Ok(resp) = result {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            assert_eq!(status, 413, "{proto}: {body}");
            assert!(!body.contains("received 4194304"), "{proto}: {body}");
        }
        // Let the upstream see whatever the proxy sent it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = up.body_bytes.load(Ordering::SeqCst) - before;
        assert!(
            got <= MIB as u64,
            "{proto}: the upstream received {got} bytes of a body over max_body (1 MiB)"
        );
    }
    // The proxy still serves.
    assert_eq!(h1_status(proxy.addr, &ca, "/after").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_header_timeout_while_others_are_served() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let cfg = with_limits(&public_config(up.addr, ""), "header_timeout = \"2s\"");
    let proxy = Proxy::start(&certs, &cfg);

    let mut slow = tls_connect(proxy.addr, client_config(&ca, &[b"http/1.1"]), "localhost")
        .await
        .unwrap();
    let t0 = Instant::now();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    slow.flush().await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(slow);
    // One header byte a second, for up to 30 s.
    let dribble = tokio::spawn(async move {
        for b in b"X-Slow: ".iter().chain(std::iter::repeat_n(&b'a', 22)) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        (t0.elapsed(), String::from_utf8_lossy(&out).into_owned())
    });

    // Meanwhile, another client is served.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = tokio::time::timeout(Duration::from_secs(5), h1_status(proxy.addr, &ca, "/other"))
        .await
        .expect("another client was not served while a slow one was open");
    assert_eq!(status, 200);

    let (elapsed, got) = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("the slowloris connection was still open after 15 s")
        .unwrap();
    dribble.abort();
    assert!(
        elapsed < Duration::from_secs(7),
        "closed only after {elapsed:?} (header_timeout = 2s)"
    );
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed after {elapsed:?}, before the header timeout could have run out"
    );
    assert!(
        !got.contains(" 200 "),
        "the slow request was answered:\n{got}"
    );
    assert!(
        up.seen().iter().all(|s| s.target != "/slow"),
        "the slow request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_closes_the_connection() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));

    let tls = tls_connect(proxy.addr, client_config(&ca, &[b"h2"]), "localhost")
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let mut conn_task = tokio::spawn(conn);
    // The connection works.
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send
        .send_request(
            Request::get("https://localhost/before").body(()).unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);

    // Ordinary traffic is not mistaken for an attack: more requests on one
    // connection than its concurrent-stream limit, one after another.
    let mut normal = h2_client(proxy.addr, &ca).await;
    for i in 0..150 {
        let resp = normal
            .send_request(
                Request::get(format!("https://localhost/normal{i}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // Open and reset streams as fast as possible.
    let mut opened = 0;
    for _ in 0..1000 {
        let ready = tokio::time::timeout(Duration::from_secs(5), send.clone().ready()).await;
        let Ok(Ok(ready)) = ready else { break };
        send = ready;
        match send.send_request(
            Request::get("https://localhost/reset").body(()).unwrap(),
            false,
        ) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut conn_task).await;
    let Ok(joined) = ended else {
        conn_task.abort();
        panic!("the connection is still open after {opened} streams were opened and reset");
    };
    if let Err(e) = joined.unwrap() {
        // A GOAWAY (ENHANCE_YOUR_CALM) or the TCP close behind it.
        assert!(
            e.is_io() || (e.is_go_away() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)),
            "the connection ended with an unexpected error: {e:?}"
        );
    }
    let again = send.send_request(
        Request::get("https://localhost/after").body(()).unwrap(),
        true,
    );
    assert!(
        again.is_err(),
        "the reset connection still accepts requests"
    );

    // A fresh connection works.
    let resp = h2_client(proxy.addr, &ca)
        .await
        .send_request(
            Request::get("https://localhost/fresh")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_per_source() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let cfg = with_limits(
        &public_config(up.addr, ""),
        "requests_per_minute_per_user = 5",
    );
    let proxy = Proxy::start(&certs, &cfg);
    let mut h1 = h1_client::<Full<Bytes>>(proxy.addr, &ca).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        h1.ready().await.unwrap();
        let resp = h1
            .send_request(get(&format!("/n{i}"), "localhost"))
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        let _ = body_string(resp).await;
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // Per source, not per connection: a new HTTP/2 connection is refused too.
    let resp = h2_client(proxy.addr, &ca)
        .await
        .send_request(
            Request::get("https://localhost/n6")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(up.seen().len(), 5, "upstream saw: {:?}", up.seen());
}

// ------------------------------------------------------------ certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_change_and_sighup_and_a_bad_one_is_refused() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    // The certificate the proxy serves lives in its own directory, swapped by the test.
    let live = TempDir::new("live-certs");
    let (cert, key) = (
        live.path().join("server.pem"),
        live.path().join("server.key"),
    );
    std::fs::copy(certs.server_cert(), &cert).unwrap();
    std::fs::copy(certs.server_key(), &key).unwrap();
    let other = TempDir::new("other-certs");
    dev_certs(other.path(), &[]);
    let cfg = public_config(up.addr, "")
        .replace("{cert}", &cert.display().to_string())
        .replace("{key}", &key.display().to_string());
    let proxy = Proxy::start(&certs, &cfg);
    let other_ca = other.path().join("ca.pem");
    let client = trusting(&[&certs.ca(), &other_ca], &[b"h2", b"http/1.1"]);
    let leaf1 = leaf_in(&certs.server_cert());
    let leaf2 = leaf_in(&other.path().join("server.pem"));
    assert_ne!(leaf1, leaf2);
    assert_eq!(
        served_leaf(proxy.addr, client.clone(), "localhost").await,
        leaf1
    );

    // An HTTP/2 connection opened before the swap.
    let tls = tls_connect(proxy.addr, client.clone(), "localhost")
        .await
        .unwrap();
    let mut before = h2_on::<Full<Bytes>>(tls).await;
    let resp = before
        .send_request(get("https://localhost/before", "localhost"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Swap in a new pair: new handshakes see it within 10 s.
    let log_count = |what: &str| proxy.log().matches(what).count();
    replace_file(
        &cert,
        &std::fs::read(other.path().join("server.pem")).unwrap(),
        None,
    );
    replace_file(
        &key,
        &std::fs::read(other.path().join("server.key")).unwrap(),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_leaf(proxy.addr, client.clone(), "localhost").await != leaf2 {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served after 10 s; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection from before keeps working.
    let resp = before
        .send_request(get("https://localhost/during", "localhost"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Garbage: refused with a log line, the last good certificate keeps serving.
    let refused_before = log_count("certificate reload refused");
    replace_file(&cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n", None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_count("certificate reload refused") <= refused_before {
        assert!(
            Instant::now() < deadline,
            "no refusal logged for a garbage certificate; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        served_leaf(proxy.addr, client.clone(), "localhost").await,
        leaf2
    );
    let tls = tls_connect(proxy.addr, client.clone(), "localhost")
        .await
        .unwrap();
    let resp = h2_on::<Full<Bytes>>(tls)
        .await
        .send_request(get("https://localhost/still", "localhost"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // SIGHUP: put the first pair back without changing the files' modification
    // times (so only the signal can trigger the reload), then signal.
    let (cert_mtime, key_mtime) = (mtime(&cert), mtime(&key));
    replace_file(
        &cert,
        &std::fs::read(certs.server_cert()).unwrap(),
        Some(cert_mtime),
    );
    replace_file(
        &key,
        &std::fs::read(certs.server_key()).unwrap(),
        Some(key_mtime),
    );
    assert_eq!(mtime(&cert), cert_mtime);
    let sighups_before = log_count("SIGHUP");
    let st = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_leaf(proxy.addr, client.clone(), "localhost").await != leaf1 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate within 10 s; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        log_count("SIGHUP") > sighups_before,
        "the reload was not logged as SIGHUP:\n{}",
        proxy.log()
    );
    // And the connection from the very start still works.
    let resp = before
        .send_request(get("https://localhost/end", "localhost"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_certificate_per_host() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let img = TempDir::new("img-certs");
    dev_certs(img.path(), &["img.test"]);
    let extra = format!(
        "\n[[route]]\nname = \"img\"\nhost = \"img.test\"\nupstreams = [\"https://{}\"]\nupstream_ca = \"{{ca}}\"\npublic = true\n\n[[tls.sni]]\nhosts = [\"img.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        up.addr,
        img.path().join("server.pem").display(),
        img.path().join("server.key").display()
    );
    let proxy = Proxy::start(&certs, &format!("{}{extra}", public_config(up.addr, "")));
    let client = trusting(&[&certs.ca(), &img.path().join("ca.pem")], &[b"http/1.1"]);
    let default_leaf = leaf_in(&certs.server_cert());
    let img_leaf = leaf_in(&img.path().join("server.pem"));
    assert_eq!(
        served_leaf(proxy.addr, client.clone(), "img.test").await,
        img_leaf,
        "SNI img.test did not get the [[tls.sni]] certificate"
    );
    assert_eq!(
        served_leaf(proxy.addr, client.clone(), "localhost").await,
        default_leaf,
        "SNI localhost did not get the default certificate"
    );
    // A client trusting only the img.test CA is served on img.test.
    let only_img = trusting(&[&img.path().join("ca.pem")], &[b"http/1.1"]);
    let tls = tls_connect(proxy.addr, only_img, "img.test").await.unwrap();
    let resp = h1_on::<Full<Bytes>>(tls)
        .await
        .send_request(get("/pic", "img.test"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_string(resp).await, "ok /pic");
}

// ------------------------------------------------ client address, PROXY v2

/// TLS over `tcp` (after whatever was written on it) and one GET: the status.
async fn get_over(
    tcp: TcpStream,
    ca: &Path,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<u16> {
    let tls = TlsConnector::from(client_config(ca, &[b"http/1.1"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let mut h1 = h1_on::<Full<Bytes>>(tls).await;
    let mut req = get(path, "localhost");
    for (n, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let resp = h1.send_request(req).await.map_err(std::io::Error::other)?;
    Ok(resp.status().as_u16())
}

fn xff_of(up: &Upstream, target: &str) -> Vec<String> {
    up.seen()
        .iter()
        .find(|s| s.target == target)
        .unwrap_or_else(|| panic!("{target} not forwarded; seen {:?}", up.seen()))
        .header("x-forwarded-for")
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_a_trusted_peer_sets_the_client_address() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let cfg = with_listen(
        &public_config(up.addr, ""),
        "trusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true",
    );
    let proxy = Proxy::start(&certs, &cfg);
    let src: SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&dermgate_proxy::proxy_protocol::encode_v2(src, proxy.addr))
        .await
        .unwrap();
    assert_eq!(get_over(tcp, &ca, "/pp", &[]).await.unwrap(), 200);
    assert_eq!(xff_of(&up, "/pp"), ["203.0.113.9"]);
    // A trusted balancer must send the header: a connection without it is refused.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        get_over(tcp, &ca, "/no-header", &[]),
    )
    .await
    .expect("a connection without a PROXY header was neither served nor closed");
    assert!(r.is_err(), "served without a PROXY header: {r:?}");
    assert!(up.seen().iter().all(|s| s.target != "/no-header"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let cfg = with_listen(
        &public_config(up.addr, ""),
        "trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true",
    );
    let proxy = Proxy::start(&certs, &cfg);
    let src: SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&dermgate_proxy::proxy_protocol::encode_v2(src, proxy.addr))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), get_over(tcp, &ca, "/claim", &[]))
        .await
        .expect("a PROXY header from an untrusted peer was neither served nor refused");
    assert!(
        r.is_err(),
        "a PROXY header from an untrusted peer was accepted: {r:?}"
    );
    // A plain client from the same address is served with its own address.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(get_over(tcp, &ca, "/plain", &[]).await.unwrap(), 200);
    assert_eq!(xff_of(&up, "/plain"), ["127.0.0.1"]);
    assert!(up.seen().iter().all(|s| s.target != "/claim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let xff = [("x-forwarded-for", "6.6.6.6, 198.51.100.4")];
    // 127.0.0.1 is a trusted proxy (without PROXY protocol): the last untrusted hop.
    let trusted = Proxy::start(
        &certs,
        &with_listen(
            &public_config(up.addr, ""),
            "trusted_proxies = [\"127.0.0.1/32\"]",
        ),
    );
    let tcp = TcpStream::connect(trusted.addr).await.unwrap();
    assert_eq!(get_over(tcp, &ca, "/trusted", &xff).await.unwrap(), 200);
    assert_eq!(xff_of(&up, "/trusted"), ["198.51.100.4"]);
    // Not trusted: the header is ignored, the peer is the client.
    let untrusted = Proxy::start(
        &certs,
        &with_listen(
            &public_config(up.addr, ""),
            "trusted_proxies = [\"10.0.0.0/8\"]",
        ),
    );
    let tcp = TcpStream::connect(untrusted.addr).await.unwrap();
    assert_eq!(get_over(tcp, &ca, "/untrusted", &xff).await.unwrap(), 200);
    assert_eq!(xff_of(&up, "/untrusted"), ["127.0.0.1"]);
    // No trusted proxies at all: the same.
    let plain = Proxy::start(&certs, &public_config(up.addr, ""));
    let tcp = TcpStream::connect(plain.addr).await.unwrap();
    assert_eq!(get_over(tcp, &ca, "/none", &xff).await.unwrap(), 200);
    assert_eq!(xff_of(&up, "/none"), ["127.0.0.1"]);
}

// --------------------------------------------------- admin and redirector

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_health_readiness_metrics_and_token() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let secrets = TempDir::new("admin-secrets");
    let token_file = secrets.path().join("admin-token");
    let token = "s3cret-admin-token-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cfg = with_listen(
        &public_config(up.addr, ""),
        &format!(
            "admin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"",
            token_file.display()
        ),
    );
    let proxy = Proxy::start(&certs, &cfg);
    let admin = logged_addr(&proxy, "dermgate admin on http://").await;
    let host = [("host", "127.0.0.1")];

    let (status, _, body) = plain_get(admin, "/healthz", &host).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = plain_get(admin, "/readyz", &host).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "/readyz answers neither 200 nor 503");
        assert!(Instant::now() < deadline, "/readyz not 200 after 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Metrics: a request through the proxy, and a refused TLS 1.2 handshake.
    assert_eq!(h1_status(proxy.addr, &ca, "/counted").await, 200);
    assert!(
        tls_connect(proxy.addr, tls12_client_config(&ca), "localhost")
            .await
            .is_err()
    );
    let tls_failures = "dermgate_tls_handshake_failures_total{reason=\"protocol_version\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (status, head, metrics) = plain_get(admin, "/metrics", &host).await;
        assert_eq!(status, 200);
        assert!(
            header_in(&head, "content-type").is_some_and(|c| c.starts_with("text/plain")),
            "{head}"
        );
        if sample(&metrics, tls_failures).unwrap_or(0.0) >= 1.0 || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        metrics.contains("dermgate_requests_total{route=\"app\""),
        "{metrics}"
    );
    assert!(
        sample(&metrics, tls_failures).unwrap_or(0.0) >= 1.0,
        "no protocol_version handshake failure counted after a TLS 1.2 attempt:\n{metrics}"
    );

    // The admin API needs the token.
    let (status, head, _) = plain_get(admin, "/admin/v1/status", &host).await;
    assert_eq!(status, 401, "{head}");
    let wrong = [
        ("host", "127.0.0.1"),
        ("authorization", "Bearer wrong-token"),
    ];
    let (status, _, _) = plain_get(admin, "/admin/v1/status", &wrong).await;
    assert_eq!(status, 401);
    let almost = format!("Bearer {}", &token[..token.len() - 1]);
    let prefix = [("host", "127.0.0.1"), ("authorization", almost.as_str())];
    let (status, _, _) = plain_get(admin, "/admin/v1/status", &prefix).await;
    assert_eq!(status, 401, "a prefix of the token was accepted");
    let right = format!("Bearer {token}");
    let ok = [("host", "127.0.0.1"), ("authorization", right.as_str())];
    let (status, _, body) = plain_get(admin, "/admin/v1/status", &ok).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"app\""), "{body}");
    // The admin listener is not the proxy: it forwards nothing.
    let (status, _, _) = plain_get(admin, "/counted", &[("host", "localhost")]).await;
    assert_eq!(status, 404);
    assert_eq!(up.seen().len(), 1, "{:?}", up.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirector_answers_308_for_known_hosts_only_and_never_forwards() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let cfg = with_listen(
        &public_config(up.addr, ""),
        "redirect_http = \"127.0.0.1:0\"",
    );
    let proxy = Proxy::start(&certs, &cfg);
    let redirect = logged_addr(&proxy, "dermgate redirecting http://").await;

    let (status, head, _) = plain_get(redirect, "/chart?x=1", &[("host", "localhost")]).await;
    assert_eq!(status, 308, "{head}");
    assert_eq!(
        header_in(&head, "location"),
        Some(format!("https://localhost:{}/chart?x=1", proxy.addr.port()).as_str()),
        "{head}"
    );
    // Unknown hosts: no open redirect.
    for host in ["evil.example", "localhost.evil.example"] {
        let (status, head, _) = plain_get(redirect, "/chart?x=1", &[("host", host)]).await;
        assert_eq!(status, 404, "{host}: {head}");
        assert_eq!(header_in(&head, "location"), None, "{host}: {head}");
    }
    let (status, head, _) = plain_get(redirect, "/", &[]).await;
    assert!(matches!(status, 400 | 404), "no Host: {head}");
    assert_eq!(header_in(&head, "location"), None, "no Host: {head}");
    // Plain HTTP is never proxied.
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

// ------------------------------------------------------ one proxy per port

/// The TCP workers share their port through SO_REUSEPORT; a second dermgate
/// (an old one still running, say) must not silently take a share of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_proxy_on_the_same_port_is_refused() {
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let port = crate::common::idp::free_port();
    let cfg = public_config(up.addr, "").replace(
        "addr = \"127.0.0.1:0\"",
        &format!("addr = \"127.0.0.1:{port}\""),
    );
    let first = Proxy::start(&certs, &cfg);
    assert_eq!(first.addr.port(), port);
    let path = first.dir.path().join("dermgate.toml");
    let mut second = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second proxy started serving on a port already in use");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    // The first one still serves every request.
    let mut h2 = h2_client(first.addr, &certs.ca()).await;
    for i in 0..20 {
        let resp = h2
            .send_request(
                Request::get(format!("https://localhost/still/{i}"))
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
