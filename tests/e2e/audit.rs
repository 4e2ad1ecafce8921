//! The tamper-evident audit trail: decision and complete records from the
//! real proxy, `dermgate audit verify` on an intact trail and on edited,
//! deleted, reordered, truncated and rewritten ones, and kill -9 under load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

fn verify(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

pub fn config(dir: &Path, up: std::net::SocketAddr, sync: &str) -> String {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"loopback\"\neffect = \"allow\"\nroutes = [\"ehr\"]\nsources = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[tls]
cert = "{{cert}}"
key = "{{key}}"

[policy]
file = "{policy}"

[audit]
file = "{audit}"
sync = "{sync}"

[keys]
dir = "{keys}"

[[route]]
name = "app"
host = "localhost"
upstreams = ["https://{up}"]
upstream_ca = "{{ca}}"
public = true

[[route]]
name = "ehr"
host = "ehr.test"
upstreams = ["https://{up}"]
upstream_ca = "{{ca}}"
"#,
        policy = policy.display(),
        audit = dir.join("audit/audit.jsonl").display(),
        keys = dir.join("keys").display(),
    )
}

async fn requests(proxy: &Proxy, ca: &Path, n: usize) -> usize {
    let mut h2 = h2_client(proxy.addr, ca).await;
    let mut ok = 0;
    for i in 0..n {
        let host = if i % 2 == 0 { "localhost" } else { "ehr.test" };
        let resp = h2
            .send_request(
                Request::get(format!("https://{host}/chart/{i}?ssn=123-45-6789"))
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        if resp.status() == 200 {
            ok += 1;
        }
        let _ = body_string(resp).await;
    }
    ok
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the batch writer has flushed at least `n` lines.
fn wait_lines(p: &Path, n: usize) {
    for _ in 0..100 {
        if p.exists() && lines(p).len() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("audit file has fewer than {n} lines");
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_chained_and_verify_finds_every_kind_of_tampering() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("audit");
    let proxy = Proxy::start(&certs, &config(dir.path(), up.addr, "batch"));
    let ok = requests(&proxy, &certs.ca(), 1100).await;
    assert_eq!(ok, 1100);
    // A malformed request is refused and recorded too, without its raw target.
    let resp = raw_h1(
        proxy.addr,
        &certs.ca(),
        b"GET /a/%2e%2e/%2e%2e/etc/passwd?ssn=123-45-6789 HTTP/1.1\r\nHost: ehr.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    let file = dir.path().join("audit/audit.jsonl");
    // 1,100 decisions + 1,100 completes + the refusal, and at least two checkpoints.
    wait_lines(&file, 2203);
    drop(proxy);
    let all = lines(&file);
    let refusal = all
        .iter()
        .find(|l| l.contains("\"decision\":\"deny\"") && l.contains("\"status\":400"))
        .expect("the malformed request's deny record");
    assert!(
        !refusal.contains("passwd") && !refusal.contains("%2e"),
        "{refusal}"
    );
    let text = all.join("\n");
    assert!(
        !text.contains("123-45-6789") && !text.contains("ssn"),
        "query string in the audit trail"
    );
    let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(first["kind"], "decision");
    assert_eq!(first["proto"], "h2");
    assert_eq!(first["tls"], "TLSv1.3");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
    let ehr: serde_json::Value = all
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["route"] == "ehr" && v["kind"] == "decision")
        .unwrap();
    assert_eq!(ehr["rule"], "loopback");
    assert_eq!(ehr["decision"], "allow");
    assert_eq!(ehr["policy"].as_str().unwrap().len(), 64);
    assert!(
        all.iter()
            .any(|l| l.contains("\"kind\":\"complete\"") && l.contains("\"bytes_out\""))
    );
    assert!(
        all.iter()
            .filter(|l| l.contains("\"kind\":\"checkpoint\""))
            .count()
            >= 2
    );

    let cfg_path = proxy_config_path(dir.path(), up.addr, &certs);
    let (code, out) = verify(&["--config", &cfg_path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact") && out.contains("checkpoint(s) verified"),
        "{out}"
    );
    let pubkey = dir
        .path()
        .join("keys/audit-ed25519.pub")
        .display()
        .to_string();

    let scratch = dir.path().join("scratch.jsonl");
    let s = scratch.display().to_string();
    let check = |mutated: &[String], want_kind: &str, want_line: usize| {
        write_lines(&scratch, mutated);
        let (code, out) = verify(&[&s, "--pubkey", &pubkey]);
        assert_eq!(code, 1, "{want_kind}: {out}");
        assert!(
            out.contains(&format!("{s}:{want_line}: {want_kind}")),
            "expected {want_kind} at line {want_line}:\n{out}"
        );
    };
    // Edited record (line 10).
    let mut m = all.clone();
    let before = m[9].clone();
    m[9] = m[9].replacen("\"ts\":\"20", "\"ts\":\"19", 1);
    assert_ne!(m[9], before);
    check(&m, "edited_or_deleted", 10);
    // Deleted record (line 20 removed: the break is reported between 19 and 20).
    let mut m = all.clone();
    m.remove(19);
    check(&m, "edited_or_deleted", 19);
    // Reordered records (30 and 31 swapped).
    let mut m = all.clone();
    m.swap(29, 30);
    check(&m, "reordered", 30);
    // A rewritten chain: every hash recomputed after an edit; only the checkpoint signatures catch it.
    let mut prev = "0".repeat(64);
    let mut rewritten = Vec::new();
    for (i, l) in all.iter().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        if i == 4 {
            v["path"] = "/forged".into();
        }
        v["prev"] = prev.clone().into();
        let line = serde_json::to_string(&v).unwrap();
        prev = sha256_hex(line.as_bytes());
        rewritten.push(line);
    }
    write_lines(&scratch, &rewritten);
    let (code, out) = verify(&[&s, "--pubkey", &pubkey]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad_checkpoint_signature"), "{out}");
    // Without the key a consistent rewrite cannot be told apart: that is what checkpoints are for.
    let (code, _) = verify(&[&s]);
    assert_eq!(code, 0);

    // A torn last line (crash mid-write) is reported as such, not as tampering.
    write_lines(&scratch, &all);
    let mut bytes = std::fs::read(&scratch).unwrap();
    bytes.truncate(bytes.len() - 40);
    std::fs::write(&scratch, &bytes).unwrap();
    let (code, out) = verify(&[&s, "--pubkey", &pubkey]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("torn_last_line"), "{out}");

    // Split into two files: a missing file and a truncated file are found.
    let a = dir.path().join("t.000001.jsonl");
    let b = dir.path().join("t.000002.jsonl");
    let c = dir.path().join("t.000003.jsonl");
    write_lines(&a, &all[..500]);
    write_lines(&b, &all[500..1000]);
    write_lines(&c, &all[1000..]);
    let p = |x: &PathBuf| x.display().to_string();
    let (code, out) = verify(&[&p(&a), &p(&b), &p(&c), "--pubkey", &pubkey]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&[&p(&a), &p(&c), "--pubkey", &pubkey]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing_file"), "{out}");
    write_lines(&b, &all[500..990]);
    let mut torn = std::fs::read(&b).unwrap();
    torn.extend_from_slice(b"{\"ts\":\"2026");
    std::fs::write(&b, torn).unwrap();
    let (code, out) = verify(&[&p(&a), &p(&b), &p(&c), "--pubkey", &pubkey]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated_file"), "{out}");
}

fn sha256_hex(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Writes the config with real paths (what the CLI reads) and returns its path.
fn proxy_config_path(dir: &Path, up: std::net::SocketAddr, certs: &Certs) -> String {
    let p = dir.join("cli.toml");
    std::fs::write(
        &p,
        config(dir, up, "batch")
            .replace("{cert}", &certs.server_cert().display().to_string())
            .replace("{key}", &certs.server_key().display().to_string())
            .replace("{ca}", &certs.ca().display().to_string()),
    )
    .unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_that_was_answered() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("audit-kill");
    let mut proxy = Proxy::start(&certs, &config(dir.path(), up.addr, "always"));
    let addr = proxy.addr;
    let ca = certs.ca();
    // Four clients hammer the proxy; each counts the answers it got.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0usize;
            let Ok(s) = tls_connect(addr, client_config(&ca, &[b"h2"]), "localhost").await else {
                return 0;
            };
            let Ok((mut h2, conn)) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(s),
            )
            .await
            else {
                return 0;
            };
            tokio::spawn(conn);
            loop {
                let req = Request::get("https://ehr.test/load")
                    .body(Full::<Bytes>::default())
                    .unwrap();
                match h2.send_request(req).await {
                    Ok(r) if r.status() == 200 => answered += 1,
                    _ => return answered,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = proxy.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = proxy.child.wait();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert!(answered > 10, "load did not run: {answered}");
    let file = dir.path().join("audit/audit.jsonl");
    let decisions = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"decision\"") && l.contains("\"route\":\"ehr\""))
        .count();
    // sync = "always": a request is forwarded only after its decision record is on disk.
    assert!(
        decisions >= answered,
        "{decisions} decision records for {answered} answered requests"
    );
    let pubkey = dir
        .path()
        .join("keys/audit-ed25519.pub")
        .display()
        .to_string();
    let (code, out) = verify(&[&file.display().to_string(), "--pubkey", &pubkey]);
    assert_eq!(
        code, 0,
        "after kill -9 the trail must verify (a torn last line is only a note):\n{out}"
    );

    // Restart: the chain continues (a torn file is rotated as it is) and still verifies.
    let proxy2 = Proxy::start(&certs, &config(dir.path(), up.addr, "always"));
    assert_eq!(requests(&proxy2, &ca, 5).await, 5);
    drop(proxy2);
    let cfg_path = proxy_config_path(dir.path(), up.addr, &certs);
    let (code, out) = verify(&["--config", &cfg_path]);
    assert_eq!(code, 0, "{out}");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_route_hashes_bodies_and_refuses_a_damaged_upload() {
    use base64::Engine;
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("integrity");
    let cfg = config(dir.path(), up.addr, "batch")
        .replace("public = true\n", "public = true\nintegrity = true\n");
    let proxy = Proxy::start(&certs, &cfg);
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    const N: usize = 4 << 20;
    let data = Bytes::from(pattern(0, N));
    let good = sha256_hex(&data);
    let b64 = |hex: &str| {
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let put = |digest: String| {
        Request::put("https://localhost/big/upload")
            .header("content-length", N.to_string())
            .header("content-digest", digest)
            .body(Full::new(data.clone()))
            .unwrap()
    };
    // A correct digest: stored, and the hash is in the audit record.
    let resp = h2
        .send_request(put(format!("sha-256=:{}:", b64(&good))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;
    assert_eq!(
        up.seen()
            .iter()
            .filter(|s| s.method == "UPLOAD-COMPLETE")
            .count(),
        1
    );

    // A damaged upload: refused, and the upstream never received its end.
    let wrong = "0".repeat(64);
    let resp = h2
        .send_request(put(format!("sha-256=:{}:", b64(&wrong))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(body_string(resp).await.contains("digest"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.seen()
            .iter()
            .filter(|s| s.method == "UPLOAD-COMPLETE")
            .count(),
        1,
        "the damaged upload reached the upstream whole"
    );
    // A malformed digest header.
    let resp = h2
        .send_request(put("sha-256=nonsense".into()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // A download is hashed too.
    let resp = h2
        .send_request(
            Request::get("https://localhost/big/download?bytes=1048576")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let _ = body_string(resp).await;
    let file = dir.path().join("audit/audit.jsonl");
    let mut found = (false, false);
    for _ in 0..50 {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        found = (
            text.contains(&format!("\"sha256\":\"{good}\"")),
            text.contains(&format!(
                "\"sha256\":\"{}\"",
                sha256_hex(&pattern(0, 1 << 20))
            )),
        );
        if found == (true, true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        found,
        (true, true),
        "upload and download hashes in the audit trail"
    );
}
