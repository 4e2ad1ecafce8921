//! Reading the trail the real proxy wrote: `dermgate evidence` (JSON and the
//! one-page HTML report, rendered by headless Chromium), `dermgate audit
//! report` and `dermgate audit tail` (with `--follow`), each checked against
//! the counts of the traffic the test sent over HTTP/1.1, HTTP/2 and HTTP/3.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::common::*;
use crate::dataplane::{H3Client, quic_addr};

/// Runs the real binary; returns exit code, stdout, stderr. Never a panic.
fn dermgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stdout.contains("panicked") && !stderr.contains("panicked"),
        "{stdout}{stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

const POLICY: &str = r#"[[rule]]
name = "charts"
effect = "allow"
routes = ["ehr"]
paths = ["/chart/**"]
sources = ["127.0.0.0/8"]

[[rule]]
name = "lab-on-site"
effect = "allow"
routes = ["ehr"]
paths = ["/lab/**"]
sources = ["10.0.0.0/8"]

[[rule]]
name = "no-export"
effect = "deny"
routes = ["ehr"]
paths = ["/export/**"]

[[rule]]
name = "images"
effect = "allow"
routes = ["imaging"]
sources = ["127.0.0.0/8"]
"#;

fn config(dir: &Path, up: std::net::SocketAddr) -> String {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
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
sync = "batch"

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

[[route]]
name = "imaging"
host = "img.test"
upstreams = ["https://{up}"]
upstream_ca = "{{ca}}"
integrity = true

[[route]]
name = "welcome"
host = "gate.test"
upstreams = ["http://127.0.0.1:9"]
allow_plaintext = true
"#,
        policy = policy.display(),
        audit = dir.join("audit/audit.jsonl").display(),
        keys = dir.join("keys").display(),
    )
}

/// What the test sent, counted the way the reports must count it.
#[derive(Default, Debug)]
struct Sent {
    requests: u64,
    denied: u64,
    by_proto: BTreeMap<String, u64>,
    /// Denied requests by their path's first segment (the rule that decides).
    denied_paths: Vec<String>,
    /// Response body bytes of allowed requests, per route.
    bytes: BTreeMap<String, u64>,
    /// Allowed requests per route.
    per_route: BTreeMap<String, u64>,
    image_transfers: u64,
}

impl Sent {
    fn count(&mut self, proto: &str, route: &str, path: &str, status: u16, body: usize) {
        self.requests += 1;
        *self.by_proto.entry(proto.into()).or_default() += 1;
        *self.per_route.entry(route.into()).or_default() += 1;
        if status == 403 {
            self.denied += 1;
            self.denied_paths.push(path.into());
        } else {
            assert_eq!(status, 200, "{proto} {route} {path}");
            *self.bytes.entry(route.into()).or_default() += body as u64;
            if route == "imaging" {
                self.image_transfers += 1;
            }
        }
    }
    fn allowed(&self) -> u64 {
        self.requests - self.denied
    }
    fn bytes_total(&self) -> u64 {
        self.bytes.values().sum()
    }
}

