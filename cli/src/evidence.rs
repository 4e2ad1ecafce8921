//! `dermgate evidence`: the HIPAA technical-safeguards evidence report
//! (DESIGN.md "Evidence"), measured from the audit trail and the running
//! configuration, never asserted.
//!
//! Three stages: [`gather`] reads the trail (through [`crate::audit_read`]),
//! verifies its chain (`dermgate_proxy::audit_verify`), and looks at the
//! configuration, key files and certificates, into one [`Evidence`] value;
//! [`Evidence::safeguards`] turns that into measures grouped under 45 CFR
//! 164.312 (a)–(e), each with a status; the terminal table, the JSON for a GRC
//! tool and the one-page HTML report are renderings of the same value. What is
//! not built (device posture) is reported as not measured, never as a number.
//! Nothing secret is read: key files are looked at by their modification time
//! only.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dermgate_proxy::audit_verify;
use dermgate_proxy::config::Config;
use jiff::Timestamp;
use serde::Serialize;

use crate::audit_read::{self, ANONYMOUS, Entry, Skipped, human_time};

/// Certificates expiring sooner than this are an exception.
const EXPIRY_WARNING_DAYS: i64 = 30;
/// Lists in the terminal and HTML renderings stop after this many items.
const MAX_DETAILS: usize = 8;
/// The events that give a signed-in session MFA after its login.
const STEP_UP_EVENTS: [&str; 2] = ["step_up", "totp_enrolled"];

/// How a measure came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Meets the requirement.
    Pass,
    /// A number for the record; no requirement attached.
    Info,
    /// Not built or not configured, so not measured.
    NotMeasured,
    /// An accepted deviation (public route, plaintext leg), listed for review.
    Exception,
    /// Does not meet the requirement.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Info => "INFO",
            Status::NotMeasured => "NOT MEASURED",
            Status::Exception => "EXCEPTION",
            Status::Fail => "FAIL",
        }
    }
    fn class(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Info => "info",
            Status::NotMeasured => "not-measured",
            Status::Exception => "exception",
            Status::Fail => "fail",
        }
    }
}

/// The report period.
#[derive(Debug, Clone, Serialize)]
pub struct Period {
    /// As given (`30d`, or a time).
    pub label: String,
    /// Start (RFC 3339).
    pub since: String,
    /// End: when the report was made (RFC 3339).
    pub until: String,
}

/// Requests in the period (from `decision` and `complete` records).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Requests {
    /// Decision records.
    pub total: u64,
    /// Allowed.
    pub allowed: u64,
    /// Denied.
    pub denied: u64,
    /// Denied, by reason.
    pub denials_by_reason: BTreeMap<String, u64>,
    /// By how the user was identified (`session`, `bearer`, `anonymous`).
    pub by_auth: BTreeMap<String, u64>,
    /// By TLS version.
    pub by_tls: BTreeMap<String, u64>,
    /// Over TLS 1.3.
    pub tls13: u64,
    /// `tls13 / total` (null without requests).
    pub tls13_share: Option<f64>,
    /// By protocol (`h1`, `h2`, `h3`, `ws`).
    pub by_proto: BTreeMap<String, u64>,
    /// Over HTTP/3.
    pub h3: u64,
    /// `h3 / total` (null without requests).
    pub h3_share: Option<f64>,
    /// Requests of a signed-in user or a bearer token.
    pub authenticated: u64,
    /// Of those, with an MFA method in `amr`.
    pub authenticated_with_mfa: u64,
    /// Completed transfers on `integrity = true` routes.
    pub integrity_transfers: u64,
    /// Of those, with a SHA-256 of the body in the record.
    pub integrity_hashed: u64,
}

/// Sign-ins in the period (from `event` records).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sessions {
    /// `[oidc]` is configured.
    pub identity_configured: bool,
    /// Sessions started (`login` events).
    pub sessions: u64,
    /// Of those, with MFA at sign-in or by a later step-up of the same user.
    pub with_mfa: u64,
    /// `with_mfa / sessions` (null without sessions).
    pub mfa_share: Option<f64>,
    /// Sessions by MFA method (`none` for none; `totp (step-up)` when added later).
    pub by_method: BTreeMap<String, u64>,
    /// Step-up events (`step_up`, `totp_enrolled` at sign-in).
    pub step_ups: u64,
    /// `login_failed` events.
    pub login_failures: u64,
    /// `mfa_failure` events.
    pub mfa_failures: u64,
    /// `mfa_lockout` events.
    pub mfa_lockouts: u64,
    /// `[session] idle`.
    pub idle: Option<String>,
    /// `[session] absolute`.
    pub absolute: Option<String>,
}

/// One break-the-glass elevation.
#[derive(Debug, Clone, Serialize)]
pub struct Elevation {
    /// When (RFC 3339).
    pub ts: String,
    /// Who, when the record names them.
    pub sub: Option<String>,
    /// Route.
    pub route: Option<String>,
    /// The stated justification.
    pub justification: String,
}

/// Break-the-glass in the period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BreakGlass {
    /// Elevations opened (`break_glass` events), with their justifications.
    pub elevations: Vec<Elevation>,
    /// Requests allowed only by an elevation (`break_glass_use`), per user.
    pub requests_by_user: BTreeMap<String, u64>,
    /// Requests refused at the justification form (`break_glass_refused`).
    pub refused: u64,
}

/// One key file (by its modification time; never its contents).
#[derive(Debug, Clone, Serialize)]
pub struct KeyFile {
    /// Path.
    pub file: String,
    /// Last changed (RFC 3339).
    pub modified: Option<String>,
    /// Days since.
    pub age_days: Option<i64>,
}

/// One key rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// When (RFC 3339).
    pub ts: String,
    /// What was rotated.
    pub detail: String,
}

/// Keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Keys {
    /// `[keys] dir`.
    pub dir: Option<String>,
    /// Key files.
    pub files: Vec<KeyFile>,
    /// `key_rotation` events in the period.
    pub rotations: Vec<Rotation>,
}

/// Device posture.
#[derive(Debug, Clone, Serialize)]
pub struct Posture {
    /// Whether it was measured.
    pub measured: bool,
    /// Why not.
    pub note: String,
}

/// A route named in the report.
#[derive(Debug, Clone, Serialize)]
pub struct RouteRef {
    /// Name.
    pub name: String,
    /// Host.
    pub host: String,
    /// Path prefix.
    pub path: String,
}

/// One leg from the proxy to an upstream.
#[derive(Debug, Clone, Serialize)]
pub struct Leg {
    /// Route.
    pub route: String,
    /// Upstream URI.
    pub upstream: String,
    /// TLS to the upstream.
    pub encrypted: bool,
    /// The CA its certificate is verified against.
    pub verified_against: Option<String>,
    /// A plaintext leg (`allow_plaintext = true`).
    pub exception: bool,
}

