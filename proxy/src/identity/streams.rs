//! Live streams (WebSocket, long downloads) stay authorised only while their
//! session is: a watcher checks the sessions that have open streams once a
//! second and cuts the streams of a session that was revoked, logged out or
//! reached its absolute timeout — on every replica, since each replica
//! watches the shared store for its own streams.
//!
//! An open stream counts as activity, so the idle timeout does not cut a
//! video visit in progress; the absolute timeout does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use super::IdentityService;
use super::session::now;

/// Tells one stream to stop.
#[derive(Debug, Default)]
pub struct StreamFlag {
    closed: AtomicBool,
    waker: AtomicWaker,
    notify: Notify,
}

impl StreamFlag {
    /// Whether the stream must stop.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops the stream: wakes a body waiting for data and a spliced socket.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
        self.notify.notify_waiters();
    }

    /// Registers the task polling a body, to be woken by [`close`](Self::close).
    pub fn register(&self, w: &std::task::Waker) {
        self.waker.register(w);
    }

    /// Resolves once the stream must stop.
    pub async fn closed(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

/// Open streams by session id.
#[derive(Debug, Default)]
pub struct LiveStreams {
    map: Mutex<HashMap<String, Vec<Weak<StreamFlag>>>>,
}

impl LiveStreams {
    /// A flag for a new stream of `session`.
    pub fn register(&self, session: &str) -> Arc<StreamFlag> {
        let flag = Arc::new(StreamFlag::default());
        if let Ok(mut m) = self.map.lock() {
            m.entry(session.to_string())
                .or_default()
                .push(Arc::downgrade(&flag));
        }
        flag
    }

    /// Sessions with open streams (forgetting streams that ended).
    fn sessions(&self) -> Vec<String> {
        let Ok(mut m) = self.map.lock() else {
            return Vec::new();
        };
        m.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        m.keys().cloned().collect()
    }

    /// Cuts every open stream of `session`; returns how many.
    pub fn close(&self, session: &str) -> usize {
        let flags = match self.map.lock() {
            Ok(mut m) => m.remove(session).unwrap_or_default(),
            Err(_) => return 0,
        };
        flags
            .iter()
            .filter_map(Weak::upgrade)
            .map(|f| f.close())
            .count()
    }

    /// Number of sessions with open streams.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often sessions with open streams are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Consecutive store failures tolerated before streams are cut (fail closed).
const STORE_FAILURES_TOLERATED: u32 = 3;

/// Runs the watcher until the service is dropped.
pub fn spawn_watcher(service: &Arc<IdentityService>) {
    let weak = Arc::downgrade(service);
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let Some(s) = weak.upgrade() else { return };
            let (_, absolute) = s.timeouts(None);
            let mut store_ok = true;
            for id in s.streams.sessions() {
                let end = match s.sessions.get_fresh(&id).await {
                    Ok(None) => Some("session ended"),
                    Ok(Some(rec)) => (now().saturating_sub(rec.created) >= absolute.as_secs())
                        .then_some("absolute timeout"),
                    Err(_) => {
                        store_ok = false;
                        (failures >= STORE_FAILURES_TOLERATED)
                            .then_some("session store unavailable")
                    }
                };
                if let Some(why) = end {
                    let n = s.streams.close(&id);
                    tracing::info!(streams = n, why, session = %super::session_handle(&id), "live streams closed");
                }
            }
            failures = if store_ok { 0 } else { failures + 1 };
        }
    });
}
