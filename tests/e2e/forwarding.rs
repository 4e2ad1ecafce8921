//! Forwarding failures and refusals: clean pages, no internals, fail closed.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

fn no_internals(body: &str, addr: std::net::SocketAddr) {
    for leak in [
        addr.ip().to_string(),
        addr.port().to_string(),
        "refused".into(),
        "tcp".into(),
        "hyper".into(),
        "error trying".into(),
        "os error".into(),
    ] {
        assert!(
            !body.to_lowercase().contains(&leak),
            "page leaks {leak:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_without_internals() {
    install_provider();
    let certs = Certs::new();
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&certs, &public_config(dead, ""));
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    // The first request finds the upstream down (502) and takes it out of
    // service (passive health); with no other endpoint the next gets 503.
    for (accept, want) in [("text/html", 502), ("application/json", 503)] {
        let resp = h2
            .send_request(
                Request::get("https://localhost/chart/42")
                    .header("accept", accept)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), want);
        assert!(resp.headers().contains_key("strict-transport-security"));
        let body = body_string(resp).await;
        no_internals(&body, dead);
        if accept == "application/json" {
            assert!(body.starts_with('{'), "{body}");
        } else {
            assert!(body.contains("<!doctype html>"), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_gives_504_without_internals() {
    install_provider();
    let certs = Certs::new();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let cfg = public_config(addr, "").replace("header = \"5s\"", "header = \"1s\"");
    let proxy = Proxy::start(&certs, &cfg);
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    let resp = h2
        .send_request(
            Request::get("https://localhost/slow")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    no_internals(&body_string(resp).await, addr);
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_route_is_never_forwarded_without_identity() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let extra = format!(
        "[[route]]\nname = \"ehr\"\nhost = \"ehr.test\"\nupstreams = [\"https://{}\"]\nupstream_ca = \"{{ca}}\"\n",
        up.addr
    );
    let proxy = Proxy::start(&certs, &public_config(up.addr, &extra));
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    for (uri, want) in [
        ("https://ehr.test/chart/42?ssn=123-45-6789", 503),
        ("https://nowhere.test/", 404),
        // The proxy's own prefix is never forwarded, even on a public route.
        ("https://localhost/.dermgate/anything", 404),
        ("https://localhost/x/../.dermgate/jwks.json", 404),
    ] {
        let resp = h2
            .send_request(Request::get(uri).body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{uri}");
    }
    assert!(
        up.seen().is_empty(),
        "a protected route was forwarded: {:?}",
        up.seen()
    );
    // The operational log records the decision but never the query string.
    let log = proxy.log();
    assert!(log.contains("identity_not_configured"), "{log}");
    assert!(
        !log.contains("123-45-6789") && !log.contains("ssn="),
        "query string logged:\n{log}"
    );
}