/// One certificate.
#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    /// File.
    pub file: String,
    /// What it is for.
    pub role: String,
    /// Subject (empty when unreadable).
    pub subject: String,
    /// The subject's common name (else the whole subject).
    pub name: String,
    /// Not valid after (RFC 3339).
    pub not_after: Option<String>,
    /// Days left (negative: expired).
    pub days_left: Option<i64>,
    /// Expired or unreadable: fail; under 30 days: exception.
    pub status: Status,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// The audit chain's verification.
#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    /// Nothing was tampered with or lost.
    pub intact: bool,
    /// Checkpoint signatures were checked (the public key was found).
    pub signatures_checked: bool,
    /// The verifier's report.
    pub report: audit_verify::Report,
}

/// The audit trail.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditFacts {
    /// `[audit]` is configured.
    pub configured: bool,
    /// The current file.
    pub file: Option<String>,
    /// Files in the trail.
    pub files: usize,
    /// Records in the period.
    pub records_in_period: u64,
    /// The oldest record held (RFC 3339).
    pub oldest_record: Option<String>,
    /// Its age in days.
    pub oldest_age_days: Option<i64>,
    /// `[audit] retain`.
    pub retain: Option<String>,
    /// The chain's verification (whole trail, not only the period).
    pub chain: Option<Chain>,
    /// Alerts raised in the period, by kind (records with `alert = true`).
    pub alerts: BTreeMap<String, u64>,
    /// Lines in the period's files that were not records.
    pub skipped: Vec<Skipped>,
    /// Why the trail could not be read, if it could not.
    pub error: Option<String>,
}

/// One measure of a safeguard.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    /// What is measured.
    pub label: String,
    /// The result.
    pub value: String,
    /// How it came out.
    pub status: Status,
    /// Supporting lines.
    pub details: Vec<String>,
}

/// One safeguard of 45 CFR 164.312 with its measures.
#[derive(Debug, Clone, Serialize)]
pub struct Safeguard {
    /// `164.312(a)`.
    pub code: &'static str,
    /// `Access control`.
    pub title: &'static str,
    /// Its measures.
    pub measures: Vec<Measure>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// What this is.
    pub report: &'static str,
    /// When it was made (RFC 3339).
    pub generated: String,
    /// The period of the trail's numbers.
    pub period: Period,
    /// The configuration read.
    pub config: String,
    /// `fail` when any measure failed, else `pass`.
    pub status: Status,
    /// Requests.
    pub requests: Requests,
    /// Sign-ins and MFA.
    pub sessions: Sessions,
    /// Break-the-glass.
    pub break_glass: BreakGlass,
    /// Keys.
    pub keys: Keys,
    /// Device posture.
    pub device_posture: Posture,
    /// Routes served without identity.
    pub public_routes: Vec<RouteRef>,
    /// Routes that hash bodies into the trail.
    pub integrity_routes: Vec<String>,
    /// Legs to upstreams.
    pub upstream_legs: Vec<Leg>,
    /// Certificates.
    pub certificates: Vec<Certificate>,
    /// The audit trail.
    pub audit: AuditFacts,
    /// Measures by safeguard (what the terminal and HTML show).
    pub safeguards: Vec<Safeguard>,
}

/// Counts the trail's records of the period.
#[derive(Default)]
struct Tally {
    requests: Requests,
    sessions: Sessions,
    break_glass: BreakGlass,
    rotations: Vec<Rotation>,
    alerts: BTreeMap<String, u64>,
    records: u64,
    /// Sign-ins without MFA per user, waiting for a step-up.
    without_mfa: HashMap<String, u64>,
}

impl Tally {
    fn add(&mut self, e: &Entry, mfa_amr: &[String], integrity: &[String]) {
        self.records += 1;
        if e.alert == Some(true) {
            let what = e.event.clone().unwrap_or_else(|| e.kind.clone());
            *self.alerts.entry(what).or_default() += 1;
        }
        match e.kind.as_str() {
            "decision" => self.decision(e, mfa_amr),
            // A transfer that ended in an upstream failure has no body to hash.
            "complete"
                if e.route.as_ref().is_some_and(|r| integrity.contains(r))
                    && e.reason.is_none() =>
            {
                self.requests.integrity_transfers += 1;
                if e.sha256.is_some() {
                    self.requests.integrity_hashed += 1;
                }
            }
            "event" => self.event(e),
            _ => {}
        }
    }

    fn decision(&mut self, e: &Entry, mfa_amr: &[String]) {
        let r = &mut self.requests;
        r.total += 1;
        if e.decision.as_deref() == Some("deny") {
            r.denied += 1;
            let reason = e.reason.clone().unwrap_or_else(|| "(none)".into());
            *r.denials_by_reason.entry(reason).or_default() += 1;
        } else {
            r.allowed += 1;
        }
        let auth = e.auth.clone().unwrap_or_else(|| "anonymous".into());
        if auth == "session" || auth == "bearer" {
            r.authenticated += 1;
            // A step-up adds "otp" to the session's amr.
            let mfa = e.amr.as_ref().is_some_and(|a| {
                a.iter()
                    .any(|m| m == "otp" || mfa_amr.iter().any(|x| x == m))
            });
            if mfa {
                r.authenticated_with_mfa += 1;
            }
        }
        *r.by_auth.entry(auth).or_default() += 1;
        let tls = e.tls.clone().unwrap_or_else(|| "none".into());
        if tls == "TLSv1.3" {
            r.tls13 += 1;
        }
        *r.by_tls.entry(tls).or_default() += 1;
        let proto = e.proto.clone().unwrap_or_else(|| "unknown".into());
        if proto == "h3" {
            r.h3 += 1;
        }
        *r.by_proto.entry(proto).or_default() += 1;
    }

    fn event(&mut self, e: &Entry) {
        let name = e.event.as_deref().unwrap_or("");
        let sub = e.sub.clone().unwrap_or_else(|| ANONYMOUS.into());
        let s = &mut self.sessions;
        match name {
            "login" => {
                s.sessions += 1;
                // The proxy writes `mfa=<method>` (or `mfa=none`) as the reason.
                let method = e
                    .reason
                    .as_deref()
                    .and_then(|r| r.strip_prefix("mfa="))
                    .unwrap_or("none")
                    .to_string();
                if method == "none" {
                    *self.without_mfa.entry(sub).or_default() += 1;
                } else {
                    s.with_mfa += 1;
                }
                *s.by_method.entry(method).or_default() += 1;
            }
            n if STEP_UP_EVENTS.contains(&n) && e.reason.as_deref() == Some("mfa=totp") => {
                s.step_ups += 1;
                // The session this step-up belongs to: the user's latest sign-in
                // without MFA in the period (step-ups name the user, not the session).
                if let Some(w) = self.without_mfa.get_mut(&sub).filter(|w| **w > 0) {
                    *w -= 1;
                    s.with_mfa += 1;
                    if let Some(none) = s.by_method.get_mut("none") {
                        *none = none.saturating_sub(1);
                    }
                    s.by_method.retain(|_, v| *v > 0);
                    *s.by_method.entry("totp (step-up)".into()).or_default() += 1;
                }
            }
            "login_failed" => s.login_failures += 1,
            "mfa_failure" => s.mfa_failures += 1,
            "mfa_lockout" => s.mfa_lockouts += 1,
            "break_glass" => self.break_glass.elevations.push(Elevation {
                ts: e.ts.clone(),
                sub: e.sub.clone(),
                route: e.route.clone(),
                justification: e.reason.clone().unwrap_or_default(),
            }),
            "break_glass_use" => {
                *self.break_glass.requests_by_user.entry(sub).or_default() += 1;
            }
            "break_glass_refused" => self.break_glass.refused += 1,
            "key_rotation" => self.rotations.push(Rotation {
                ts: e.ts.clone(),
                detail: e.reason.clone().unwrap_or_default(),
            }),
            _ => {}
        }
    }

