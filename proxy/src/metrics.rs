//! Prometheus metrics, lock-free on the request path.
//!
//! Every counter is an atomic in a structure made when the route is compiled
//! (per route) or at start (global), so recording a request is a handful of
//! relaxed atomic adds: no lock, no allocation, no label lookup. Rendering the
//! text exposition happens only when `/metrics` is scraped.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Protocols as metric labels.
pub const PROTOS: [&str; 4] = ["h1", "h2", "h3", "ws"];

/// Status codes with a slot of their own; others count under their class (`2xx`…).
const CODES: [u16; 22] = [
    101, 200, 201, 204, 206, 301, 302, 304, 308, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500,
    502, 503, 504,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATUS_SLOTS: usize = CODES.len() + CLASSES.len();

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Reasons a request or connection was refused, as metric labels. Unknown labels count as `other`.
pub const REASONS: &[&str] = &[
    "not_origin_form",
    "encoded_separator",
    "backslash",
    "encoded_dot_segment",
    "dot_segment_parameters",
    "escapes_root",
    "control_character",
    "invalid_utf8",
    "bad_percent_encoding",
    "double_encoding",
    "missing_host",
    "duplicate_host",
    "bad_host",
    "host_mismatch",
    "length_and_transfer_encoding",
    "bad_content_length",
    "method_not_allowed",
    "no_route",
    "reserved_path",
    "identity_not_configured",
    "default_deny",
    "login_required",
    "mfa_required",
    "device_unknown",
    "device_not_managed",
    "device_disk_not_encrypted",
    "device_no_screen_lock",
    "device_checkin_stale",
    "device_os_not_allowed",
    "device_os_outdated",
    "outside_hours",
    "network_not_allowed",
    "break_glass_required",
    "not_permitted",
    "rate_limited",
    "connection_limit",
    "header_too_large",
    "malformed_request",
    "header_timeout",
    "body_too_large",
    "websocket_not_allowed",
    "no_healthy_upstream",
    "upstream_unavailable",
    "upstream_timeout",
    "untrusted_proxy_header",
    "bad_proxy_header",
    "internal",
    "audit_unavailable",
    "digest_mismatch",
    "bad_digest",
    "other",
];

/// TLS handshake failure reasons.
pub const TLS_REASONS: &[&str] = &[
    "protocol_version",
    "no_application_protocol",
    "plaintext",
    "timeout",
    "peer_misbehaved",
    "other",
];

fn status_slot(code: u16) -> usize {
    match CODES.iter().position(|&c| c == code) {
        Some(i) => i,
        None => CODES.len() + usize::from(code / 100).clamp(1, 5) - 1,
    }
}

fn status_label(slot: usize) -> String {
    match CODES.get(slot) {
        Some(c) => c.to_string(),
        None => CLASSES[slot - CODES.len()].to_string(),
    }
}

/// One route's counters.
#[derive(Debug)]
pub struct RouteMetrics {
    requests: [[AtomicU64; STATUS_SLOTS]; PROTOS.len()],
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

impl RouteMetrics {
    /// Records a finished request head.
    pub fn request(&self, proto: usize, status: u16, elapsed: Duration) {
        if let Some(row) = self.requests.get(proto) {
            row[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        }
        // One bucket per request (the first bound it fits under); the
        // cumulative counts Prometheus wants are summed when scraped.
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds body bytes.
    pub fn bytes(&self, inbound: u64, outbound: u64) {
        self.bytes_in.fetch_add(inbound, Ordering::Relaxed);
        self.bytes_out.fetch_add(outbound, Ordering::Relaxed);
    }
}

/// All metrics of a process.
#[derive(Debug)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    unrouted: Arc<RouteMetrics>,
    open_connections: [AtomicI64; PROTOS.len()],
    refused: [AtomicU64; 64],
    tls_failures: [AtomicU64; 8],
    upstream_healthy: Mutex<HashMap<String, Arc<AtomicI64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            routes: Mutex::default(),
            unrouted: Arc::default(),
            open_connections: std::array::from_fn(|_| AtomicI64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            tls_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_healthy: Mutex::default(),
        }
    }
}

impl Metrics {
    /// The counters of route `name`, created once and kept across reloads.
    /// Takes a lock: call at compile time, never per request.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// Counters for requests refused before a route was known.
    pub fn unrouted(&self) -> &RouteMetrics {
        &self.unrouted
    }

    /// A gauge for one upstream endpoint's health (1 healthy, 0 not). Compile time only.
    pub fn upstream_gauge(&self, route: &str, endpoint: &str) -> Arc<AtomicI64> {
        let mut m = self
            .upstream_healthy
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.entry(format!("route=\"{route}\",upstream=\"{endpoint}\""))
            .or_insert_with(|| Arc::new(AtomicI64::new(1)))
            .clone()
    }

    /// A connection of protocol index `proto` opened (+1) or closed (-1).
    pub fn connection(&self, proto: usize, delta: i64) {
        if let Some(g) = self.open_connections.get(proto) {
            g.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// A request or connection was refused for `reason` (one of [`REASONS`]).
    pub fn refused(&self, reason: &str) {
        let i = REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REASONS.len() - 1);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake failed for `reason` (one of [`TLS_REASONS`]).
    pub fn tls_failure(&self, reason: &str) {
        let i = TLS_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(TLS_REASONS.len() - 1);
        self.tls_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let routes: Vec<(String, Arc<RouteMetrics>)> = {
            let m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.push((String::new(), self.unrouted.clone()));
            v
        };
        let _ = writeln!(
            out,
            "# HELP dermgate_requests_total Requests by route, status and protocol.\n# TYPE dermgate_requests_total counter"
        );
        for (name, m) in &routes {
            for (p, row) in m.requests.iter().enumerate() {
                for (slot, c) in row.iter().enumerate() {
                    let n = c.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "dermgate_requests_total{{route=\"{name}\",status=\"{}\",protocol=\"{}\"}} {n}",
                            status_label(slot),
                            PROTOS[p]
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_request_duration_seconds Time to the response head.\n# TYPE dermgate_request_duration_seconds histogram"
        );
        for (name, m) in &routes {
            let count = m.latency_count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += m.latency_buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "dermgate_request_duration_seconds_bucket{{route=\"{name}\",le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "dermgate_request_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {count}\n\
                 dermgate_request_duration_seconds_sum{{route=\"{name}\"}} {}\n\
                 dermgate_request_duration_seconds_count{{route=\"{name}\"}} {count}",
                m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_body_bytes_total Body bytes by route and direction.\n# TYPE dermgate_body_bytes_total counter"
        );
        for (name, m) in &routes {
            for (dir, c) in [("in", &m.bytes_in), ("out", &m.bytes_out)] {
                let _ = writeln!(
                    out,
                    "dermgate_body_bytes_total{{route=\"{name}\",direction=\"{dir}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_open_connections Open client connections by protocol.\n# TYPE dermgate_open_connections gauge"
        );
        for (p, g) in self.open_connections.iter().enumerate() {
            let _ = writeln!(
                out,
                "dermgate_open_connections{{protocol=\"{}\"}} {}",
                PROTOS[p],
                g.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_tls_handshake_failures_total Failed TLS handshakes by reason.\n# TYPE dermgate_tls_handshake_failures_total counter"
        );
        for (i, r) in TLS_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "dermgate_tls_handshake_failures_total{{reason=\"{r}\"}} {}",
                self.tls_failures[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_refused_total Refused requests and connections by reason.\n# TYPE dermgate_refused_total counter"
        );
        for (i, r) in REASONS.iter().enumerate() {
            let n = self.refused[i].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "dermgate_refused_total{{reason=\"{r}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_upstream_healthy Upstream endpoint health (1 healthy).\n# TYPE dermgate_upstream_healthy gauge"
        );
        let gauges = self
            .upstream_healthy
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut g: Vec<_> = gauges.iter().collect();
        g.sort_by(|a, b| a.0.cmp(b.0));
        for (labels, v) in g {
            let _ = writeln!(
                out,
                "dermgate_upstream_healthy{{{labels}}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        let r = m.route("ehr");
        r.request(1, 200, Duration::from_millis(3));
        r.request(1, 299, Duration::from_millis(3));
        m.refused("rate_limited");
        m.refused("no-such-reason");
        m.tls_failure("protocol_version");
        let text = m.render();
        assert!(
            text.contains(
                "dermgate_requests_total{route=\"ehr\",status=\"200\",protocol=\"h2\"} 1"
            )
        );
        assert!(text.contains("status=\"2xx\""));
        assert!(text.contains("dermgate_refused_total{reason=\"rate_limited\"} 1"));
        assert!(text.contains("dermgate_refused_total{reason=\"other\"} 1"));
        assert!(
            text.contains("dermgate_tls_handshake_failures_total{reason=\"protocol_version\"} 1")
        );
        assert!(text.contains("le=\"0.005\"} 2"));
    }
}
