//! `dermgate demo` end to end: the real binary starts the dev CA, the dev IdP,
//! the demo backends and the proxy; a browser signs in as the demo users.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::idp::*;
use crate::common::*;

struct Demo {
    child: std::process::Child,
    port: u16,
    dir: TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let dir = TempDir::new("demo");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["demo", "--state-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Stop with Ctrl-C") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("demo banner");
    assert!(
        banner.contains("DEVELOPMENT ONLY") && banner.contains("dr-nomfa"),
        "{banner}"
    );
    Demo { child, port, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_users_sign_in_through_the_dev_idp() {
    let d = start_demo();
    let ca = d.dir.path().join("certs/ca.pem");
    let base = format!("https://localhost:{}", d.port);
    // An MFA user from the dev IdP reaches the EHR.
    let mut b = Browser::with_ca(&ca, d.port);
    let form = b.follow(&format!("{base}/")).await;
    assert_eq!(form.status, 200, "{}: {}", form.url, form.body);
    assert!(
        form.body.contains("DEVELOPMENT"),
        "the dev IdP says what it is"
    );
    let page = b.idp_login(&form, "dr-mfa", "demo-mfa-pass").await;
    assert_eq!(page.status, 200, "{}: {}", page.url, page.body);
    assert_eq!(page.url, format!("{base}/"));
    // A user without MFA at the IdP is sent to dermgate's TOTP enrollment and passes it.
    let mut b = Browser::with_ca(&ca, d.port);
    let form = b.follow(&format!("{base}/imaging/")).await;
    let page = b.idp_login(&form, "dr-nomfa", "demo-nomfa-pass").await;
    assert!(page.url.contains("/.dermgate/mfa"), "{}", page.url);
    let secret = element_text(&page.body, "totp-secret").unwrap();
    let code = totp_now(&secret, 0);
    let r = b
        .request(
            reqwest::Method::POST,
            &format!("{base}/.dermgate/mfa"),
            Some(&[("code", &code), ("rd", &format!("{base}/imaging/"))]),
            Some(&base),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = b.follow(&r.location().unwrap()).await;
    assert_eq!(page.status, 200, "{}: {}", page.url, page.body);
    // A user with no groups is denied with a page that says so.
    let mut b = Browser::with_ca(&ca, d.port);
    let form = b.follow(&format!("{base}/")).await;
    let page = b.idp_login(&form, "nogroups", "demo-nogroups-pass").await;
    assert_eq!(page.status, 403, "{}", page.body);
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, for Chromium's
/// `--ignore-certificate-errors-spki-list` (trust exactly that key, nothing else).
fn spki_hash(cert: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl base64 -A",
            cert.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_signs_in_with_totp_step_up_and_reaches_the_ehr() {
    let d = start_demo();
    let oidc = oidc_dir();
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("chromium-login.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg("browser-login.js")
        .current_dir(&oidc)
        .env("START_URL", format!("https://localhost:{}/", d.port))
        .env("LOGIN", "dr-nomfa")
        .env("PASSWORD", "demo-nomfa-pass")
        .env("EXPECT_TEXT", "Demo EHR")
        .env("SCREENSHOT", &shot)
        .env("SPKI", spki_hash(&d.dir.path().join("certs/server.pem")))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium login failed:\n{text}");
    assert!(
        text.contains(&format!("OK https://localhost:{}/", d.port)),
        "{text}"
    );
    // The screenshot is kept as a test artifact; it is a real PNG.
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "screenshot at {}",
        shot.display()
    );
    // The demo's audit trail saw the enrollment and the login.
    let audit = std::fs::read_to_string(d.dir.path().join("audit/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"totp_enrolled\"") && audit.contains("\"login\""),
        "{audit}"
    );
    assert!(!audit.contains("demo-nomfa-pass"));
}