    fn finish(&mut self) {
        let share = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
        let r = &mut self.requests;
        r.tls13_share = share(r.tls13, r.total);
        r.h3_share = share(r.h3, r.total);
        let s = &mut self.sessions;
        s.mfa_share = share(s.with_mfa, s.sessions);
    }
}

fn days_between(earlier: Timestamp, later: Timestamp) -> i64 {
    later.duration_since(earlier).as_secs().div_euclid(86_400)
}

/// Every certificate in a PEM file.
fn certificates(path: &Path, role: &str, now: Timestamp) -> Vec<Certificate> {
    let file = path.display().to_string();
    let broken = |error: String| Certificate {
        file: file.clone(),
        role: role.to_string(),
        subject: String::new(),
        name: String::new(),
        not_after: None,
        days_left: None,
        status: Status::Fail,
        error: Some(error),
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return vec![broken(format!("cannot read: {e}"))],
    };
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = match pem {
            Ok(p) => p,
            Err(e) => {
                out.push(broken(format!("not valid PEM: {e}")));
                break;
            }
        };
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = match pem.parse_x509() {
            Ok(c) => c,
            Err(e) => {
                out.push(broken(format!("not an X.509 certificate: {e}")));
                continue;
            }
        };
        let not_after = Timestamp::from_second(cert.validity().not_after.timestamp()).ok();
        let days_left = not_after.map(|t| {
            let d = t.duration_since(now).as_secs();
            d.div_euclid(86_400)
        });
        let status = match (not_after, days_left) {
            (Some(t), _) if t <= now => Status::Fail,
            (Some(_), Some(d)) if d < EXPIRY_WARNING_DAYS => Status::Exception,
            (Some(_), _) => Status::Pass,
            (None, _) => Status::Fail,
        };
        let subject = cert.subject().to_string();
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map_or_else(|| subject.clone(), str::to_string);
        out.push(Certificate {
            file: file.clone(),
            role: if out.is_empty() {
                role.to_string()
            } else {
                format!("{role}, chain")
            },
            subject,
            name,
            not_after: not_after.map(|t| t.to_string()),
            days_left,
            status,
            error: None,
        });
    }
    if out.is_empty() {
        out.push(broken("no certificate in the file".into()));
    }
    out
}

/// The key files of `dir` (and the session key file), by modification time.
fn key_files(cfg: &Config, now: Timestamp) -> (Option<PathBuf>, Vec<KeyFile>) {
    let dir = cfg
        .audit
        .as_ref()
        .map(|a| a.keys_dir.clone())
        .or_else(|| cfg.identity.as_ref().map(|i| i.keys_dir.clone()));
    let mut paths: Vec<PathBuf> = dir
        .as_ref()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    if let Some(i) = &cfg.identity
        && !paths.contains(&i.session.keys_file)
        && i.session.keys_file.exists()
    {
        paths.push(i.session.keys_file.clone());
    }
    paths.sort();
    let files = paths
        .into_iter()
        .map(|p| {
            let m = audit_read::modified(&p);
            KeyFile {
                file: p.display().to_string(),
                modified: m.map(|t| t.to_string()),
                age_days: m.map(|t| days_between(t, now)),
            }
        })
        .collect();
    (dir, files)
}

/// The first record of the trail.
fn oldest_record(files: &[PathBuf]) -> Option<Timestamp> {
    use std::io::BufRead;
    let first = files.first()?;
    let f = std::fs::File::open(first).ok()?;
    std::io::BufReader::new(f)
        .split(b'\n')
        .take(100)
        .map_while(Result::ok)
        .find_map(|l| audit_read::parse_line(&l).ok())
        .map(|e| e.at)
}

