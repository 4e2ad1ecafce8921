//! The segmentation policy in the running proxy: protected routes are decided
//! by the compiled policy; `dermgate policy allow` + `dermgate policy apply`
//! change the running decision without a restart; an invalid apply (or file
//! edit) is refused and the running policy stays.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

const POLICY: &str = r#"# Clinic policy (comments must survive CLI edits).
[[rule]]
name = "clinic-lan-only"
effect = "allow"
routes = ["app"]
sources = ["10.0.0.0/8"]   # the clinic LAN

[[rule]]
name = "no-export"
effect = "deny"
routes = ["app"]
paths = ["/export/**"]
"#;

fn dermgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

async fn get(
    h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    accept: &str,
) -> (u16, String) {
    let resp = h2
        .send_request(
            Request::get(format!("https://localhost{path}"))
                .header("accept", accept)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, body_string(resp).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decides_and_apply_changes_it_without_restart() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("policy");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    let cfg = format!(
        r#"[listen]
addr = "127.0.0.1:0"
admin = "127.0.0.1:0"
admin_token_file = "{token}"

[tls]
cert = "{{cert}}"
key = "{{key}}"

[policy]
file = "{policy}"

[[route]]
name = "app"
host = "localhost"
upstreams = ["https://{up}"]
upstream_ca = "{{ca}}"
"#,
        token = token.display(),
        policy = policy.display(),
        up = up.addr,
    );
    let proxy = Proxy::start(&certs, &cfg);
    // The CLI needs the real admin address: write the config it reads.
    let admin = wait_for_line(&proxy, "dermgate admin on http://");
    let cli_cfg = dir.path().join("cli.toml");
    std::fs::write(
        &cli_cfg,
        cfg.replace("admin = \"127.0.0.1:0\"", &format!("admin = \"{admin}\""))
            .replace("{cert}", &certs.server_cert().display().to_string())
            .replace("{key}", &certs.server_key().display().to_string())
            .replace("{ca}", &certs.ca().display().to_string()),
    )
    .unwrap();
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;

    // Not from the clinic LAN: denied with a reason and a remedy, never forwarded.
    let (s, body) = get(&mut h2, "/chart/42", "application/json").await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("network"), "reason names the network: {body}");
    let (s, body) = get(&mut h2, "/chart/42", "text/html").await;
    assert_eq!(s, 403);
    assert!(body.contains("<!doctype html>"), "{body}");
    assert!(up.seen().is_empty());

    // An admin allows loopback with the CLI, then applies it to the running proxy.
    let p = policy.display().to_string();
    let (code, out) = dermgate(&[
        "policy",
        "allow",
        &p,
        "--rule",
        "loopback-ops",
        "--route",
        "app",
        "--source",
        "127.0.0.0/8",
    ]);
    assert_eq!(code, 0, "{out}");
    let edited = std::fs::read_to_string(&policy).unwrap();
    assert!(
        edited.contains("# the clinic LAN"),
        "comments kept:\n{edited}"
    );
    let (code, out) = dermgate(&[
        "policy",
        "apply",
        &p,
        "--config",
        &cli_cfg.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (s, body) = get(&mut h2, "/chart/42", "application/json").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(up.seen().len(), 1);
    // Deny still overrides allow.
    let (s, _) = get(&mut h2, "/export/all", "application/json").await;
    assert_eq!(s, 403);

    // An invalid policy is refused by apply (exit 1, with file:line:column) and the running one stays.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"x\"\neffect = \"alow\"\nroutes = [\"ap\"]\n",
    )
    .unwrap();
    let (code, out) = dermgate(&[
        "policy",
        "apply",
        &bad.display().to_string(),
        "--config",
        &cli_cfg.display().to_string(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":3:"), "position of the bad effect: {out}");
    let (s, _) = get(&mut h2, "/chart/43", "application/json").await;
    assert_eq!(s, 200, "the running policy must stay after a refused apply");
    assert_eq!(
        std::fs::read_to_string(&policy).unwrap(),
        edited,
        "a refused apply must not touch the file"
    );

    // A broken edit of the watched file is refused too; a good edit is picked up.
    std::fs::write(&policy, "[[rule]\nname = ").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, _) = get(&mut h2, "/chart/44", "application/json").await;
    assert_eq!(s, 200, "a broken file must not replace the running policy");
    assert!(proxy.log().contains("policy refused"), "{}", proxy.log());
    std::fs::write(&policy, POLICY).unwrap();
    let mut denied = false;
    for _ in 0..50 {
        let (s, _) = get(&mut h2, "/chart/45", "application/json").await;
        if s == 403 {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(denied, "a valid edit of the policy file was not picked up");

    // Without a token the admin API refuses to apply.
    let (code, out) = dermgate(&[
        "policy",
        "apply",
        &p,
        "--config",
        &cli_cfg
            .display()
            .to_string()
            .replace("cli.toml", "missing.toml"),
    ]);
    assert_ne!(code, 0, "{out}");
}

/// Waits for a stderr line starting with `prefix` and returns the rest (first word).
fn wait_for_line(proxy: &Proxy, prefix: &str) -> String {
    for _ in 0..100 {
        if let Some(l) = proxy.log().lines().find(|l| l.starts_with(prefix)) {
            return l[prefix.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no line {prefix:?} in:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_needs_a_signed_in_user_and_a_same_site_form() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let dir = TempDir::new("break-glass");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"emergency\"\neffect = \"allow\"\nroutes = [\"app\"]\nbreak_glass = true\n",
    )
    .unwrap();
    let cfg = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{{cert}}\"\nkey = \"{{key}}\"\n\n[policy]\nfile = \"{}\"\n\n[[route]]\nname = \"app\"\nhost = \"localhost\"\nupstreams = [\"https://{}\"]\nupstream_ca = \"{{ca}}\"\n",
        policy.display(),
        up.addr
    );
    let proxy = Proxy::start(&certs, &cfg);
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;

    // Without an elevation the rule does not match; the deny offers break-the-glass.
    let (s, body) = get(&mut h2, "/chart/1", "application/json").await;
    assert_eq!(s, 403);
    assert!(body.contains("/.dermgate/break-glass?route=app"), "{body}");

    // The form is served by the proxy itself, never forwarded.
    let (s, body) = get(
        &mut h2,
        "/.dermgate/break-glass?route=app&rd=%2Fchart%2F1",
        "text/html",
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        body.contains("name=\"justification\"") && body.contains("Sign in first"),
        "{body}"
    );

    let post = |origin: Option<&'static str>, form: &'static str| {
        let mut b = Request::post("https://localhost/.dermgate/break-glass")
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(Full::new(Bytes::from_static(form.as_bytes())))
            .unwrap()
    };
    let long =
        "route=app&justification=patient+in+anaphylaxis%2C+need+allergy+list&rd=%2Fchart%2F1";
    for (origin, form, want) in [
        // Cross-site posts are refused before anything else.
        (None, long, 403),
        (Some("https://evil.example"), long, 403),
        // Anonymous users cannot open an elevation: nobody would answer for it.
        (Some("https://localhost"), long, 401),
        (
            Some("https://localhost"),
            "route=nope&justification=patient+in+anaphylaxis+now",
            404,
        ),
        (
            Some("https://localhost"),
            "route=app&justification=x&rd=%2F%2Fevil.example%2F",
            400,
        ),
    ] {
        let resp = h2.send_request(post(origin, form)).await.unwrap();
        assert_eq!(resp.status(), want, "origin {origin:?} form {form}");
        assert!(resp.headers().get("location").is_none());
    }
    // Still denied: no elevation was opened, and nothing reached the upstream.
    let (s, _) = get(&mut h2, "/chart/1", "application/json").await;
    assert_eq!(s, 403);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert!(proxy.log().contains("break_glass_refused"));
}

/// The policy commands of the real binary on the design's own policy and cases.
#[test]
fn policy_cli_validate_test_explain_show_diff() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests");
    let policy = root.join("design_policy.toml").display().to_string();
    let cases = root.join("design_cases.toml").display().to_string();

    let (code, out) = dermgate(&["policy", "validate", &policy]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = dermgate(&["policy", "test", &policy, &cases]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    assert!(out.contains("clinicians-ehr"), "deciding rule shown: {out}");

    let (code, out) = dermgate(&[
        "policy",
        "explain",
        &policy,
        "--request",
        r#"{ route = "imaging", method = "GET", path = "/export/all", source = "203.0.113.7", groups = ["clinicians"], mfa_age = "5m", time = "2026-03-02T09:00:00-05:00" }"#,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no-bulk-export-off-site"), "{out}");
    assert!(out.to_lowercase().contains("deny"), "{out}");

    let (code, out) = dermgate(&["policy", "show", &policy, "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.trim_start().starts_with('[') || out.trim_start().starts_with('{'),
        "{out}"
    );

    // A broken copy: every error with file:line:column and a caret; exit 1.
    let dir = TempDir::new("policy-cli");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"a\"\neffect = \"alow\"\nsources = [\"10.0.0.0/33\"]\n",
    )
    .unwrap();
    let (code, out) = dermgate(&["policy", "validate", &bad.display().to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":3:10:") && out.contains(":4:"), "{out}");
    assert!(out.contains('^'), "caret under the column: {out}");
    assert!(out.contains("did you mean `allow`"), "{out}");

    // diff: a changed rule is reported, and the cases whose decision changes.
    let changed = dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("mon-sat", "mon-fri"),
    )
    .unwrap();
    let (code, out) = dermgate(&[
        "policy",
        "diff",
        &policy,
        &changed.display().to_string(),
        "--cases",
        &cases,
    ]);
    assert!(code == 0 || code == 1, "{out}");
    assert!(out.contains("clinicians-ehr"), "{out}");
}
