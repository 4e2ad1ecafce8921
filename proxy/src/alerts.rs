//! Alerts (DESIGN.md section 6): break-the-glass use, a user's image-export
//! volume over `alerts.export_bytes` within `alerts.export_window`, repeated
//! MFA failures for one user or one source, encryption failures (an upstream
//! TLS handshake failure, a refused plaintext or old-TLS attempt, a
//! certificate near expiry) and an audit trail that cannot be written.
//!
//! An alert is delivered three ways: a high-severity audit `event` record
//! (`alert: true`), the Prometheus counter `dermgate_alerts_total{kind}`, and,
//! with `[alerts] webhook`, a JSON POST over TLS 1.3 signed with HMAC-SHA256
//! (`X-Dermgate-Signature: sha256=<hex>` over the exact body). The webhook is
//! sent from its own task through a bounded queue: it is retried with
//! back-off and never blocks a request. Repeats of one alert for the same
//! subject are held back for a quiet period, so a scanner cannot flood the
//! receiver.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use crate::audit::{Audit, Record};
use crate::config::AlertsConfig;

/// Alert kinds (the `event` of the audit record and the metric label).
pub const KINDS: &[&str] = &[
    "break_glass",
    "export_volume",
    "mfa_failures",
    "upstream_tls",
    "plaintext_refused",
    "old_tls_refused",
    "cert_expiry",
    "audit_unwritable",
];

/// The same alert for the same subject is not repeated within this.
const QUIET: Duration = Duration::from_secs(600);
/// Keys kept by the volume and failure counters before idle ones are pruned.
const MAX_TRACKED: usize = 10_000;
const WEBHOOK_QUEUE: usize = 1024;
const WEBHOOK_ATTEMPTS: u32 = 6;

/// One alert.
#[derive(Debug, Clone, Default)]
pub struct Alert {
    /// One of [`KINDS`].
    pub kind: &'static str,
    /// The user concerned.
    pub sub: Option<String>,
    /// The client address concerned.
    pub src: Option<String>,
    /// The route concerned.
    pub route: Option<String>,
    /// What happened, for a person (never a secret).
    pub detail: String,
}

/// A sliding window of amounts.
#[derive(Debug, Default)]
struct Window {
    events: VecDeque<(Instant, u64)>,
    sum: u64,
}

impl Window {
    fn add(&mut self, now: Instant, amount: u64, window: Duration) -> u64 {
        self.events.push_back((now, amount));
        self.sum = self.sum.saturating_add(amount);
        while let Some(&(t, a)) = self.events.front() {
            if now.duration_since(t) <= window {
                break;
            }
            self.sum = self.sum.saturating_sub(a);
            self.events.pop_front();
        }
        self.sum
    }
}

#[derive(Debug, Default)]
struct Counters {
    windows: HashMap<String, Window>,
}

impl Counters {
    fn add(&mut self, key: &str, now: Instant, amount: u64, window: Duration) -> u64 {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(key) {
            self.windows.retain(|_, w| {
                w.events
                    .back()
                    .is_some_and(|(t, _)| now.duration_since(*t) <= window)
            });
        }
        self.windows
            .entry(key.to_string())
            .or_default()
            .add(now, amount, window)
    }

    fn reset(&mut self, key: &str) {
        self.windows.remove(key);
    }
}

/// Raises alerts. One per process, shared by every connection.
pub struct Alerts {
    cfg: AlertsConfig,
    audit: Option<Audit>,
    raised: [AtomicU64; KINDS.len()],
    webhook_failures: AtomicU64,
    /// Alerts held back because too many distinct subjects raised them at once.
    suppressed: AtomicU64,
    webhook: Option<tokio::sync::mpsc::Sender<Alert>>,
    export: Mutex<Counters>,
    mfa: Mutex<Counters>,
    quiet: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("webhook", &self.cfg.webhook.is_some())
            .finish()
    }
}