/// Measures everything. `period` is `--since` as given.
pub fn gather(cfg: &Config, since: Timestamp, now: Timestamp, period: &str) -> Evidence {
    let integrity_routes = audit_read::integrity_routes(cfg);
    let mfa_amr: Vec<String> = cfg
        .identity
        .as_ref()
        .map(|i| i.oidc.mfa_amr.clone())
        .unwrap_or_default();
    let mut tally = Tally::default();
    let mut audit = AuditFacts::default();
    if let Some(a) = &cfg.audit {
        audit.configured = true;
        audit.file = Some(a.file.display().to_string());
        audit.retain = Some(dermgate_policy::ast::format_duration(a.retain));
        let files = audit_verify::trail_files(&a.file);
        audit.files = files.len();
        match audit_read::scan(&files, Some(since), |e, _| {
            tally.add(e, &mfa_amr, &integrity_routes);
        }) {
            Ok(scan) => audit.skipped = scan.skipped,
            Err(e) => audit.error = Some(e),
        }
        let oldest = oldest_record(&files);
        audit.oldest_record = oldest.map(|t| t.to_string());
        audit.oldest_age_days = oldest.map(|t| days_between(t, now));
        let pubkey = a.keys_dir.join("audit-ed25519.pub");
        let key = crate::audit_cmd::read_pubkey(&pubkey).ok();
        match audit_verify::verify(&files, key.as_deref()) {
            Ok(report) => {
                audit.chain = Some(Chain {
                    intact: report.intact(),
                    signatures_checked: key.is_some(),
                    report,
                });
            }
            Err(e) => audit.error = Some(format!("verifying the chain: {e}")),
        }
    }
    tally.finish();
    audit.records_in_period = tally.records;
    audit.alerts = std::mem::take(&mut tally.alerts);

    let mut sessions = std::mem::take(&mut tally.sessions);
    sessions.identity_configured = cfg.identity.is_some();
    if let Some(i) = &cfg.identity {
        sessions.idle = Some(dermgate_policy::ast::format_duration(i.session.idle));
        sessions.absolute = Some(dermgate_policy::ast::format_duration(i.session.absolute));
    }
    let (dir, files) = key_files(cfg, now);
    let keys = Keys {
        dir: dir.map(|d| d.display().to_string()),
        files,
        rotations: std::mem::take(&mut tally.rotations),
    };

    let public_routes = cfg
        .routes
        .iter()
        .filter(|r| r.public)
        .map(|r| RouteRef {
            name: r.name.clone(),
            host: r.host.clone(),
            path: r.path.clone(),
        })
        .collect();
    let upstream_legs = cfg
        .routes
        .iter()
        .flat_map(|r| {
            r.upstreams.iter().map(move |u| Leg {
                route: r.name.clone(),
                upstream: u.uri.to_string(),
                encrypted: u.tls,
                verified_against: u.tls.then(|| {
                    r.upstream_ca
                        .as_ref()
                        .map(|c| c.display().to_string())
                        .unwrap_or_else(|| "the system's roots".into())
                }),
                exception: !u.tls,
            })
        })
        .collect();

    let mut certs = certificates(&cfg.tls.cert, "server certificate ([tls] cert)", now);
    for s in &cfg.tls.sni {
        certs.extend(certificates(
            &s.cert,
            &format!("server certificate for {}", s.hosts.join(", ")),
            now,
        ));
    }
    let mut cas: BTreeMap<&Path, Vec<&str>> = BTreeMap::new();
    for r in &cfg.routes {
        if let Some(ca) = &r.upstream_ca {
            cas.entry(ca.as_path()).or_default().push(&r.name);
        }
    }
    for (ca, routes) in cas {
        certs.extend(certificates(
            ca,
            &format!("upstream CA (routes {})", routes.join(", ")),
            now,
        ));
    }
    if let Some(ca) = cfg.identity.as_ref().and_then(|i| i.oidc.ca.as_ref()) {
        certs.extend(certificates(ca, "identity provider CA ([oidc] ca)", now));
    }

    let mut ev = Evidence {
        report: "dermgate HIPAA technical safeguards evidence (45 CFR 164.312)",
        generated: now.to_string(),
        period: Period {
            label: period.to_string(),
            since: since.to_string(),
            until: now.to_string(),
        },
        config: cfg.file.display().to_string(),
        status: Status::Pass,
        requests: std::mem::take(&mut tally.requests),
        sessions,
        break_glass: std::mem::take(&mut tally.break_glass),
        keys,
        device_posture: Posture {
            measured: false,
            note: "not measured — device posture is not configured".into(),
        },
        public_routes,
        integrity_routes,
        upstream_legs,
        certificates: certs,
        audit,
        safeguards: Vec::new(),
    };
    ev.safeguards = ev.measures();
    ev.status = if ev
        .safeguards
        .iter()
        .flat_map(|s| &s.measures)
        .any(|m| m.status == Status::Fail)
    {
        Status::Fail
    } else {
        Status::Pass
    };
    ev
}

/// `1 route`, `2 routes`.
fn plural(n: impl TryInto<i64>, word: &str) -> String {
    match n.try_into().unwrap_or(i64::MAX) {
        1 => format!("1 {word}"),
        n => format!("{n} {word}s"),
    }
}

fn pct(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0))
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn date_of(rfc3339: &str) -> String {
    rfc3339
        .parse::<Timestamp>()
        .map(audit_read::day)
        .unwrap_or_else(|_| rfc3339.to_string())
}

fn measure(label: &str, value: String, status: Status, details: Vec<String>) -> Measure {
    Measure {
        label: label.to_string(),
        value,
        status,
        details,
    }
}

impl Evidence {
    /// The measures under each safeguard.
    fn measures(&self) -> Vec<Safeguard> {
        vec![
            Safeguard {
                code: "164.312(a)",
                title: "Access control",
                measures: self.access_control(),
            },
            Safeguard {
                code: "164.312(b)",
                title: "Audit controls",
                measures: self.audit_controls(),
            },
            Safeguard {
                code: "164.312(c)",
                title: "Integrity",
                measures: self.integrity(),
            },
            Safeguard {
                code: "164.312(d)",
                title: "Person or entity authentication",
                measures: self.authentication(),
            },
            Safeguard {
                code: "164.312(e)",
                title: "Transmission security",
                measures: self.transmission(),
            },
        ]
    }

    fn access_control(&self) -> Vec<Measure> {
        let r = &self.requests;
        let mut v = vec![
            measure(
                "Policy decisions",
                format!(
                    "{} requests: {} allowed, {} denied",
                    r.total, r.allowed, r.denied
                ),
                Status::Info,
                Vec::new(),
            ),
            measure(
                "Denials by reason",
                if r.denials_by_reason.is_empty() {
                    "none".into()
                } else {
                    counts(&r.denials_by_reason)
                },
                Status::Info,
                Vec::new(),
            ),
            measure(
                "User identification",
                if r.by_auth.is_empty() {
                    "no requests".into()
                } else {
                    counts(&r.by_auth)
                },
                Status::Info,
                Vec::new(),
            ),
        ];
        v.push(if self.public_routes.is_empty() {
            measure("Public routes", "none".into(), Status::Pass, Vec::new())
        } else {
            measure(
                "Public routes",
                format!(
                    "{} served without identity",
                    plural(self.public_routes.len(), "route")
                ),
                Status::Exception,
                self.public_routes
                    .iter()
                    .map(|p| format!("{}: {}{} (public = true)", p.name, p.host, p.path))
                    .collect(),
            )
        });
        let bg = &self.break_glass;
        let used: u64 = bg.requests_by_user.values().sum();
        let mut details: Vec<String> = bg
            .elevations
            .iter()
            .map(|e| {
                format!(
                    "{} {} on {}: \"{}\"",
                    date_of(&e.ts),
                    e.sub.as_deref().unwrap_or("(user not recorded)"),
                    e.route.as_deref().unwrap_or("-"),
                    e.justification
                )
            })
            .collect();
        if !bg.requests_by_user.is_empty() {
            details.push(format!(
                "requests allowed by it: {}",
                counts(&bg.requests_by_user)
            ));
        }
        v.push(measure(
            "Emergency access",
            format!(
                "{}, {} allowed by them, {} refused",
                plural(bg.elevations.len(), "elevation"),
                plural(used, "request"),
                bg.refused
            ),
            Status::Info,
            details,
        ));
        v.push(match (&self.sessions.idle, &self.sessions.absolute) {
            (Some(i), Some(a)) => measure(
                "Automatic logoff",
                format!("sessions end after {i} idle, {a} at most"),
                Status::Pass,
                Vec::new(),
            ),
            _ => measure(
                "Automatic logoff",
                "not measured — no sign-in is configured ([oidc])".into(),
                Status::NotMeasured,
                Vec::new(),
            ),
        });
        let k = &self.keys;
        let oldest = k.files.iter().filter_map(|f| f.age_days).max();
        v.push(measure(
            "Encryption keys",
            match (k.files.len(), oldest) {
                (0, _) => "no key files found".into(),
                (n, Some(d)) => format!(
                    "{}, oldest changed {} ago; {} in the period",
                    plural(n, "key file"),
                    plural(d, "day"),
                    plural(k.rotations.len(), "rotation")
                ),
                (n, None) => format!(
                    "{}; {}",
                    plural(n, "key file"),
                    plural(k.rotations.len(), "rotation")
                ),
            },
            Status::Info,
            k.dir
                .iter()
                .map(|d| format!("in {d}"))
                .chain(k.files.iter().map(|f| {
                    // The directory is named once; the files by name.
                    let name = k
                        .dir
                        .as_deref()
                        .and_then(|d| Path::new(&f.file).strip_prefix(d).ok())
                        .map_or_else(|| f.file.clone(), |p| p.display().to_string());
                    format!(
                        "{name}: changed {}{}",
                        f.modified.as_deref().map_or("-".into(), date_of),
                        f.age_days.map_or(String::new(), |d| format!(" ({d} days)"))
                    )
                }))
                .chain(
                    k.rotations
                        .iter()
                        .map(|r| format!("rotated {}: {}", date_of(&r.ts), r.detail)),
                )
                .collect(),
        ));
        v.push(measure(
            "Device posture",
            self.device_posture.note.clone(),
            Status::NotMeasured,
            Vec::new(),
        ));
        v
    }

