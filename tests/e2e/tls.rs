//! TLS 1.3 only, ALPN honoured, HSTS on the proxy's own responses.

use std::process::{Command, Stdio};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

async fn setup() -> (Certs, Upstream, Proxy) {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    (certs, up, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_client_is_refused_by_rustls_and_openssl() {
    let (certs, _up, proxy) = setup().await;
    // rustls client that can only speak TLS 1.2.
    let err = tls_connect(proxy.addr, tls12_client_config(&certs.ca()), "localhost").await;
    assert!(
        err.is_err(),
        "a TLS 1.2-only client must fail the handshake"
    );

    // openssl s_client -tls1_2 must fail; -tls1_3 must succeed (the same server, same run).
    let s_client = |flag: &str| {
        Command::new("openssl")
            .args(["s_client", flag, "-connect"])
            .arg(proxy.addr.to_string())
            .args(["-servername", "localhost", "-CAfile"])
            .arg(certs.ca())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let v12 = s_client("-tls1_2");
    let out12 =
        String::from_utf8_lossy(&v12.stdout).to_string() + &String::from_utf8_lossy(&v12.stderr);
    // s_client exits 0 even when the handshake fails; what it negotiated tells.
    assert!(
        out12.contains("Cipher is (NONE)") && !out12.contains("New, TLSv1.2"),
        "openssl -tls1_2 negotiated a session:\n{out12}"
    );
    assert!(
        out12.contains("alert protocol version"),
        "no protocol_version alert:\n{out12}"
    );
    let v13 = s_client("-tls1_3");
    let out13 = String::from_utf8_lossy(&v13.stdout);
    assert!(
        out13.contains("TLSv1.3"),
        "openssl -tls1_3 failed:\n{out13}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_with_h1_and_h2() {
    let (certs, up, proxy) = setup().await;
    // HTTP/1.1
    let mut h1 = h1_client::<Full<Bytes>>(proxy.addr, &certs.ca()).await;
    let resp = h1
        .send_request(
            Request::get("/hello")
                .header("host", "localhost")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_string(resp).await, "ok /hello");
    // HTTP/2
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    let resp = h2
        .send_request(
            Request::get("https://localhost/hello2")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(body_string(resp).await, "ok /hello2");
    assert_eq!(up.seen().len(), 2);
    // Negotiated version is TLS 1.3.
    let s = tls_connect(
        proxy.addr,
        client_config(&certs.ca(), &[b"h2"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_honoured() {
    let (certs, _up, proxy) = setup().await;
    let ca = certs.ca();
    let alpn = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        s.get_ref().1.alpn_protocol().map(|p| p.to_vec())
    };
    let s = tls_connect(proxy.addr, client_config(&ca, &[b"http/1.1"]), "localhost")
        .await
        .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"http/1.1"[..]));
    let s = tls_connect(
        proxy.addr,
        client_config(&ca, &[b"h2", b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"h2"[..]));
    // No ALPN at all: still served, as HTTP/1.1.
    let s = tls_connect(proxy.addr, client_config(&ca, &[]), "localhost")
        .await
        .unwrap();
    assert_eq!(alpn(&s), None);
    // Only protocols the proxy does not speak: refused at the handshake.
    let r = tls_connect(
        proxy.addr,
        client_config(&ca, &[b"spdy/3", b"h2c"]),
        "localhost",
    )
    .await;
    assert!(
        r.is_err(),
        "a client offering only unknown ALPN ids must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_on_every_proxy_response() {
    let (certs, _up, proxy) = setup().await;
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    // A page the proxy makes itself (no route), and a forwarded response.
    for uri in ["https://unknown.test/", "https://localhost/x"] {
        let resp = h2
            .send_request(Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            resp.headers().get("strict-transport-security").unwrap(),
            "max-age=31536000; includeSubDomains",
            "{uri}"
        );
    }
}
