//! Attacks on the canonical request form and header spoofing. Each is either
//! refused with 400 before it reaches the upstream, or neutralised — and then
//! checked at the upstream, which must only ever see the canonical form.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

/// Requests that must be refused (status, and never reach the upstream).
const REFUSED: &[(&str, &str, u16)] = &[
    (
        "encoded dot-dot segment",
        "GET /a/%2e%2e/secret HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "upper-case encoded traversal",
        "GET /%2E%2E/%2E%2E/etc/passwd HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "half-encoded dot segment",
        "GET /a/.%2e/b HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "encoded slash",
        "GET /a%2Fb HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "encoded backslash",
        "GET /a%5cb HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "raw backslash",
        "GET /a\\..\\b HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "dot-dot above root",
        "GET /../etc/passwd HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "dot-dot climbing out",
        "GET /a/../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "encoded NUL",
        "GET /a%00.jpg HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "encoded CRLF header injection",
        "GET /a%0d%0aX-Injected:%20yes HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "overlong UTF-8 dot-dot",
        "GET /%C0%AE%C0%AE/secret HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "overlong UTF-8 slash",
        "GET /a%C0%AFb HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "invalid UTF-8",
        "GET /%FF%FE HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "bad percent escape",
        "GET /a%zz HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "double-encoded traversal",
        "GET /%252e%252e/admin HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "dot-dot with path parameter",
        "GET /public/..;/admin HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "duplicate Host",
        "GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.test\r\n",
        400,
    ),
    ("missing Host", "GET / HTTP/1.1\r\n", 400),
    (
        "conflicting Content-Length",
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "absolute-form host differs from Host",
        "GET https://evil.test/ HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "userinfo in absolute-form",
        "GET https://user@localhost/ HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "malformed Host",
        "GET / HTTP/1.1\r\nHost: local_host:abc\r\n",
        400,
    ),
    (
        "asterisk-form",
        "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n",
        400,
    ),
    (
        "CONNECT tunnel",
        "CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n",
        405,
    ),
    (
        "Transfer-Encoding other than chunked",
        "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "obfuscated Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        400,
    ),
    (
        "HTTP/1.0 with Transfer-Encoding",
        "POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
];

/// Request smuggling with both Content-Length and Transfer-Encoding (CL.TE and
/// TE.CL). hyper resolves these per RFC 9112 section 6.3 before the proxy sees
/// the request: Transfer-Encoding wins, Content-Length is dropped, and the
/// connection is closed after the response, so the smuggled second request is
/// never read. Checked at the upstream: it sees one chunked request and never
/// the smuggled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_neutralised() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for (name, head) in [
        (
            "CL.TE",
            format!(
                "POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /first HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ),
    ] {
        up.clear();
        let resp = raw_h1(proxy.addr, &certs.ca(), head.as_bytes()).await;
        let seen = up.seen();
        assert!(
            seen.iter().all(|s| s.target != "/smuggled"),
            "{name}: smuggled request reached the upstream: {seen:?}"
        );
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{name}: {resp}");
        for s in &seen {
            assert!(
                s.header("content-length").is_empty() || s.header("transfer-encoding").is_empty(),
                "{name}: {s:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_before_the_upstream() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    assert!(REFUSED.len() >= 25);
    let mut failures = Vec::new();
    for (name, head, want) in REFUSED {
        let mut req = head.to_string();
        if !req.contains("\r\n\r\n") {
            req.push_str("Connection: close\r\n\r\n");
        }
        let resp = raw_h1(proxy.addr, &certs.ca(), req.as_bytes()).await;
        let got = status_of(&resp);
        if got != *want {
            failures.push(format!(
                "{name}: want {want}, got {got}: {}",
                resp.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert!(
        up.seen().is_empty(),
        "upstream saw refused requests: {:?}",
        up.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ambiguity_is_refused() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    for (uri, host) in [
        ("https://localhost/a/%2e%2e/b", None),
        ("https://localhost/x%2Fy", None),
        ("https://localhost/", Some("evil.test")),
    ] {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let resp = h2
            .send_request(b.body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{uri} host={host:?}");
    }
    assert!(up.seen().is_empty());
}

/// A check on what the upstream received.
type SeenCheck = dyn Fn(&Seen) -> Result<(), String>;

fn target_is(want: &'static str) -> impl Fn(&Seen) -> Result<(), String> {
    move |s| {
        if s.target == want {
            Ok(())
        } else {
            Err(format!("target {:?}", s.target))
        }
    }
}

fn only_proxy_forwarding(s: &Seen) -> Result<(), String> {
    let xff = s.header("x-forwarded-for");
    if xff != ["127.0.0.1"] {
        return Err(format!("x-forwarded-for {xff:?}"));
    }
    let fwd = s.header("forwarded");
    if fwd != ["for=127.0.0.1;proto=https;host=localhost"] {
        return Err(format!("forwarded {fwd:?}"));
    }
    for (n, v) in &s.headers {
        let n = n.to_ascii_lowercase().replace('_', "-");
        if n.starts_with("x-dermgate-")
            || [
                "x-real-ip",
                "x-original-url",
                "x-client-ip",
                "true-client-ip",
            ]
            .contains(&n.as_str())
            || v.contains("6.6.6.6")
            || v.contains("forged")
        {
            return Err(format!("spoofed header reached upstream: {n}: {v}"));
        }
    }
    if s.header("x-forwarded-proto") != ["https"] || s.header("x-forwarded-host") != ["localhost"] {
        return Err("proxy's own forwarding headers missing".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neutralised_requests_reach_the_upstream_canonical() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    let cases: Vec<(&str, &str, Box<SeenCheck>)> = vec![
        (
            "dot segments and duplicate slashes",
            "GET /a//b/./c/../d HTTP/1.1\r\nHost: localhost",
            Box::new(target_is("/a/b/d")),
        ),
        (
            "unreserved characters percent-encoded",
            "GET /%7Euser/%61bc HTTP/1.1\r\nHost: localhost",
            Box::new(target_is("/~user/abc")),
        ),
        (
            "path parameter stays data",
            "GET /x;jsessionid=1 HTTP/1.1\r\nHost: localhost",
            Box::new(target_is("/x%3Bjsessionid=1")),
        ),
        (
            "query passes untouched",
            "GET /q?a=1&b=%2F HTTP/1.1\r\nHost: localhost",
            Box::new(target_is("/q?a=1&b=%2F")),
        ),
        (
            "absolute-form becomes origin-form",
            "GET https://localhost/abs HTTP/1.1\r\nHost: localhost",
            Box::new(target_is("/abs")),
        ),
        (
            "host case, trailing dot and port",
            "GET /h HTTP/1.1\r\nHost: LOCALHOST.:443",
            Box::new(|s: &Seen| {
                if s.header("host") == ["localhost"] {
                    Ok(())
                } else {
                    Err(format!("host {:?}", s.header("host")))
                }
            }),
        ),
        (
            "client X-Forwarded-For",
            "GET /s1 HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6",
            Box::new(only_proxy_forwarding),
        ),
        (
            "X_Forwarded_For with underscores",
            "GET /s2 HTTP/1.1\r\nHost: localhost\r\nX_Forwarded_For: 6.6.6.6",
            Box::new(only_proxy_forwarding),
        ),
        (
            "client Forwarded",
            "GET /s3 HTTP/1.1\r\nHost: localhost\r\nForwarded: for=6.6.6.6;proto=http",
            Box::new(only_proxy_forwarding),
        ),
        (
            "forged identity assertion",
            "GET /s4 HTTP/1.1\r\nHost: localhost\r\nX-Dermgate-Assertion: forged",
            Box::new(only_proxy_forwarding),
        ),
        (
            "forged identity in mixed case/underscore",
            "GET /s5 HTTP/1.1\r\nHost: localhost\r\nx-DERMGATE_user: forged",
            Box::new(only_proxy_forwarding),
        ),
        (
            "X-Real-IP",
            "GET /s6 HTTP/1.1\r\nHost: localhost\r\nX-Real-IP: 6.6.6.6",
            Box::new(only_proxy_forwarding),
        ),
        (
            "X-Original-URL path override",
            "GET /s7 HTTP/1.1\r\nHost: localhost\r\nX-Original-URL: /admin",
            Box::new(only_proxy_forwarding),
        ),
        (
            "Connection naming the proxy's header",
            "GET /s8 HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, X-Forwarded-For",
            Box::new(only_proxy_forwarding),
        ),
        (
            "X-Forwarded-Host / Proto spoof",
            "GET /s9 HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: http",
            Box::new(|s: &Seen| {
                if s.header("x-forwarded-host") == ["localhost"]
                    && s.header("x-forwarded-proto") == ["https"]
                {
                    Ok(())
                } else {
                    Err(format!("{:?}", s.headers))
                }
            }),
        ),
        (
            "hop-by-hop headers",
            "GET /s10 HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\nKeep-Alive: 300\r\nProxy-Authorization: Basic Zm9v\r\nConnection: X-Private\r\nX-Private: 1",
            Box::new(|s: &Seen| {
                for h in ["te", "keep-alive", "proxy-authorization", "x-private"] {
                    if !s.header(h).is_empty() {
                        return Err(format!("{h} reached upstream"));
                    }
                }
                Ok(())
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (name, head, check) in &cases {
        up.clear();
        let resp = raw_h1(
            proxy.addr,
            &certs.ca(),
            format!("{head}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let seen = up.seen();
        if status_of(&resp) != 200 || seen.len() != 1 {
            failures.push(format!(
                "{name}: status {} seen {}",
                status_of(&resp),
                seen.len()
            ));
            continue;
        }
        if let Err(e) = check(&seen[0]) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "not neutralised:\n{}",
        failures.join("\n")
    );
    assert!(REFUSED.len() + cases.len() >= 25);
}