    fn audit_controls(&self) -> Vec<Measure> {
        let a = &self.audit;
        if !a.configured {
            return vec![measure(
                "Audit trail",
                "not configured: no [audit] in the configuration".into(),
                Status::Fail,
                Vec::new(),
            )];
        }
        let mut v = vec![measure(
            "Audit trail",
            format!(
                "{} in the period, {}",
                plural(a.records_in_period, "record"),
                plural(a.files, "file")
            ),
            if a.error.is_some() {
                Status::Fail
            } else {
                Status::Pass
            },
            a.error.iter().map(|e| format!("error: {e}")).collect(),
        )];
        let retain = a.retain.clone().unwrap_or_default();
        v.push(match (&a.oldest_record, a.oldest_age_days) {
            (Some(t), Some(d)) => measure(
                "Oldest record held",
                format!(
                    "{} UTC ({} old); retention {retain}, dermgate never deletes",
                    t.parse::<Timestamp>()
                        .map(human_time)
                        .unwrap_or_else(|_| t.clone()),
                    plural(d, "day")
                ),
                Status::Info,
                Vec::new(),
            ),
            _ => measure(
                "Oldest record held",
                format!("no records yet; retention policy {retain}"),
                Status::Info,
                Vec::new(),
            ),
        });
        v.push(measure(
            "Alerts raised",
            if a.alerts.is_empty() {
                "none in the period".into()
            } else {
                counts(&a.alerts)
            },
            Status::Info,
            Vec::new(),
        ));
        if !a.skipped.is_empty() {
            v.push(measure(
                "Lines that are not records",
                format!("{} skipped", plural(a.skipped.len(), "line")),
                Status::Exception,
                a.skipped.iter().map(ToString::to_string).collect(),
            ));
        }
        v
    }

    fn integrity(&self) -> Vec<Measure> {
        let mut v = Vec::new();
        match &self.audit.chain {
            Some(c) => {
                let r = &c.report;
                let status = if !c.intact {
                    Status::Fail
                } else if !c.signatures_checked {
                    Status::Exception
                } else {
                    Status::Pass
                };
                let mut details: Vec<String> = r
                    .problems
                    .iter()
                    .map(|f| format!("{}:{}: {}: {}", f.file, f.line, f.kind, f.detail))
                    .collect();
                details.extend(
                    r.notes
                        .iter()
                        .map(|f| format!("note: {}:{}: {}: {}", f.file, f.line, f.kind, f.detail)),
                );
                if !c.signatures_checked {
                    details.push(
                        "public key audit-ed25519.pub not found: checkpoint signatures not checked"
                            .into(),
                    );
                }
                v.push(measure(
                    "Audit chain verification",
                    format!(
                        "{}: {} in {}, {} verified",
                        if c.intact { "intact" } else { "NOT INTACT" },
                        plural(r.records, "record"),
                        plural(r.files, "file"),
                        plural(r.checkpoints_verified, "signed checkpoint")
                    ),
                    status,
                    details,
                ));
            }
            None => v.push(measure(
                "Audit chain verification",
                self.audit
                    .error
                    .clone()
                    .unwrap_or_else(|| "no audit trail to verify".into()),
                Status::Fail,
                Vec::new(),
            )),
        }
        let r = &self.requests;
        v.push(if self.integrity_routes.is_empty() {
            measure(
                "Image integrity (SHA-256)",
                "no route has integrity = true".into(),
                Status::Info,
                Vec::new(),
            )
        } else {
            measure(
                "Image integrity (SHA-256)",
                format!(
                    "{} of {} hashed on {}",
                    r.integrity_hashed,
                    plural(r.integrity_transfers, "transfer"),
                    self.integrity_routes.join(", ")
                ),
                if r.integrity_hashed == r.integrity_transfers {
                    Status::Pass
                } else {
                    Status::Fail
                },
                Vec::new(),
            )
        });
        v
    }

    fn authentication(&self) -> Vec<Measure> {
        let s = &self.sessions;
        if !s.identity_configured {
            return vec![measure(
                "Sign-in and MFA",
                "no sign-in is configured ([oidc]): requests are not tied to a person".into(),
                Status::Exception,
                Vec::new(),
            )];
        }
        let r = &self.requests;
        vec![
            measure(
                "Sessions with MFA",
                if s.sessions == 0 {
                    "no sign-ins in the period".into()
                } else {
                    format!("{} of {} ({})", s.with_mfa, s.sessions, pct(s.mfa_share))
                },
                Status::Info,
                if s.by_method.is_empty() {
                    Vec::new()
                } else {
                    vec![format!("by method: {}", counts(&s.by_method))]
                },
            ),
            measure(
                "Requests with MFA",
                format!(
                    "{} of {} ({})",
                    r.authenticated_with_mfa,
                    r.authenticated,
                    pct((r.authenticated > 0)
                        .then(|| r.authenticated_with_mfa as f64 / r.authenticated as f64))
                ),
                Status::Info,
                Vec::new(),
            ),
            measure(
                "Failed sign-ins and MFA",
                format!(
                    "{}, {}, {}, {}",
                    plural(s.login_failures, "sign-in failure"),
                    plural(s.mfa_failures, "MFA failure"),
                    plural(s.mfa_lockouts, "lockout"),
                    plural(s.step_ups, "step-up")
                ),
                Status::Info,
                Vec::new(),
            ),
        ]
    }

