//! The session store's backends against real servers: the same suite on the
//! embedded store and on a real Redis (plain and TLS), and Redis outages.

use std::time::{Duration, Instant};

use dermgate_proxy::store::{Embedded, Redis, SessionStore, StoreError, conformance};

use crate::common::redis::RedisServer;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_pass_the_same_suite() {
    install_provider();
    let dir = TempDir::new("store");
    let embedded = Embedded::open(&dir.path().join("state")).unwrap();
    conformance::run(&embedded, "suite:").await.unwrap();

    let redis = RedisServer::start();
    let r = Redis::connect(&redis.url(), None).await.unwrap();
    conformance::run(&r, "suite:").await.unwrap();

    // rediss:// with the practice's own CA.
    let certs = Certs::new();
    let tls = RedisServer::start_tls(certs.server_cert(), certs.server_key(), certs.ca());
    let r = Redis::connect(&tls.url(), Some(&certs.ca())).await.unwrap();
    conformance::run(&r, "tls:").await.unwrap();
    // Without trusting that CA the connection is refused.
    assert!(Redis::connect(&tls.url(), None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_by_itself() {
    install_provider();
    let mut redis = RedisServer::start();
    let r = Redis::connect(&redis.url(), None).await.unwrap();
    r.put("k", b"v", None).await.unwrap();
    redis.kill();
    let t = Instant::now();
    let err = r.get("k").await;
    assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "fails fast: {:?}",
        t.elapsed()
    );
    redis.restart();
    let t = Instant::now();
    loop {
        if r.put("k2", b"v2", None).await.is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "reconnects by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.get("k2").await.unwrap(), Some(b"v2".to_vec()));
}
