//! Audit forwarding and alerts, with real receivers: Debian's rsyslog over
//! TLS (RFC 5425) for the syslog copy, the proxy's own stdout for the JSON
//! copy, an HTTPS server started here for the signed webhook, the admin
//! listener's Prometheus counters, and a full (tmpfs) disk under the trail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::common::*;
use crate::operations::{logged_addr, plain_get};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's rsyslogd receiving RFC 5425 syslog over TLS on a loopback port,
/// writing `PRI|APP-NAME|MSGID|MSG` lines to `out`.
struct Rsyslog {
    child: Child,
    out: PathBuf,
}

impl Rsyslog {
    fn start(certs: &Certs, dir: &Path, port: u16) -> Self {
        let bin = Path::new("/usr/sbin/rsyslogd");
        assert!(
            bin.exists(),
            "rsyslogd is missing: the test command (tests/run.sh) installs rsyslog and rsyslog-openssl"
        );
        let work = dir.join(format!("rsyslog-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let out = dir.join("received.log");
        let conf = work.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
  maxMessageSize="64k")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="raw" type="string" string="%PRI%|%APP-NAME%|%MSGID%|%msg%\n")
action(type="omfile" file="{out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
"#,
                work = work.display(),
                ca = certs.ca().display(),
                cert = certs.server_cert().display(),
                key = certs.server_key().display(),
                out = out.display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, out }
    }

    /// (PRI, MSGID, MSG) of every message received so far.
    fn received(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut p = l.splitn(4, '|');
                let pri = p.next()?.to_string();
                let app = p.next()?;
                let msgid = p.next()?.to_string();
                let msg = p.next()?.trim_start().to_string();
                (app == "dermgate").then_some((pri, msgid, msg))
            })
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

