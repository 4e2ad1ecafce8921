//! `dermgate check`: broken configurations are refused with every error at
//! file:line:column, never a panic; a good one prints a summary.

use std::process::Command;

use crate::common::*;

fn check(dir: &TempDir, name: &str, text: &str) -> (i32, String) {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!all.contains("panicked"), "{name} panicked:\n{all}");
    (out.status.code().unwrap_or(-1), all)
}

const HEAD: &str =
    "[listen]\naddr = \"127.0.0.1:8443\"\n\n[tls]\ncert = \"CERT\"\nkey = \"KEY\"\n\n";
const ROUTE: &str = "[[route]]\nname = \"ehr\"\nhost = \"ehr.test\"\nupstreams = [\"https://127.0.0.1:9\"]\nupstream_ca = \"CA\"\n";

#[test]
fn broken_configs_report_every_error_with_position() {
    let certs = Certs::new();
    let dir = TempDir::new("check");
    let fill = |s: &str| {
        s.replace("CERT", &certs.server_cert().display().to_string())
            .replace("KEY", &certs.server_key().display().to_string())
            .replace("CA", &certs.ca().display().to_string())
    };
    // Sanity: the base is valid and summarised.
    let (code, out) = check(&dir, "good.toml", &fill(&format!("{HEAD}{ROUTE}")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ehr") && out.contains("TLS 1.3"), "{out}");

    // (name, text, expected "line:col" markers, each must appear)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax error", "[listen\naddr = 1\n".into(), vec![":1:"]),
        (
            "unknown top-level key with did-you-mean",
            fill(&format!("{HEAD}{ROUTE}[lisen]\naddr = \"x\"\n")),
            vec![":13:2:", "did you mean `listen`"],
        ),
        (
            "plaintext alert webhook",
            fill(&format!(
                "{HEAD}{ROUTE}[alerts]\nwebhook = \"http://alerts\"\n"
            )),
            vec![":14:11:", "https URL"],
        ),
        (
            "plaintext syslog",
            fill(&format!(
                "{HEAD}{ROUTE}[keys]\ndir = \"k\"\n[audit]\nfile = \"a.jsonl\"\nsyslog = \"udp://logs:514\"\n"
            )),
            vec![":17:10:", "tls://host:port"],
        ),
        (
            "bad listen address",
            fill(&format!(
                "[listen]\naddr = \"localhost\"\n\n[tls]\ncert = \"CERT\"\nkey = \"KEY\"\n\n{ROUTE}"
            )),
            vec![":2:8:", "IP:PORT"],
        ),
        (
            "missing cert file",
            format!(
                "[listen]\naddr = \"127.0.0.1:1\"\n\n[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n\n{}",
                fill(ROUTE)
            ),
            vec![":5:8:", ":6:7:", "no such file"],
        ),
        (
            "plaintext upstream without allow_plaintext",
            fill(&format!(
                "{HEAD}[[route]]\nname = \"ehr\"\nhost = \"ehr.test\"\nupstreams = [\"http://127.0.0.1:9\"]\n"
            )),
            vec![":11:14:", "allow_plaintext"],
        ),
        (
            "https upstream without upstream_ca",
            fill(&format!(
                "{HEAD}[[route]]\nname = \"ehr\"\nhost = \"ehr.test\"\nupstreams = [\"https://127.0.0.1:9\"]\n"
            )),
            vec!["upstream_ca"],
        ),
        (
            "wrong types",
            fill(&format!(
                "{HEAD}[[route]]\nname = 5\nhost = \"ehr.test\"\nupstreams = \"https://x:1\"\npublic = \"yes\"\n"
            )),
            vec![":9:8:", ":11:13:", ":12:10:"],
        ),
        (
            "bad duration and unknown timeout key",
            fill(&format!(
                "{HEAD}{ROUTE}timeouts = {{ connect = \"3 seconds\", hedaer = \"1s\" }}\n"
            )),
            vec![":13:24:", ":13:37:", "did you mean `header`"],
        ),
        (
            "duplicate route names",
            fill(&format!("{HEAD}{ROUTE}{ROUTE}")),
            vec![":14:8:", "used twice"],
        ),
        (
            "identity provider over plain http, and no [keys]",
            fill(&format!("{HEAD}{ROUTE}[oidc]\nissuer = \"http://idp\"\n")),
            vec![":14:10:", "https URL", "client_id", "[keys] dir"],
        ),
        (
            "bad host and path",
            fill(&format!(
                "{HEAD}[[route]]\nname = \"ehr\"\nhost = \"https://ehr.test/\"\npath = \"/a/../b\"\nupstreams = [\"https://127.0.0.1:9\"]\nupstream_ca = \"CA\"\n"
            )),
            vec![":10:8:", ":11:8:"],
        ),
        (
            "no routes and bad log level",
            fill(&format!("{HEAD}[log]\nlevel = \"verbose\"\n")),
            vec![":9:9:", "missing `route`"],
        ),
        (
            "upstream with path",
            fill(&format!(
                "{HEAD}[[route]]\nname = \"ehr\"\nhost = \"ehr.test\"\nupstreams = [\"https://127.0.0.1:9/api\"]\nupstream_ca = \"CA\"\n"
            )),
            vec![":11:14:", "no path"],
        ),
    ];
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (i, (name, text, markers)) in cases.iter().enumerate() {
        let (code, out) = check(&dir, &format!("bad{i}.toml"), text);
        if code != 1 {
            failures.push(format!("{name}: exit {code}\n{out}"));
            continue;
        }
        for m in markers {
            if !out.contains(m) {
                failures.push(format!("{name}: missing {m:?} in:\n{out}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn all_errors_at_once() {
    let dir = TempDir::new("check-all");
    let text = "[listen]\naddr = \"nope\"\ndevice_ca = \"127.0.0.1:9901\"\n\n[tls]\ncert = 3\n\n[[route]]\nname = \"Bad Name\"\nhost = \"a.test\"\nupstreams = []\nbogus = 1\n";
    let (code, out) = check(&dir, "many.toml", text);
    assert_eq!(code, 1);
    for m in [
        ":2:8:", ":3:1:", ":5:1:", ":6:8:", ":9:8:", ":11:13:", ":12:1:",
    ] {
        assert!(out.contains(m), "missing {m} in:\n{out}");
    }
    assert!(out.contains("errors"), "{out}");
}
