//! HTTP/3 on the same port, WebSocket over h1 and h2 extended CONNECT, and
//! upstream health: real quinn/h3, tungstenite and hyper clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// The UDP (h3) address the proxy printed.
pub(crate) fn quic_addr(proxy: &Proxy) -> SocketAddr {
    for _ in 0..100 {
        if let Some(line) = proxy.log().lines().find(|l| l.ends_with("(udp, h3)")) {
            let a = line
                .trim_start_matches("dermgate listening on https://")
                .split_whitespace()
                .next()
                .unwrap();
            return a.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no h3 listener in log:\n{}", proxy.log());
}

/// A real HTTP/3 client (quinn + h3).
pub(crate) struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _endpoint: quinn::Endpoint,
}

impl H3Client {
    pub(crate) async fn connect(addr: SocketAddr, ca: &std::path::Path) -> Self {
        let mut tls = (*client_config(ca, &[b"h3"])).clone();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Self {
            send,
            _endpoint: endpoint,
        }
    }

    /// Sends a request with an optional body of `upload` pattern bytes; returns status, headers, body.
    pub(crate) async fn request(
        &mut self,
        req: Request<()>,
        upload: u64,
    ) -> (u16, http::HeaderMap, Vec<u8>) {
        let mut stream = self.send.send_request(req).await.unwrap();
        let chunk = Bytes::from(pattern(0, 251 * 261));
        let mut sent = 0u64;
        while sent < upload {
            let n = (upload - sent).min(chunk.len() as u64) as usize;
            stream.send_data(chunk.slice(..n)).await.unwrap();
            sent += n as u64;
        }
        // A server that answered a bodiless request may already have stopped
        // reading it (STOP_SENDING with H3_NO_ERROR, RFC 9114 4.1), so finishing
        // can fail harmlessly then; with a body it must succeed.
        match stream.finish().await {
            Ok(()) => {}
            Err(e) if upload == 0 => eprintln!("finish after a complete response: {e}"),
            Err(e) => panic!("finishing the upload failed: {e}"),
        }
        let resp = stream.recv_response().await.unwrap();
        let mut body = Vec::new();
        while let Some(mut d) = stream.recv_data().await.unwrap() {
            let n = d.remaining();
            body.extend_from_slice(&d.copy_to_bytes(n));
        }
        (resp.status().as_u16(), resp.headers().clone(), body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_matches_http2_for_get_post_and_range() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    let udp = quic_addr(&proxy);
    assert_eq!(
        udp.port(),
        proxy.addr.port(),
        "h3 must share the TCP port number"
    );

    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    let mut h3 = H3Client::connect(udp, &certs.ca()).await;

    // GET: same status and body; Alt-Svc on TCP advertises h3 on the same port.
    let r2 = h2
        .send_request(
            Request::get("https://localhost/hello?x=1")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        r2.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", proxy.addr.port())
    );
    let (s2, b2) = (r2.status().as_u16(), body_string(r2).await);
    let (s3, h3_headers, b3) = h3
        .request(
            Request::get("https://localhost/hello?x=1")
                .body(())
                .unwrap(),
            0,
        )
        .await;
    assert_eq!((s3, String::from_utf8(b3).unwrap()), (s2, b2));
    assert!(h3_headers.get("alt-svc").is_none());
    assert_eq!(
        h3_headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );

    // POST with a 100 MiB body.
    const MIB100: u64 = 100 << 20;
    let (s, _, b) = h3
        .request(
            Request::post("https://localhost/big/upload")
                .body(())
                .unwrap(),
            MIB100,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        String::from_utf8(b).unwrap(),
        format!("received {MIB100} intact=true")
    );

    // Range: same bytes as over h2.
    let (s, h, b) = h3
        .request(
            Request::get("https://localhost/file")
                .header("range", "bytes=5-104")
                .body(())
                .unwrap(),
            0,
        )
        .await;
    assert_eq!(s, 206);
    assert_eq!(h["content-range"], format!("bytes 5-104/{FILE_LEN}"));
    assert_eq!(b, pattern(5, 100));

    // The same canonical-form rules hold on h3.
    let (s, _, _) = h3
        .request(
            Request::get("https://localhost/a/%2e%2e/b")
                .body(())
                .unwrap(),
            0,
        )
        .await;
    assert_eq!(s, 400);
    assert!(up.seen().iter().all(|x| !x.target.contains("%2e")));
}

async fn ws_echo_h1(addr: SocketAddr, ca: &std::path::Path, path: &str) -> Result<String, String> {
    let tls = tls_connect(addr, client_config(ca, &[b"http/1.1"]), "localhost")
        .await
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://localhost{path}"), tls)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text("hello over h1"))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(m)) => Ok(m.into_text().map_err(|e| e.to_string())?.to_string()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h1_and_h2_extended_connect() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let extra = format!(
        "websocket = false\n\n[[route]]\nname = \"video\"\nhost = \"localhost\"\npath = \"/ws\"\nupstreams = [\"https://{}\"]\nupstream_ca = \"{{ca}}\"\npublic = true\nwebsocket = true\n",
        up.addr
    );
    let proxy = Proxy::start(&certs, &public_config(up.addr, &extra));

    // HTTP/1.1 Upgrade.
    assert_eq!(
        ws_echo_h1(proxy.addr, &certs.ca(), "/ws").await.unwrap(),
        "hello over h1"
    );

    // HTTP/2 extended CONNECT (RFC 8441) with hyper's ext::Protocol.
    let mut h2 = {
        let s = tls_connect(
            proxy.addr,
            client_config(&certs.ca(), &[b"h2"]),
            "localhost",
        )
        .await
        .unwrap();
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    };
    let mut req = Request::connect("https://localhost/ws")
        .header("sec-websocket-version", "13")
        .body(Full::<Bytes>::default())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "extended CONNECT refused");
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("hello over h2")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello over h2");

    // Refused where the route does not allow WebSocket: h1 and h2.
    up.clear();
    let err = ws_echo_h1(proxy.addr, &certs.ca(), "/other")
        .await
        .unwrap_err();
    assert!(err.contains("403"), "{err}");
    let mut req = Request::connect("https://localhost/other")
        .header("sec-websocket-version", "13")
        .body(Full::<Bytes>::default())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        up.seen().is_empty(),
        "refused upgrades reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_upstream_is_taken_out_and_comes_back() {
    install_provider();
    let certs = Certs::new();
    let a = Upstream::start(&certs).await;
    let b = Upstream::start(&certs).await;
    let cfg = format!(
        r#"[listen]
addr = "127.0.0.1:0"

[tls]
cert = "{{cert}}"
key = "{{key}}"

[[route]]
name = "app"
host = "localhost"
upstreams = ["https://{}", "https://{}"]
upstream_ca = "{{ca}}"
public = true
health = "/healthz"
timeouts = {{ connect = "1s", header = "5s" }}
"#,
        a.addr, b.addr
    );
    let proxy = Proxy::start(&certs, &cfg);
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    let mut get = async |path: &str| {
        let resp = h2
            .send_request(
                Request::get(format!("https://localhost{path}"))
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let port = resp
            .headers()
            .get("x-upstream-port")
            .map(|v| v.to_str().unwrap().to_string());
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        (status, port)
    };
    // Both serve.
    let mut ports = std::collections::HashSet::new();
    for i in 0..10 {
        let (s, p) = get(&format!("/before/{i}")).await;
        assert_eq!(s, 200);
        ports.insert(p.unwrap());
    }
    assert_eq!(ports.len(), 2, "round robin over both upstreams");

    // Kill A mid-run: no idempotent request fails.
    let a_addr = a.addr;
    a.stop();
    drop(a);
    for i in 0..40 {
        let (s, p) = get(&format!("/during/{i}")).await;
        assert_eq!(s, 200, "request {i} failed after an upstream died");
        assert_eq!(p.unwrap(), b.addr.port().to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bring A back on the same address: health checks return it to service.
    let a2 = Upstream::start_on(&certs, a_addr).await;
    let mut back = false;
    for i in 0..100 {
        let (s, p) = get(&format!("/after/{i}")).await;
        assert_eq!(s, 200);
        if p.unwrap() == a_addr.port().to_string() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "restarted upstream never came back into service");
    assert!(!a2.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_gives_503() {
    install_provider();
    let certs = Certs::new();
    let a = Upstream::start(&certs).await;
    let cfg = public_config(a.addr, "health = \"/healthz\"\n");
    let proxy = Proxy::start(&certs, &cfg);
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    a.stop();
    let mut saw_503 = false;
    for _ in 0..60 {
        let resp = h2
            .send_request(
                Request::get("https://localhost/x")
                    .header("accept", "text/html")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let s = resp.status().as_u16();
        assert!(s == 502 || s == 503, "{s}");
        if s == 503 {
            let body = body_string(resp).await;
            assert!(!body.contains(&a.addr.port().to_string()), "{body}");
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_503);
}