    fn transmission(&self) -> Vec<Measure> {
        let r = &self.requests;
        let mut v = vec![
            if r.total == 0 {
                measure(
                    "Requests over TLS 1.3",
                    "no requests in the period".into(),
                    Status::Info,
                    Vec::new(),
                )
            } else {
                let mut details = Vec::new();
                if r.tls13 < r.total {
                    details.push(format!("by version: {}", counts(&r.by_tls)));
                    details.push("100% is the only accepted answer".into());
                }
                measure(
                    "Requests over TLS 1.3",
                    format!("{} of {} ({})", r.tls13, r.total, pct(r.tls13_share)),
                    if r.tls13 == r.total {
                        Status::Pass
                    } else {
                        Status::Fail
                    },
                    details,
                )
            },
            measure(
                "Requests over HTTP/3",
                format!("{} of {} ({})", r.h3, r.total, pct(r.h3_share)),
                Status::Info,
                if r.by_proto.is_empty() {
                    Vec::new()
                } else {
                    vec![format!("by protocol: {}", counts(&r.by_proto))]
                },
            ),
        ];
        let plain = self.upstream_legs.iter().filter(|l| !l.encrypted).count();
        // One CA for every TLS leg is named once.
        let mut cas: Vec<&str> = self
            .upstream_legs
            .iter()
            .filter_map(|l| l.verified_against.as_deref())
            .collect();
        cas.dedup();
        let one_ca = (cas.len() == 1).then(|| cas[0]);
        v.push(measure(
            "Upstream legs",
            format!(
                "{} of {} TLS-verified{}{}",
                self.upstream_legs.len() - plain,
                plural(self.upstream_legs.len(), "leg"),
                one_ca.map_or(String::new(), |ca| format!(" against {ca}")),
                if plain > 0 {
                    format!("; {plain} plaintext (allow_plaintext = true)")
                } else {
                    String::new()
                }
            ),
            if plain > 0 {
                Status::Exception
            } else {
                Status::Pass
            },
            self.upstream_legs
                .iter()
                .map(|l| match &l.verified_against {
                    Some(_) if one_ca.is_some() => format!("{} → {}: TLS", l.route, l.upstream),
                    Some(ca) => format!("{} → {}: TLS, verified against {ca}", l.route, l.upstream),
                    None => format!("{} → {}: PLAINTEXT (exception)", l.route, l.upstream),
                })
                .collect(),
        ));
        let worst = self
            .certificates
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Info);
        let soonest = self
            .certificates
            .iter()
            .filter_map(|c| Some((c.days_left?, c.not_after.as_deref()?)))
            .min();
        v.push(measure(
            "Certificate expiry",
            match soonest {
                Some((d, t)) => format!(
                    "{}; the first expires {} (in {})",
                    plural(self.certificates.len(), "certificate"),
                    date_of(t),
                    plural(d, "day")
                ),
                None => plural(self.certificates.len(), "certificate"),
            },
            worst,
            self.certificates
                .iter()
                .map(|c| match &c.error {
                    Some(e) => format!("{} ({}): {e}", c.file, c.role),
                    None => format!(
                        "{}: {} — expires {}{}",
                        c.role,
                        c.name,
                        c.not_after.as_deref().map_or("-".into(), date_of),
                        match c.status {
                            Status::Fail => " (EXPIRED)",
                            Status::Exception => " (soon)",
                            _ => "",
                        }
                    ),
                })
                .collect(),
        ));
        v
    }

    /// The terminal rendering.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.report);
        let _ = writeln!(
            out,
            "period {} .. {} UTC ({}), config {}",
            self.period
                .since
                .parse()
                .map(human_time)
                .unwrap_or_default(),
            self.period
                .until
                .parse()
                .map(human_time)
                .unwrap_or_default(),
            self.period.label,
            self.config
        );
        // One set of columns for every safeguard; details under the result.
        let status_w = "NOT MEASURED".len();
        let label_w = self
            .safeguards
            .iter()
            .flat_map(|s| &s.measures)
            .map(|m| m.label.chars().count())
            .max()
            .unwrap_or(0);
        let indent = " ".repeat(2 + status_w + 2 + label_w + 2);
        for s in &self.safeguards {
            let _ = writeln!(out, "\n{} {}", s.code, s.title);
            for m in &s.measures {
                let _ = writeln!(
                    out,
                    "  {:<status_w$}  {:<label_w$}  {}",
                    m.status.label(),
                    m.label,
                    audit_read::clean(&m.value)
                );
                for d in m.details.iter().take(MAX_DETAILS) {
                    let _ = writeln!(out, "{indent}· {}", audit_read::clean(d));
                }
                if m.details.len() > MAX_DETAILS {
                    let _ = writeln!(
                        out,
                        "{indent}· … and {} more (see --json)",
                        m.details.len() - MAX_DETAILS
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\nresult: {}",
            if self.status == Status::Fail {
                "FAIL (a measure above failed)"
            } else {
                "PASS (exceptions above are listed for review)"
            }
        );
        out
    }

    /// The one-page HTML report: self-contained, printable on A4.
    pub fn render_html(&self) -> String {
        let mut h = String::with_capacity(16 * 1024);
        let when = |s: &str| {
            s.parse::<Timestamp>()
                .ok()
                .and_then(|t| jiff::fmt::strtime::format("%Y-%m-%d %H:%M UTC", t).ok())
                .unwrap_or_else(|| s.to_string())
        };
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>dermgate — HIPAA technical safeguards evidence</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<main class=\"sheet\">\n<header>\n<div>\n<p class=\"kicker\">dermgate · zero-trust access proxy</p>\n<h1>HIPAA technical safeguards evidence</h1>\n<p class=\"reg\">45 CFR §164.312 — measured from the audit trail and the running configuration</p>\n</div>\n<div class=\"overall {cls}\">{label}</div>\n</header>\n",
            cls = self.status.class(),
            label = if self.status == Status::Fail {
                "FAIL"
            } else {
                "PASS"
            },
        );
        let _ = write!(
            h,
            "<dl class=\"meta\">\n<div><dt>Period</dt><dd>{} — {} ({})</dd></div>\n<div><dt>Generated</dt><dd>{}</dd></div>\n<div><dt>Configuration</dt><dd>{}</dd></div>\n<div><dt>Audit trail</dt><dd>{}</dd></div>\n</dl>\n",
            esc(&when(&self.period.since)),
            esc(&when(&self.period.until)),
            esc(&self.period.label),
            esc(&when(&self.generated)),
            esc(&self.config),
            esc(self.audit.file.as_deref().unwrap_or("not configured")),
        );
        let r = &self.requests;
        let _ = write!(
            h,
            "<div class=\"kpis\">\n{}{}{}{}\n</div>\n",
            kpi(
                "Requests",
                &r.total.to_string(),
                &format!("{} denied", r.denied),
                false
            ),
            kpi(
                "Over TLS 1.3",
                &r.tls13_share.map_or_else(|| "—".into(), |s| pct(Some(s))),
                &format!("{} of {}", r.tls13, r.total),
                r.tls13 < r.total
            ),
            if self.sessions.identity_configured {
                kpi(
                    "Sessions with MFA",
                    &self
                        .sessions
                        .mfa_share
                        .map_or_else(|| "—".into(), |s| pct(Some(s))),
                    &format!("{} of {}", self.sessions.with_mfa, self.sessions.sessions),
                    false,
                )
            } else {
                kpi("Sessions with MFA", "—", "no sign-in configured", false)
            },
            kpi(
                "Audit chain",
                match &self.audit.chain {
                    Some(c) if c.intact => "intact",
                    Some(_) => "NOT INTACT",
                    None => "—",
                },
                &self
                    .audit
                    .chain
                    .as_ref()
                    .map_or(String::new(), |c| format!("{} records", c.report.records)),
                self.audit.chain.as_ref().is_none_or(|c| !c.intact)
            ),
        );
        for s in &self.safeguards {
            let _ = write!(
                h,
                "<section>\n<h2><span class=\"code\">§{}</span> {}</h2>\n<table>\n<colgroup><col class=\"c-label\"><col><col class=\"c-status\"></colgroup>\n",
                esc(s.code),
                esc(s.title)
            );
            for m in &s.measures {
                let _ = write!(
                    h,
                    "<tr><th scope=\"row\">{}</th><td><div class=\"value\">{}</div>",
                    esc(&m.label),
                    esc(&m.value)
                );
                if !m.details.is_empty() {
                    h.push_str("<ul>");
                    for d in m.details.iter().take(MAX_DETAILS) {
                        let _ = write!(h, "<li>{}</li>", esc(d));
                    }
                    if m.details.len() > MAX_DETAILS {
                        let _ = write!(
                            h,
                            "<li class=\"more\">… and {} more (see <code>--json</code>)</li>",
                            m.details.len() - MAX_DETAILS
                        );
                    }
                    h.push_str("</ul>");
                }
                let _ = writeln!(
                    h,
                    "</td><td class=\"st\"><span class=\"pill {}\">{}</span></td></tr>",
                    m.status.class(),
                    m.status.label()
                );
            }
            h.push_str("</table>\n</section>\n");
        }
        let _ = write!(
            h,
            "<footer>\n<p><span class=\"pill pass\">PASS</span> meets the requirement · <span class=\"pill exception\">EXCEPTION</span> accepted deviation, for review · <span class=\"pill fail\">FAIL</span> does not meet it · <span class=\"pill info\">INFO</span> for the record · <span class=\"pill not-measured\">NOT MEASURED</span> not built or configured</p>\n<p>Generated by <code>dermgate evidence --since {}</code>. Counts cover the period; the chain verification, key ages and certificate dates cover everything held. Records never contain cookies, tokens, query strings or bodies.</p>\n</footer>\n</main>\n</body>\n</html>\n",
            esc(&self.period.label)
        );
        h
    }
}