/// Why the webhook could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("alerts: {0}")]
pub struct AlertsError(String);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Alerts {
    /// Alerts without a webhook (audit record, counter and log line only).
    pub fn new(cfg: AlertsConfig, audit: Option<Audit>) -> Self {
        Self {
            cfg,
            audit,
            raised: std::array::from_fn(|_| AtomicU64::new(0)),
            webhook_failures: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            webhook: None,
            export: Mutex::default(),
            mfa: Mutex::default(),
            quiet: Mutex::default(),
        }
    }

    /// Alerts with the webhook of `cfg` (its sender task is spawned on the
    /// current Tokio runtime). `keys_dir` holds the default signing key.
    pub fn start(
        cfg: &AlertsConfig,
        keys_dir: Option<&Path>,
        audit: Option<Audit>,
    ) -> Result<Arc<Self>, AlertsError> {
        let mut me = Self::new(cfg.clone(), audit);
        let Some(url) = cfg.webhook.clone() else {
            return Ok(Arc::new(me));
        };
        let secret = match (&cfg.webhook_secret_file, keys_dir) {
            (Some(f), _) => std::fs::read(f)
                .map_err(|e| AlertsError(format!("{}: {e}", f.display())))?
                .trim_ascii()
                .to_vec(),
            (None, Some(dir)) => {
                let path = dir.join("alerts-webhook.key");
                crate::keys::load_or_create(&path, || {
                    crate::keys::token(32).map(String::into_bytes)
                })
                .map_err(|e| AlertsError(format!("{}: {e}", path.display())))?
                .trim_ascii()
                .to_vec()
            }
            (None, None) => {
                return Err(AlertsError(
                    "the webhook needs webhook_secret_file or [keys] dir".into(),
                ));
            }
        };
        if secret.len() < 16 {
            return Err(AlertsError(
                "the webhook signing secret must be at least 16 bytes".into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .https_only(true)
            .min_tls_version(reqwest::tls::Version::TLS_1_3);
        if let Some(ca) = &cfg.webhook_ca {
            let pem =
                std::fs::read(ca).map_err(|e| AlertsError(format!("{}: {e}", ca.display())))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AlertsError(format!("{}: {e}", ca.display())))?
            {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| AlertsError(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(WEBHOOK_QUEUE);
        me.webhook = Some(tx);
        let me = Arc::new(me);
        let hook = Webhook {
            client,
            url: url.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            host: crate::syslog::hostname(),
        };
        tokio::spawn(hook.run(rx, Arc::downgrade(&me)));
        Ok(me)
    }

    /// The thresholds in force.
    pub fn config(&self) -> &AlertsConfig {
        &self.cfg
    }

    /// Raises `alert` unless the same one was raised for the same subject within the quiet period.
    pub fn raise(&self, alert: Alert) {
        let key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            alert.kind,
            alert.sub.as_deref().unwrap_or(""),
            alert.src.as_deref().unwrap_or(""),
            alert.route.as_deref().unwrap_or("")
        );
        let now = Instant::now();
        {
            let mut q = lock(&self.quiet);
            if q.get(&key).is_some_and(|t| now.duration_since(*t) < QUIET) {
                return;
            }
            if q.len() >= MAX_TRACKED {
                q.retain(|_, t| now.duration_since(*t) < QUIET);
                // Still full: a flood of distinct subjects. Count it, do not grow.
                if q.len() >= MAX_TRACKED {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            q.insert(key, now);
        }
        self.raise_now(alert);
    }

    /// Raises `alert` every time (break-the-glass: each use is its own alert).
    pub fn raise_now(&self, alert: Alert) {
        if let Some(i) = KINDS.iter().position(|k| *k == alert.kind) {
            self.raised[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            target: "dermgate::audit",
            alert = alert.kind,
            sub = alert.sub.as_deref().unwrap_or(""),
            src = alert.src.as_deref().unwrap_or(""),
            route = alert.route.as_deref().unwrap_or(""),
            detail = %alert.detail,
            "ALERT"
        );
        if let Some(a) = &self.audit {
            let mut r = Record::new("event");
            r.event = Some(alert.kind.to_string());
            r.sub = alert.sub.clone();
            r.src = alert.src.clone();
            r.route = alert.route.clone();
            r.reason = Some(alert.detail.clone());
            r.alert = Some(true);
            a.record(r);
        }
        if let Some(tx) = &self.webhook
            && tx.try_send(alert).is_err()
        {
            self.webhook_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("alert webhook queue full: alert kept in the audit trail only");
        }
    }

    /// Adds a finished download of `bytes` by `sub` on integrity route `route`;
    /// raises `export_volume` when the user's window passes `export_bytes`.
    pub fn exported(&self, sub: &str, route: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let now = Instant::now();
        let total = lock(&self.export).add(sub, now, bytes, self.cfg.export_window);
        if total > self.cfg.export_bytes {
            self.raise(Alert {
                kind: "export_volume",
                sub: Some(sub.to_string()),
                route: Some(route.to_string()),
                detail: format!(
                    "{total} bytes of images downloaded within {} (threshold {} bytes)",
                    human(self.cfg.export_window),
                    self.cfg.export_bytes
                ),
                ..Alert::default()
            });
        }
    }

    /// Counts a failed step-up code for `sub` from `src`; raises `mfa_failures`
    /// at `mfa_failures` within `mfa_window`, for the user or for the source.
    pub fn mfa_failed(&self, sub: &str, src: &str) {
        let now = Instant::now();
        let (by_user, by_src) = {
            let mut c = lock(&self.mfa);
            let w = self.cfg.mfa_window;
            (
                c.add(&format!("u:{sub}"), now, 1, w),
                c.add(&format!("s:{src}"), now, 1, w),
            )
        };
        let n = self.cfg.mfa_failures;
        if by_user >= n {
            lock(&self.mfa).reset(&format!("u:{sub}"));
            self.raise_now(Alert {
                kind: "mfa_failures",
                sub: Some(sub.to_string()),
                src: Some(src.to_string()),
                detail: format!(
                    "{by_user} failed step-up codes for this user within {}",
                    human(self.cfg.mfa_window)
                ),
                ..Alert::default()
            });
        } else if by_src >= n {
            lock(&self.mfa).reset(&format!("s:{src}"));
            self.raise_now(Alert {
                kind: "mfa_failures",
                src: Some(src.to_string()),
                detail: format!(
                    "{by_src} failed step-up codes from this address within {}",
                    human(self.cfg.mfa_window)
                ),
                ..Alert::default()
            });
        }
    }

    /// Checks certificate files (server certificates, upstream CAs) for
    /// expiry within `cert_warning`; raises `cert_expiry` for each.
    pub fn check_certificates(&self, files: &[std::path::PathBuf]) {
        let now = jiff::Timestamp::now();
        for f in files {
            let Ok(pem) = std::fs::read(f) else { continue };
            for (subject, not_after) in crate::certs::expiries(&pem) {
                let left = not_after.duration_since(now);
                let secs = left.as_secs();
                if secs < self.cfg.cert_warning.as_secs() as i64 {
                    let detail = if secs <= 0 {
                        format!(
                            "certificate {subject} in {} expired on {not_after}",
                            f.display()
                        )
                    } else {
                        format!(
                            "certificate {subject} in {} expires on {not_after} (in {} days)",
                            f.display(),
                            secs / 86_400
                        )
                    };
                    self.raise(Alert {
                        kind: "cert_expiry",
                        route: None,
                        detail,
                        ..Alert::default()
                    });
                }
            }
        }
    }

    /// `dermgate_alerts_total` and `dermgate_alert_webhook_failures_total`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP dermgate_alerts_total Alerts raised by kind.\n# TYPE dermgate_alerts_total counter"
        );
        for (i, k) in KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "dermgate_alerts_total{{kind=\"{k}\"}} {}",
                self.raised[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP dermgate_alert_webhook_failures_total Alerts the webhook could not deliver.\n# TYPE dermgate_alert_webhook_failures_total counter\ndermgate_alert_webhook_failures_total {}",
            self.webhook_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP dermgate_alerts_suppressed_total Alerts held back during a flood of distinct subjects.\n# TYPE dermgate_alerts_suppressed_total counter\ndermgate_alerts_suppressed_total {}",
            self.suppressed.load(Ordering::Relaxed)
        );
    }
}

/// `90s`, `15m`, `1h`, `2d`: a duration as people write it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86_400) && s > 0 => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) && s > 0 => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) && s > 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

struct Webhook {
    client: reqwest::Client,
    url: String,
    key: hmac::Key,
    host: String,
}

#[derive(serde::Serialize)]
struct Payload<'a> {
    id: String,
    ts: String,
    severity: &'static str,
    kind: &'a str,
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    detail: &'a str,
}

impl Webhook {
    async fn run(
        self,
        mut rx: tokio::sync::mpsc::Receiver<Alert>,
        alerts: std::sync::Weak<Alerts>,
    ) {
        while let Some(a) = rx.recv().await {
            let payload = Payload {
                id: crate::keys::token(12).unwrap_or_default(),
                ts: crate::audit::now_ts(),
                severity: "high",
                kind: a.kind,
                host: &self.host,
                sub: a.sub.as_deref(),
                src: a.src.as_deref(),
                route: a.route.as_deref(),
                // A break-the-glass justification is free text that may name a
                // patient: it stays in the audit trail, not with a third party.
                detail: if a.kind == "break_glass" {
                    "break-the-glass elevation opened; the justification is in the audit trail"
                } else {
                    &a.detail
                },
            };
            let Ok(body) = serde_json::to_vec(&payload) else {
                continue;
            };
            let sig = hex::encode(hmac::sign(&self.key, &body).as_ref());
            let mut delay = Duration::from_millis(500);
            let mut delivered = false;
            for attempt in 1..=WEBHOOK_ATTEMPTS {
                let sent = self
                    .client
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .header("x-dermgate-signature", format!("sha256={sig}"))
                    .header("x-dermgate-alert-id", payload.id.as_str())
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(r) => tracing::warn!(
                        status = r.status().as_u16(),
                        attempt,
                        "alert webhook refused the alert; retrying"
                    ),
                    Err(e) => {
                        // Without the URL: a webhook's path may be its secret.
                        tracing::warn!(error = %crate::forward::error_chain(&e.without_url()), attempt, "alert webhook unreachable; retrying")
                    }
                }
                if attempt < WEBHOOK_ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            if !delivered {
                tracing::error!(
                    kind = a.kind,
                    "alert webhook gave up; the alert is in the audit trail"
                );
                if let Some(me) = alerts.upgrade() {
                    me.webhook_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_amounts() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert_eq!(w.add(t0, 10, Duration::from_secs(60)), 10);
        assert_eq!(
            w.add(t0 + Duration::from_secs(30), 5, Duration::from_secs(60)),
            15
        );
        assert_eq!(
            w.add(t0 + Duration::from_secs(85), 1, Duration::from_secs(60)),
            6
        );
    }

    #[test]
    fn export_volume_raises_once_per_quiet_period() {
        let cfg = AlertsConfig {
            export_bytes: 100,
            ..AlertsConfig::default()
        };
        let a = Alerts::new(cfg, None);
        a.exported("dr", "imaging", 60);
        assert_eq!(a.raised[1].load(Ordering::Relaxed), 0);
        a.exported("dr", "imaging", 60);
        a.exported("dr", "imaging", 60);
        assert_eq!(a.raised[1].load(Ordering::Relaxed), 1);
        a.exported("other", "imaging", 60);
        assert_eq!(a.raised[1].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn mfa_failures_by_user_and_by_source() {
        let cfg = AlertsConfig {
            mfa_failures: 3,
            ..AlertsConfig::default()
        };
        let a = Alerts::new(cfg, None);
        for _ in 0..3 {
            a.mfa_failed("dr", "10.0.0.1");
        }
        assert_eq!(a.raised[2].load(Ordering::Relaxed), 1);
        // Three users from one address.
        for u in ["a", "b", "c"] {
            a.mfa_failed(u, "10.0.0.9");
        }
        assert_eq!(a.raised[2].load(Ordering::Relaxed), 2);
        let mut out = String::new();
        a.render(&mut out);
        assert!(out.contains("dermgate_alerts_total{kind=\"mfa_failures\"} 2"));
    }
}
