//! Active health checks, and readiness.
//!
//! Every few seconds each route with a `health` path has its endpoints
//! checked (`UpstreamPool::check_health`); passive health (a failed
//! connection takes an endpoint out for a while) lives in the pool itself.
//! The proxy reports ready once the first round has run, so a load balancer
//! does not send traffic before the proxy knows which upstreams are alive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::pipeline::Shared;

/// Time between rounds of active checks.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Runs health checks forever.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let snapshot = shared.snapshot.load_full();
        for r in snapshot
            .list
            .iter()
            .filter(|r| r.upstream.has_health_check())
        {
            r.upstream.check_health().await;
        }
        if !shared.ready.swap(true, Ordering::Relaxed) {
            tracing::info!("ready");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