fn kpi(label: &str, value: &str, sub: &str, bad: bool) -> String {
    format!(
        "<div class=\"kpi{}\"><div class=\"k-label\">{}</div><div class=\"k-value\">{}</div><div class=\"k-sub\">{}</div></div>",
        if bad { " bad" } else { "" },
        esc(label),
        esc(value),
        esc(sub)
    )
}

/// HTML text escaping (justifications and paths are user input), with
/// control characters shown escaped as in the terminal table.
fn esc(s: &str) -> String {
    dermgate_proxy::pages::escape(&crate::audit_read::clean(s))
}

const CSS: &str = r#"@page { size: A4; margin: 9mm 10mm 9mm; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; background: #e6eaee; color: #17212b;
  font: 8.6pt/1.32 "Helvetica Neue", "Segoe UI", "DejaVu Sans", Arial, sans-serif; }
.sheet { width: 210mm; min-height: 297mm; margin: 6mm auto; padding: 10mm 11mm; background: #fff;
  box-shadow: 0 1px 5px rgba(0,0,0,.2); }
@media screen and (min-width: 1100px) { .sheet { zoom: 1.45; } }
header { display: flex; justify-content: space-between; align-items: flex-start; gap: 8mm;
  border-bottom: 2pt solid #0f4c5c; padding-bottom: 2.4mm; }
.kicker { margin: 0; color: #0f4c5c; font-size: 7pt; font-weight: 700; letter-spacing: .09em; text-transform: uppercase; }
h1 { margin: .6mm 0 0; font-size: 15pt; line-height: 1.15; color: #0b2f3a; }
.reg { margin: .6mm 0 0; color: #5b6774; font-size: 7.8pt; }
.overall { flex: none; margin-top: 1mm; padding: 1.6mm 4.5mm; border-radius: 1.6mm; font-weight: 800; font-size: 12pt; letter-spacing: .08em; }
.overall.pass { background: #1f7a3d; color: #fff; }
.overall.fail { background: #b3261e; color: #fff; }
.meta { display: grid; grid-template-columns: 1.2fr 1fr; gap: .6mm 6mm; margin: 2.2mm 0 0; font-size: 7.8pt; }
.meta div { display: flex; gap: 2mm; min-width: 0; }
.meta dt { flex: none; width: 19mm; color: #5b6774; }
.meta dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 2.4mm; margin: 3mm 0 .5mm; }
.kpi { border: 1px solid #d6dee6; border-left: 1.2mm solid #0f4c5c; border-radius: 1.4mm; padding: 1.3mm 2.4mm; background: #f6f9fb; }
.k-label { color: #5b6774; font-size: 6.6pt; text-transform: uppercase; letter-spacing: .06em; }
.k-value { font-size: 13pt; line-height: 1.2; font-weight: 700; color: #0b2f3a; font-variant-numeric: tabular-nums; }
.k-sub { color: #5b6774; font-size: 7pt; }
.kpi.bad { border-left-color: #b3261e; background: #fdf1f0; }
.kpi.bad .k-value { color: #a2221a; }
section { margin-top: 2.6mm; border: 1px solid #d6dee6; border-radius: 1.6mm; overflow: hidden;
  break-inside: avoid; page-break-inside: avoid; }
h2 { margin: 0; padding: 1mm 2.6mm; font-size: 9.2pt; background: #eaf1f5; border-bottom: 1px solid #d6dee6;
  color: #0b2f3a; break-after: avoid; page-break-after: avoid; }
h2 .code { color: #0f4c5c; font-variant-numeric: tabular-nums; margin-right: 1.2mm; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; }
col.c-label { width: 27%; }
col.c-status { width: 30mm; }
tr { break-inside: avoid; page-break-inside: avoid; }
tr + tr th, tr + tr td { border-top: 1px solid #edf1f4; }
th, td { padding: .8mm 2.6mm; vertical-align: top; text-align: left; }
th { font-weight: 600; color: #26323d; }
.value { overflow-wrap: anywhere; }
ul { margin: .2mm 0 0; padding-left: 3.4mm; color: #4d5966; font-size: 7.4pt; line-height: 1.28; }
li { overflow-wrap: anywhere; }
li.more { list-style: none; color: #7a8591; }
td.st { text-align: right; }
.pill { display: inline-block; padding: .2mm 1.8mm; border-radius: 3mm; font-size: 6.2pt; font-weight: 700;
  letter-spacing: .04em; white-space: nowrap; }
.pill.pass { background: #dff3e5; color: #1b6b35; }
.pill.fail { background: #fbe0dd; color: #a2221a; }
.pill.exception { background: #fff0d2; color: #8a5200; }
.pill.info { background: #e6edf5; color: #38506b; }
.pill.not-measured { background: #ececec; color: #555; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 7pt; }
footer { margin-top: 3mm; padding-top: 1.6mm; border-top: 1px solid #d6dee6; color: #5b6774; font-size: 6.8pt; }
footer p { margin: 0 0 .8mm; }
@media print {
  body { background: #fff; font-size: 8.2pt; }
  section { margin-top: 2mm; }
  th, td { padding: .6mm 2.4mm; }
  .sheet { width: auto; min-height: 0; margin: 0; padding: 0; box-shadow: none; zoom: 1; }
}
"#;

/// `dermgate evidence`.
pub fn run(config: &Path, since: &str, json: bool, html: Option<&Path>) -> ExitCode {
    let now = Timestamp::now();
    let since_t = match audit_read::parse_since(since, now) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            crate::check::report(&e);
            return ExitCode::from(2);
        }
    };
    let ev = gather(&cfg, since_t, now, since);
    audit_read::report_skipped(&ev.audit.skipped);
    if json {
        match serde_json::to_string_pretty(&ev) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if let Some(path) = html {
        if let Err(e) = std::fs::write(path, ev.render_html()) {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!(
            "evidence report written to {} ({})",
            path.display(),
            if ev.status == Status::Fail {
                "FAIL"
            } else {
                "PASS"
            }
        );
    } else {
        print!("{}", ev.render_text());
    }
    if ev.status == Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn ev(lines: &[&str], mfa_amr: &[&str]) -> Tally {
        let mfa: Vec<String> = mfa_amr.iter().map(|s| s.to_string()).collect();
        let mut t = Tally::default();
        for l in lines {
            let full = format!(
                "{{\"ts\":\"2026-03-02T09:00:00.000Z\",{l},\"prev\":\"{}\"}}",
                "0".repeat(64)
            );
            t.add(
                &audit_read::parse_line(full.as_bytes()).unwrap(),
                &mfa,
                &["img".into()],
            );
        }
        t.finish();
        t
    }

    #[test]
    fn sessions_count_mfa_at_sign_in_and_by_step_up() {
        let t = ev(
            &[
                r#""kind":"event","event":"login","sub":"alice","reason":"mfa=otp""#,
                r#""kind":"event","event":"login","sub":"bob","reason":"mfa=none""#,
                r#""kind":"event","event":"login","sub":"carol","reason":"mfa=none""#,
                r#""kind":"event","event":"login","sub":"dave","reason":"mfa=hwk""#,
                r#""kind":"event","event":"step_up","sub":"bob","reason":"mfa=totp""#,
                // A step-up of a session from before the period: counted, not matched.
                r#""kind":"event","event":"step_up","sub":"erin","reason":"mfa=totp""#,
                // An admin enrollment is not a session's second factor.
                r#""kind":"event","event":"totp_enrolled","reason":"user=carol by admin""#,
                r#""kind":"event","event":"mfa_failure","sub":"carol","reason":"wrong code""#,
                r#""kind":"event","event":"login_failed","reason":"state mismatch""#,
            ],
            &["otp", "hwk"],
        );
        let s = &t.sessions;
        assert_eq!(s.sessions, 4);
        assert_eq!(s.with_mfa, 3);
        assert_eq!(s.mfa_share, Some(0.75));
        assert_eq!(s.step_ups, 2);
        assert_eq!(s.mfa_failures, 1);
        assert_eq!(s.login_failures, 1);
        let m: Vec<(&str, u64)> = s.by_method.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            m,
            [("hwk", 1), ("none", 1), ("otp", 1), ("totp (step-up)", 1)]
        );
    }

    #[test]
    fn requests_count_tls_protocols_denials_and_hashes() {
        let t = ev(
            &[
                r#""kind":"decision","proto":"h2","tls":"TLSv1.3","decision":"allow","auth":"session","amr":["pwd","otp"]"#,
                r#""kind":"decision","proto":"h3","tls":"TLSv1.3","decision":"allow","auth":"bearer","amr":["pwd"]"#,
                r#""kind":"decision","proto":"h1","tls":"TLSv1.2","decision":"deny","reason":"not_permitted","auth":"anonymous""#,
                r#""kind":"decision","proto":"h1","tls":"TLSv1.3","decision":"deny","reason":"not_permitted""#,
                r#""kind":"complete","route":"img","status":200,"bytes_out":10,"sha256":"ab""#,
                r#""kind":"complete","route":"img","status":200,"bytes_out":10"#,
                r#""kind":"complete","route":"img","status":502,"reason":"upstream_unavailable""#,
                r#""kind":"complete","route":"ehr","status":200,"bytes_out":10"#,
                r#""kind":"event","event":"break_glass","route":"ehr","reason":"patient coding in ER""#,
                r#""kind":"event","event":"break_glass_use","sub":"alice","route":"ehr""#,
                r#""kind":"event","event":"key_rotation","reason":"session cookie key k2""#,
            ],
            &[],
        );
        let r = &t.requests;
        assert_eq!((r.total, r.allowed, r.denied), (4, 2, 2));
        assert_eq!((r.tls13, r.tls13_share), (3, Some(0.75)));
        assert_eq!((r.h3, r.h3_share), (1, Some(0.25)));
        assert_eq!(r.denials_by_reason["not_permitted"], 2);
        assert_eq!(r.by_auth["anonymous"], 2);
        assert_eq!((r.authenticated, r.authenticated_with_mfa), (2, 1));
        assert_eq!((r.integrity_transfers, r.integrity_hashed), (2, 1));
        assert_eq!(
            t.break_glass.elevations[0].justification,
            "patient coding in ER"
        );
        assert_eq!(t.break_glass.requests_by_user["alice"], 1);
        assert_eq!(t.rotations[0].detail, "session cookie key k2");
    }

    #[test]
    fn html_escapes_what_users_wrote() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn statuses_order_from_pass_to_fail() {
        assert!(Status::Fail > Status::Exception && Status::Exception > Status::Pass);
        assert_eq!(
            [Status::Pass, Status::Exception, Status::Info].iter().max(),
            Some(&Status::Exception)
        );
    }
}
