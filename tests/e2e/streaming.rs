//! Bodies stream both ways with back-pressure: 1 GiB each way while the
//! proxy's resident memory stays under 64 MiB; Range passes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::common::*;

const GIB: u64 = 1 << 30;
const RSS_LIMIT: u64 = 64 << 20;

/// Samples the proxy's RSS every 50 ms until stopped; returns the peak.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let h = std::thread::spawn(move || {
        let mut peak = 0;
        while !stop2.load(Ordering::Relaxed) {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    (stop, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_in_bounded_memory() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    let (stop, watcher) = watch_rss(proxy.pid());

    // Download 1 GiB over HTTP/1.1.
    let mut h1 = h1_client::<Full<Bytes>>(proxy.addr, &certs.ca()).await;
    let resp = h1
        .send_request(
            Request::get(format!("/big/download?bytes={GIB}"))
                .header("host", "localhost")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            // Spot-check order: the first byte of every frame is where the pattern says.
            assert_eq!(d[0], (got % 251) as u8, "byte {got} out of order");
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    // Upload 1 GiB over HTTP/2, generated on the fly.
    let mut h2 = {
        let s = tls_connect(
            proxy.addr,
            client_config(&certs.ca(), &[b"h2"]),
            "localhost",
        )
        .await
        .unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        send
    };
    let chunk = Bytes::from(pattern(0, 251 * 261));
    let upload = pattern_body::Chunks {
        sent: 0,
        total: GIB,
        chunk,
    };
    let resp = h2
        .send_request(
            Request::put("https://localhost/big/upload")
                .body(upload)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        body_string(resp).await,
        format!("received {GIB} intact=true")
    );

    stop.store(true, Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    assert!(peak > 0, "could not read the proxy's RSS");
    assert!(peak < RSS_LIMIT, "proxy RSS peaked at {} MiB", peak >> 20);
    eprintln!(
        "proxy RSS peak during 2 GiB of streaming: {:.1} MiB",
        peak as f64 / 1048576.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_pass_through() {
    install_provider();
    let certs = Certs::new();
    let up = Upstream::start(&certs).await;
    let proxy = Proxy::start(&certs, &public_config(up.addr, ""));
    let mut h2 = h2_client(proxy.addr, &certs.ca()).await;
    let resp = h2
        .send_request(
            Request::get("https://localhost/file")
                .header("range", "bytes=1000-1999")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-1999/{FILE_LEN}")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], &pattern(1000, 1000)[..]);
    assert_eq!(up.seen()[0].header("range"), ["bytes=1000-1999"]);
}