fn audit_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn get(addr: SocketAddr, ca: &Path, host: &str, paths: &[String]) -> Vec<u16> {
    let mut h2 = h2_client(addr, ca).await;
    let mut out = Vec::new();
    for p in paths {
        let resp = h2
            .send_request(
                Request::get(format!("https://{host}{p}"))
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        out.push(resp.status().as_u16());
        let _ = body_string(resp).await;
    }
    out
}

/// Waits until every line of the audit trail is among the messages rsyslog received.
fn wait_forwarded(trail: &Path, rs: &Rsyslog, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = audit_lines(trail);
        let got: std::collections::HashSet<String> =
            rs.received().into_iter().map(|(_, _, m)| m).collect();
        let missing: Vec<&String> = lines.iter().filter(|l| !got.contains(*l)).collect();
        if lines.len() >= at_least && missing.is_empty() {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} audit records never reached syslog, e.g. {:?}",
            missing.len(),
            lines.len(),
            missing.first()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_go_to_stdout_and_to_rsyslog_over_tls_and_survive_its_restart() {
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("syslog");
    let port = free_port();
    let mut rs = Rsyslog::start(&certs, dir.path(), port);
    let trail = dir.path().join("audit/audit.jsonl");
    let cfg = format!(
        r#"[listen]
addr = "127.0.0.1:0"

[tls]
cert = "{{cert}}"
key = "{{key}}"

[audit]
file = "{trail}"
stdout = true
syslog = "tls://localhost:{port}"
syslog_ca = "{{ca}}"

[keys]
dir = "{keys}"

[[route]]
name = "app"
host = "localhost"
upstreams = ["https://{up}"]
upstream_ca = "{{ca}}"
public = true
"#,
        trail = trail.display(),
        keys = dir.path().join("keys").display(),
        up = up.addr,
    );
    let proxy = Proxy::start(&certs, &cfg);

    let paths: Vec<String> = (0..10)
        .map(|i| format!("/a/{i}?token=secret-{i}"))
        .collect();
    assert!(
        get(proxy.addr, &certs.ca(), "localhost", &paths)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    let lines = wait_forwarded(&trail, &rs, 20);
    for (pri, msgid, msg) in rs.received() {
        assert_eq!(pri, "110", "facility 13 (log audit), severity info: {msg}");
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(
            v["kind"].as_str().unwrap(),
            msgid,
            "MSGID is the record kind"
        );
        assert!(!msg.contains("secret-"), "no query string in syslog");
    }

    // The syslog server goes away; records made meanwhile arrive once it is back.
    rs.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths: Vec<String> = (10..20).map(|i| format!("/b/{i}")).collect();
    assert!(
        get(proxy.addr, &certs.ca(), "localhost", &paths)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rs = Rsyslog::start(&certs, dir.path(), port);
    let after = wait_forwarded(&trail, &rs, lines.len() + 20);
    assert!(after.iter().any(|l| l.contains("/b/19")));

    // The same records, line for line, on the proxy's standard output.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = proxy.stdout.lock().unwrap().clone();
        let printed: Vec<&str> = out.lines().collect();
        if after.iter().all(|l| printed.contains(&l.as_str())) {
            assert!(
                printed
                    .iter()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stdout lacks audit records:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the webhook receiver got: (headers, body).
type Hooks = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// A real HTTPS (TLS 1.3) receiver. The first POST of every alert id is
/// answered 503, so delivery must retry.
async fn webhook_receiver(certs: &Certs) -> (SocketAddr, Hooks, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(certs.server_cert())
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.server_key()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hooks: Hooks = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (h2, a2) = (hooks.clone(), attempts.clone());
    tokio::spawn(async move {
        let refused: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, hooks, attempts, refused) =
                (acceptor.clone(), h2.clone(), a2.clone(), refused.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (hooks, attempts, refused) =
                        (hooks.clone(), attempts.clone(), refused.clone());
                    async move {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        let headers: Vec<(String, String)> = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let id = req
                            .headers()
                            .get("x-dermgate-alert-id")
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        let status = if refused.lock().unwrap().insert(id) {
                            503
                        } else {
                            hooks.lock().unwrap().push((headers, body));
                            200
                        };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::<Bytes>::default())
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, hooks, attempts)
}

fn hook_kinds(hooks: &Hooks) -> Vec<String> {
    hooks
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn wait_hooks(hooks: &Hooks, kinds: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = hook_kinds(hooks);
        if kinds.iter().all(|k| got.iter().any(|g| g == k)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "webhook got {got:?}, expected all of {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&k, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let (status, _, body) = plain_get(admin, "/metrics", &[("host", "localhost")]).await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn alert_events(trail: &Path) -> Vec<serde_json::Value> {
    audit_lines(trail)
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["alert"] == serde_json::Value::Bool(true))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn encryption_failures_raise_signed_webhook_alerts_counters_and_audit_records() {
    let certs = Certs::new();
    let other = Certs::new(); // a CA the upstream's certificate is not from
    let up = Upstream::start(&certs).await;
    let (hook_addr, hooks, attempts) = webhook_receiver(&certs).await;
    let dir = TempDir::new("alerts");
    let secret = "webhook-shared-secret-0123456789";
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let trail = dir.path().join("audit/audit.jsonl");
    let cfg = format!(
        r#"[listen]
addr = "127.0.0.1:0"
admin = "127.0.0.1:0"

[tls]
cert = "{{cert}}"
key = "{{key}}"

[audit]
file = "{trail}"

[keys]
dir = "{keys}"

[alerts]
webhook = "https://localhost:{hook}/hook"
webhook_ca = "{{ca}}"
webhook_secret_file = "{secret}"
cert_warning = "400d"

[[route]]
name = "app"
host = "localhost"
upstreams = ["https://{up}"]
upstream_ca = "{{ca}}"
public = true

[[route]]
name = "badtls"
host = "ehr.test"
upstreams = ["https://{up}"]
upstream_ca = "{other_ca}"
public = true
"#,
        trail = trail.display(),
        keys = dir.path().join("keys").display(),
        hook = hook_addr.port(),
        secret = secret_file.display(),
        up = up.addr,
        other_ca = other.ca().display(),
    );
    let proxy = Proxy::start(&certs, &cfg);
    let admin = logged_addr(&proxy, "dermgate admin on http://").await;

    // Plaintext HTTP on the TLS port.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    // A client that offers only TLS 1.2.
    assert!(
        tls_connect(proxy.addr, tls12_client_config(&certs.ca()), "localhost")
            .await
            .is_err()
    );
    // An upstream whose certificate does not verify.
    let st = get(proxy.addr, &certs.ca(), "ehr.test", &["/x".to_string()]).await;
    assert_eq!(st, vec![502]);
    assert!(
        up.seen().is_empty(),
        "nothing reached an unverified upstream"
    );

    // Every alert arrives at the webhook (after a refused first attempt), signed.
    let kinds = [
        "plaintext_refused",
        "old_tls_refused",
        "upstream_tls",
        "cert_expiry",
    ];
    wait_hooks(&hooks, &kinds).await;
    assert!(
        attempts.load(Ordering::SeqCst) >= 2 * kinds.len(),
        "each alert was retried after a 503"
    );
    for (headers, body) in hooks.lock().unwrap().iter() {
        let sig = headers
            .iter()
            .find(|(n, _)| n == "x-dermgate-signature")
            .map(|(_, v)| v.clone())
            .expect("signature header");
        assert_eq!(sig, format!("sha256={}", hmac_hex(secret.as_bytes(), body)));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["severity"], "high");
        assert!(!String::from_utf8_lossy(body).contains(secret));
    }
    // A forged body does not carry a valid signature.
    let (headers, body) = hooks.lock().unwrap()[0].clone();
    let mut forged = body.clone();
    forged.extend_from_slice(b" ");
    let sig = headers
        .iter()
        .find(|(n, _)| n == "x-dermgate-signature")
        .unwrap()
        .1
        .clone();
    assert_ne!(
        sig,
        format!("sha256={}", hmac_hex(secret.as_bytes(), &forged))
    );

    // Prometheus counters.
    for k in kinds {
        assert!(
            metric(admin, &format!("dermgate_alerts_total{{kind=\"{k}\"}}")).await >= 1,
            "counter for {k}"
        );
    }
    assert!(
        metric(
            admin,
            "dermgate_tls_handshake_failures_total{reason=\"plaintext\"}"
        )
        .await
            >= 1
    );

    // High-severity audit records.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = alert_events(&trail);
        let got: Vec<&str> = events.iter().filter_map(|v| v["event"].as_str()).collect();
        if kinds.iter().all(|k| got.contains(k)) {
            break;
        }
        assert!(Instant::now() < deadline, "alert records: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A scanner repeating itself does not flood the receiver.
    for _ in 0..5 {
        let _ = tls_connect(proxy.addr, tls12_client_config(&certs.ca()), "localhost").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = hook_kinds(&hooks)
        .iter()
        .filter(|k| *k == "old_tls_refused")
        .count();
    assert_eq!(n, 1, "repeats within the quiet period are held back");
}

/// Mounts a small tmpfs (the test command runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount -t tmpfs failed: the disk-full test needs root"
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `filler` until a write fails.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_under_the_audit_trail_refuses_phi_routes_raises_an_alert_and_recovers() {
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let (hook_addr, hooks, _) = webhook_receiver(&certs).await;
    let dir = TempDir::new("diskfull");
    // The audit test's configuration (public `app`, policy-protected `ehr`),
    // with its trail on a small tmpfs, an admin listener and the webhook.
    let disk = Tmpfs::mount(&dir.path().join("audit"), "512k");
    let trail = disk.0.join("audit.jsonl");
    let cfg = crate::audit::config(dir.path(), up.addr, "batch").replacen(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
        1,
    ) + &format!(
        "\n[alerts]\nwebhook = \"https://localhost:{}/hook\"\nwebhook_ca = \"{{ca}}\"\n",
        hook_addr.port()
    );
    let proxy = Proxy::start(&certs, &cfg);
    let admin = logged_addr(&proxy, "dermgate admin on http://").await;
    let paths = |tag: &str| -> Vec<String> { (0..3).map(|i| format!("/{tag}/{i}")).collect() };
    assert_eq!(
        get(proxy.addr, &certs.ca(), "ehr.test", &paths("before")).await,
        vec![200; 3]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = audit_lines(&trail).len();
    assert!(before >= 6);

    // The disk fills up.
    let filler = disk.0.join("filler");
    fill(&filler);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = false;
    let mut i = 0;
    while Instant::now() < deadline {
        let st = get(proxy.addr, &certs.ca(), "ehr.test", &[format!("/full/{i}")]).await;
        i += 1;
        if st == vec![503] {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a PHI route is refused while its audit record cannot be written"
    );
    let upstream_saw_full = up
        .seen()
        .iter()
        .filter(|s| s.target.starts_with("/full/"))
        .count();
    assert!(
        upstream_saw_full < i,
        "the refused request never reached the upstream"
    );
    // Public routes (no PHI) still work; the alert reaches the webhook and the counter.
    assert_eq!(
        get(proxy.addr, &certs.ca(), "localhost", &paths("public")).await,
        vec![200; 3]
    );
    wait_hooks(&hooks, &["audit_unwritable"]).await;
    assert!(metric(admin, "dermgate_alerts_total{kind=\"audit_unwritable\"}").await >= 1);
    assert!(
        metric(
            admin,
            "dermgate_refused_total{reason=\"audit_unavailable\"}"
        )
        .await
            >= 1
    );

    // Space returns: service resumes by itself, and nothing written was damaged.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = get(
            proxy.addr,
            &certs.ca(),
            "ehr.test",
            &["/after/0".to_string()],
        )
        .await;
        if st == vec![200] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PHI route did not recover after space returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = audit_lines(&trail);
    assert!(lines.len() > before);
    assert!(
        lines.iter().any(|l| l.contains("audit_unwritable")),
        "the alert is in the trail after recovery"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dermgate"))
        .args(["audit", "verify"])
        .arg(&trail)
        .arg("--pubkey")
        .arg(dir.path().join("keys/audit-ed25519.pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trail intact after the disk filled: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(proxy);
}