async fn h2_get(
    h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> (u16, usize) {
    let resp = h2
        .send_request(
            Request::get(format!("https://{host}{path}"))
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = body_bytes(resp).await;
    (status, body)
}

async fn body_bytes(resp: http::Response<hyper::body::Incoming>) -> usize {
    use http_body_util::BodyExt;
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

/// The records of the trail, parsed.
fn records(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the batch writer has committed `decisions` decision and `completes` complete records.
fn wait_for(file: &Path, decisions: u64, completes: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = records(file);
        let n = |k: &str| r.iter().filter(|v| v["kind"] == k).count() as u64;
        if n("decision") >= decisions && n("complete") >= completes {
            assert_eq!(
                n("decision"),
                decisions,
                "more decisions than requests sent"
            );
            assert_eq!(
                n("complete"),
                completes,
                "more completes than requests allowed"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trail has {} decisions / {} completes, want {decisions} / {completes}",
            n("decision"),
            n("complete")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_report_and_tail_count_the_traffic_sent() {
    install_provider();
    let certs = Certs::new();
    let ca = certs.ca();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("evidence");
    let proxy = Proxy::start(&certs, &config(dir.path(), up.addr));
    // The proxy's own copy goes with it; the commands read one that stays.
    let cfg_path = dir.path().join("dermgate.toml");
    std::fs::copy(proxy.dir.path().join("dermgate.toml"), &cfg_path).unwrap();
    let cfg = cfg_path.display().to_string();
    let trail = dir.path().join("audit/audit.jsonl");
    let mut sent = Sent::default();

    // HTTP/1.1: public route.
    let mut h1 = h1_client::<Full<Bytes>>(proxy.addr, &ca).await;
    for i in 0..4 {
        let path = format!("/pub/{i}");
        h1.ready().await.unwrap();
        let resp = h1
            .send_request(
                Request::get(path.as_str())
                    .header("host", "localhost")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let n = body_bytes(resp).await;
        sent.count("h1", "app", &path, status, n);
    }
    // HTTP/2: allowed charts, a deny rule, a default deny, image downloads.
    let mut h2 = h2_client(proxy.addr, &ca).await;
    for (host, route, paths) in [
        (
            "ehr.test",
            "ehr",
            vec!["/chart/1", "/chart/2", "/chart/3", "/chart/4", "/chart/5"],
        ),
        (
            "ehr.test",
            "ehr",
            vec!["/export/1", "/export/2", "/export/3"],
        ),
        ("ehr.test", "ehr", vec!["/lab/1", "/lab/2"]),
        ("img.test", "imaging", vec!["/file", "/file"]),
    ] {
        for path in paths {
            let (status, n) = h2_get(&mut h2, host, path).await;
            sent.count("h2", route, path, status, n);
        }
    }
    // HTTP/3 on the same port.
    let mut h3 = H3Client::connect(quic_addr(&proxy), &ca).await;
    for i in 0..3 {
        let path = format!("/h3/{i}");
        let (status, _, body) = h3
            .request(
                Request::get(format!("https://localhost{path}"))
                    .body(())
                    .unwrap(),
                0,
            )
            .await;
        sent.count("h3", "app", &path, status, body.len());
    }
    assert_eq!(
        (sent.requests, sent.denied, sent.image_transfers),
        (19, 5, 2)
    );
    wait_for(&trail, sent.requests, sent.allowed());
    // What the proxy decided for each denial, as the trail says it.
    let trail_records = records(&trail);
    let mut want_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for v in trail_records.iter().filter(|v| v["decision"] == "deny") {
        *want_reasons
            .entry(v["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(want_reasons.values().sum::<u64>(), sent.denied);
    // An explicit deny rule and a default deny give different reasons.
    assert_eq!(want_reasons.len(), 2, "{want_reasons:?}");

    // ---- dermgate evidence --json ----
    let (code, out, err) = dermgate(&["evidence", "--json", "--config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    let ev: Value = serde_json::from_str(&out).unwrap();
    let r = &ev["requests"];
    assert_eq!(r["total"], sent.requests);
    assert_eq!(r["allowed"], sent.allowed());
    assert_eq!(r["denied"], sent.denied);
    assert_eq!(r["tls13"], sent.requests, "every request is TLS 1.3");
    assert_eq!(r["tls13_share"], 1.0);
    assert_eq!(r["by_tls"], serde_json::json!({ "TLSv1.3": sent.requests }));
    assert_eq!(r["h3"], 3);
    let h3_share = r["h3_share"].as_f64().unwrap();
    assert!(
        (h3_share - 3.0 / sent.requests as f64).abs() < 1e-9,
        "{h3_share}"
    );
    assert_eq!(r["by_proto"], serde_json::to_value(&sent.by_proto).unwrap());
    assert_eq!(
        r["denials_by_reason"],
        serde_json::to_value(&want_reasons).unwrap()
    );
    assert_eq!(
        r["by_auth"],
        serde_json::json!({ "anonymous": sent.requests })
    );
    assert_eq!(r["integrity_transfers"], sent.image_transfers);
    assert_eq!(
        r["integrity_hashed"], sent.image_transfers,
        "every image body is hashed"
    );
    assert_eq!(ev["status"], "pass");
    assert_eq!(ev["integrity_routes"], serde_json::json!(["imaging"]));
    assert_eq!(
        ev["public_routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["app"]
    );
    let legs = ev["upstream_legs"].as_array().unwrap();
    assert_eq!(legs.len(), 4);
    for leg in legs {
        if leg["route"] == "welcome" {
            assert_eq!(leg["encrypted"], false);
            assert_eq!(leg["exception"], true);
        } else {
            assert_eq!(leg["encrypted"], true);
            assert_eq!(leg["verified_against"], ca.display().to_string());
        }
    }
    let certs_json = ev["certificates"].as_array().unwrap();
    let server = certs_json
        .iter()
        .find(|c| {
            c["role"]
                .as_str()
                .unwrap()
                .starts_with("server certificate")
        })
        .unwrap();
    assert_eq!(server["status"], "pass");
    assert!(server["days_left"].as_i64().unwrap() > 0);
    assert!(server["not_after"].as_str().unwrap().ends_with('Z'));
    assert!(
        certs_json
            .iter()
            .any(|c| c["role"].as_str().unwrap().starts_with("upstream CA"))
    );
    let audit = &ev["audit"];
    assert_eq!(audit["configured"], true);
    assert_eq!(audit["chain"]["intact"], true);
    assert_eq!(audit["chain"]["signatures_checked"], true);
    assert_eq!(audit["retain"], "6y");
    let oldest: jiff::Timestamp = audit["oldest_record"].as_str().unwrap().parse().unwrap();
    let first: jiff::Timestamp = trail_records[0]["ts"].as_str().unwrap().parse().unwrap();
    assert_eq!(oldest, first);
    assert_eq!(audit["skipped"], serde_json::json!([]));
    assert_eq!(ev["device_posture"]["measured"], false);
    assert_eq!(
        ev["device_posture"]["note"],
        "not measured — device posture is not configured"
    );
    assert_eq!(ev["sessions"]["identity_configured"], false);
    let key_files: Vec<&str> = ev["keys"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["file"].as_str().unwrap())
        .collect();
    assert!(
        key_files.iter().any(|f| f.ends_with("audit-ed25519.pk8")),
        "{key_files:?}"
    );
    let codes: Vec<&str> = ev["safeguards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "164.312(a)",
            "164.312(b)",
            "164.312(c)",
            "164.312(d)",
            "164.312(e)"
        ]
    );
    // The private checkpoint key is looked at by date, never read out.
    let pk8 = std::fs::read(dir.path().join("keys/audit-ed25519.pk8")).unwrap();
    let pk8_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&pk8)
    };
    assert!(!out.contains(&pk8_b64[..40]));

    // The terminal table says the same.
    let (code, text, _) = dermgate(&["evidence", "--config", &cfg, "--since", "1h"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("{} of {} (100.0%)", sent.requests, sent.requests)),
        "{text}"
    );
    assert!(text.contains("not measured — device posture is not configured"));
    assert!(
        text.contains("EXCEPTION") && text.contains("welcome"),
        "{text}"
    );

    // ---- dermgate audit report --json ----
    let (code, out, err) = dermgate(&[
        "audit", "report", "--json", "--since", "1h", "--config", &cfg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let rep: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["totals"]["requests"], sent.requests);
    assert_eq!(rep["totals"]["denials"], sent.denied);
    assert_eq!(rep["totals"]["bytes_out"], sent.bytes_total());
    for (route, n) in &sent.per_route {
        assert_eq!(rep["by_route"][route]["requests"], *n, "{route}");
        assert_eq!(
            rep["by_route"][route]["bytes_out"],
            sent.bytes.get(route).copied().unwrap_or(0),
            "{route}"
        );
    }
    assert_eq!(rep["by_route"]["ehr"]["denials"], sent.denied);
    assert_eq!(rep["by_user"]["(anonymous)"]["requests"], sent.requests);
    let today = jiff::fmt::strtime::format("%Y-%m-%d", jiff::Timestamp::now()).unwrap();
    let days: u64 = rep["by_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(days, sent.requests);
    assert!(rep["by_day"].get(&today).is_some() || rep["by_day"].as_object().unwrap().len() == 2);
    assert_eq!(
        rep["denials_by_reason"],
        serde_json::to_value(&want_reasons).unwrap()
    );
    assert_eq!(rep["export_routes"], serde_json::json!(["imaging"]));
    assert_eq!(
        rep["top_exporters"],
        serde_json::json!([{
            "user": "(anonymous)",
            "bytes_out": sent.bytes["imaging"],
            "transfers": sent.image_transfers
        }])
    );
    assert_eq!(sent.bytes["imaging"], 2 * FILE_LEN as u64);
    // Without a configuration, every route counts as an export route.
    let (code, out, _) = dermgate(&["audit", "report", "--json", trail.to_str().unwrap()]);
    assert_eq!(code, 0);
    let rep: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["export_routes"], Value::Null);
    assert_eq!(rep["top_exporters"][0]["bytes_out"], sent.bytes_total());

    // ---- dermgate audit tail --json --decision deny ----
    let (code, out, err) = dermgate(&[
        "audit",
        "tail",
        "--json",
        "--decision",
        "deny",
        "--config",
        &cfg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let denied: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        denied
            .iter()
            .map(|v| v["path"].as_str().unwrap())
            .collect::<Vec<_>>(),
        sent.denied_paths
    );
    assert!(
        denied
            .iter()
            .all(|v| v["kind"] == "decision" && v["decision"] == "deny" && v["status"] == 403)
    );
    // The lines are the trail's own bytes.
    let raw = std::fs::read_to_string(&trail).unwrap();
    assert!(out.lines().all(|l| raw.lines().any(|r| r == l)));
    let (_, out, _) = dermgate(&[
        "audit",
        "tail",
        "--json",
        "--decision",
        "deny",
        "-n",
        "2",
        "--config",
        &cfg,
    ]);
    assert_eq!(out.lines().count(), 2);
    assert!(
        out.lines()
            .last()
            .unwrap()
            .contains(sent.denied_paths.last().unwrap())
    );
    // The table: a header, a rule, one row per record.
    let (code, out, _) = dermgate(&[
        "audit", "tail", "--route", "imaging", "--kind", "complete", "--config", &cfg,
    ]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2 + sent.image_transfers as usize, "{out}");
    assert!(
        rows[0].starts_with("TIME (UTC)")
            && rows[2].contains("imaging")
            && rows[2].contains("1.0 MiB"),
        "{out}"
    );
    // Usage errors are exit 2.
    assert_eq!(dermgate(&["audit", "tail"]).0, 2);
    assert_eq!(
        dermgate(&["audit", "tail", "--decision", "maybe", "--config", &cfg]).0,
        2
    );
    assert_eq!(
        dermgate(&["audit", "report", "--since", "a week", "--config", &cfg]).0,
        2
    );
    assert_eq!(
        dermgate(&["evidence", "--since", "soon", "--config", &cfg]).0,
        2
    );

    // ---- dermgate audit tail --follow ----
    let mut follow = Command::new(BIN)
        .args([
            "audit", "tail", "--follow", "--json", "-n", "1", "--route", "app", "--config", &cfg,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The last record already there comes first: then it has read to the end.
    let last: Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(last["route"], "app");
    for path in ["/followed/1", "/followed/2"] {
        let (status, _) = h2_get(&mut h2, "localhost", path).await;
        assert_eq!(status, 200);
    }
    let mut followed = Vec::new();
    while followed.len() < 4 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => followed.push(serde_json::from_str::<Value>(&l).unwrap()),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let kinds: Vec<&str> = followed
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "decision").count(),
        2,
        "{followed:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "complete").count(),
        2,
        "{followed:?}"
    );
    assert!(followed.iter().all(|v| v["route"] == "app"));
    let paths: Vec<&str> = followed.iter().filter_map(|v| v["path"].as_str()).collect();
    assert_eq!(paths, ["/followed/1", "/followed/2"]);

    // ---- dermgate evidence --html, rendered by headless Chromium ----
    let html = dir.path().join("evidence.html");
    let (code, out, err) = dermgate(&[
        "evidence",
        "--config",
        &cfg,
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let page = std::fs::read_to_string(&html).unwrap();
    for s in [
        "164.312(a)",
        "164.312(b)",
        "164.312(c)",
        "164.312(d)",
        "164.312(e)",
    ] {
        assert!(page.contains(s), "{s}");
    }
    assert!(page.contains("HIPAA technical safeguards evidence"));
    assert!(page.contains("@media print") && page.contains("size: A4"));
    // Self-contained: no scripts, no external stylesheets, images or fonts.
    for s in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!page.contains(s), "the page references {s}");
    }
    assert!(page.contains("not measured — device posture is not configured"));
    drop(proxy);

    // ---- a torn last line is reported, an edited record fails the evidence ----
    let html_copy = std::fs::read_to_string(&html).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&trail)
            .unwrap();
        f.write_all(b"{\"ts\":\"2026-03-02T09:00").unwrap();
    }
    let (code, out, err) = dermgate(&["evidence", "--json", "--config", &cfg]);
    assert_eq!(code, 0, "a crash's torn line is not a failure: {out}{err}");
    let ev: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ev["requests"]["total"], sent.requests + 2);
    assert_eq!(ev["audit"]["skipped"].as_array().unwrap().len(), 1);
    assert!(err.contains("incomplete last line"), "{err}");
    let (code, out, err) = dermgate(&["audit", "tail", "--config", &cfg, "-n", "1"]);
    assert_eq!(code, 0);
    assert!(
        err.contains("skipped") && out.lines().count() == 3,
        "{out}{err}"
    );
    let edited = std::fs::read_to_string(&trail)
        .unwrap()
        .replacen("/chart/2", "/chart/9", 1);
    std::fs::write(&trail, edited).unwrap();
    let (code, out, _) = dermgate(&["evidence", "--config", &cfg]);
    assert_eq!(code, 1, "an edited record fails the evidence: {out}");
    assert!(
        out.contains("NOT INTACT") && out.contains("result: FAIL"),
        "{out}"
    );
    let (code, out, _) = dermgate(&["evidence", "--json", "--config", &cfg]);
    assert_eq!(code, 1);
    let ev: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ev["status"], "fail");
    assert_eq!(ev["audit"]["chain"]["intact"], false);
    std::fs::write(&html, html_copy).unwrap();
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        eprintln!("note: /usr/bin/chromium is absent; the evidence page was not rendered");
        return;
    }
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("evidence.png");
    let _ = std::fs::remove_file(&shot);
    // The page is kept beside its picture, for people to look at and print.
    std::fs::copy(&html, artifacts.join("evidence.html")).unwrap();
    let profile = TempDir::new("chromium-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1240,1754")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {out:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot at {} is {} bytes",
        shot.display(),
        png.len()
    );
}
