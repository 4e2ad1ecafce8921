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
