//! `dermgate.toml`: raw spanned TOML → validated [`Config`].
//!
//! The first stage of everything: `serve`, `check` and `demo` all load the
//! configuration here, and nowhere else. Every problem in the file is reported
//! at once, each with file:line:column and what was expected (see
//! [`dermgate_policy::text`]). Keys of DESIGN.md whose feature is not built yet
//! are recognised and refused with "not supported yet", so nobody believes a
//! control is active when it is not; keys that are not in the design are errors
//! with a did-you-mean.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dermgate_policy::text::{DeTable, Diagnostics, Reader, Value, position};
use http::Uri;

use crate::canonical;
use crate::tls;

/// A validated configuration: every value checked, every path resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// `[listen]`.
    pub listen: Listen,
    /// `[tls]`.
    pub tls: TlsFiles,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[limits]`.
    pub limits: Limits,
    /// `[policy]`: without it, only `public` routes are reachable.
    pub policy: Option<PolicyConfig>,
    /// `[audit]` (with `[keys] dir` for the checkpoint key).
    pub audit: Option<AuditConfig>,
    /// `[oidc]`, `[session]`, `[store]`: who is asking. Without it, only
    /// anonymous requests exist (public routes, and policy rules that need no identity).
    pub identity: Option<IdentityConfig>,
    /// `[alerts]` (defaults when absent).
    pub alerts: AlertsConfig,
    /// `[keys] dir`, when configured.
    pub keys_dir: Option<PathBuf>,
}

/// `[oidc]` + `[session]` + `[store]` + `[keys] dir`.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `[oidc]`.
    pub oidc: OidcConfig,
    /// `[session]`.
    pub session: SessionConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[keys] dir`: assertion and TOTP-secret keys (created 0700 on first start).
    pub keys_dir: PathBuf,
}

/// `[oidc]`: the identity provider (a value, not a global: several may come later).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// Our client id at the IdP.
    pub client_id: String,
    /// File holding the client secret (read at start, never logged).
    pub client_secret_file: PathBuf,
    /// The redirect URI registered at the IdP: `https://<auth host>/.dermgate/callback`.
    pub callback: String,
    /// `amr` values (or an `acr` value) that count as MFA.
    pub mfa_amr: Vec<String>,
    /// A private CA for the IdP's TLS certificate.
    pub ca: Option<PathBuf>,
    /// The claim that lists the user's groups.
    pub groups_claim: String,
    /// The `aud` bearer tokens must carry; without it bearer tokens are refused.
    pub api_audience: Option<String>,
}

/// `[session]`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The host that runs the OIDC callback; other hosts get sessions by handoff.
    pub auth_host: String,
    /// Idle timeout (default 30 min).
    pub idle: Duration,
    /// Absolute timeout (default 12 h).
    pub absolute: Duration,
    /// Cookie keys with ids (created on first start; `dermgate keys rotate` adds one).
    pub keys_file: PathBuf,
}

/// `[store]`: where sessions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// On disk, this process only (default `state/`).
    Embedded {
        /// Directory.
        path: PathBuf,
    },
    /// Redis/Valkey, shared by replicas.
    Redis {
        /// `redis://` or `rediss://` URL.
        url: String,
        /// A private CA for `rediss://`.
        ca: Option<PathBuf>,
    },
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The current audit file; rotated files sit beside it.
    pub file: PathBuf,
    /// `batch` (group commit every 50 ms) or `always` (forwarding waits for the fsync).
    pub sync: crate::audit::SyncMode,
    /// The documented retention; dermgate never deletes audit files.
    pub retain: Duration,
    /// `[keys] dir`: the checkpoint signing key lives here (created 0700 on first start).
    pub keys_dir: PathBuf,
    /// `stdout = true`: every record is also printed to standard output as a
    /// JSON line (journald under systemd, a log collector in Kubernetes).
    pub stdout: bool,
    /// `syslog = "tls://host:port"`: records also go to a syslog server over TLS (RFC 5425).
    pub syslog: Option<SyslogConfig>,
}

/// `[audit] syslog` and `syslog_ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// Host name (checked against the server certificate).
    pub host: String,
    /// TCP port (6514 by default).
    pub port: u16,
    /// A private CA for the syslog server (else the system roots).
    pub ca: Option<PathBuf>,
}

/// `[alerts]`: thresholds and the webhook. Alerts are raised (audit record,
/// Prometheus counter, log line) even without this section; the webhook only with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// One user's image downloads (integrity routes) within `export_window` above this raise an alert.
    pub export_bytes: u64,
    /// The export window.
    pub export_window: Duration,
    /// Failed step-up codes for one user or one source within `mfa_window` that raise an alert.
    pub mfa_failures: u64,
    /// The MFA failure window.
    pub mfa_window: Duration,
    /// A certificate (server or upstream CA) expiring within this raises an alert.
    pub cert_warning: Duration,
    /// `webhook`: alerts are POSTed here as JSON over TLS (retried, never blocking a request).
    pub webhook: Option<http::Uri>,
    /// A private CA for the webhook receiver.
    pub webhook_ca: Option<PathBuf>,
    /// The HMAC-SHA256 key of the `X-Dermgate-Signature` header (default `<keys dir>/alerts-webhook.key`, created on first start).
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            export_bytes: 5 << 30,
            export_window: Duration::from_secs(3600),
            mfa_failures: 5,
            mfa_window: Duration::from_secs(900),
            cert_warning: Duration::from_secs(30 * 86_400),
            webhook: None,
            webhook_ca: None,
            webhook_secret_file: None,
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The policy file (watched; `dermgate policy apply` rewrites it).
    pub file: PathBuf,
    /// Policy tests run before every apply; a failing policy is not applied.
    pub tests: Option<PathBuf>,
    /// How long a break-the-glass elevation lasts.
    pub break_glass_for: Duration,
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// TCP (h1, h2) and UDP (h3) address.
    pub addr: SocketAddr,
    /// Admin listener: health, readiness, metrics, admin API. Plain HTTP: keep it on loopback.
    pub admin: Option<SocketAddr>,
    /// The admin API's bearer token (file contents, trimmed). Without it the API refuses everything.
    pub admin_token_file: Option<PathBuf>,
    /// Optional listener that answers 308 to https and proxies nothing.
    pub redirect_http: Option<SocketAddr>,
    /// Peers whose client-address claims (PROXY protocol, `X-Forwarded-For`) are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Trusted peers send a PROXY protocol v2 header first.
    pub proxy_protocol: bool,
}

/// `[tls]`: the server certificate chain and key (PEM), and per-host certificates.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// `[[tls.sni]]`: other certificates for some hosts.
    pub sni: Vec<SniCert>,
}

/// One `[[tls.sni]]` entry.
#[derive(Debug, Clone)]
pub struct SniCert {
    /// Canonical host names this certificate serves.
    pub hosts: Vec<String>,
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (431 above it).
    pub header_bytes: u64,
    /// Requests per minute per source address (per user once identity lands); 429 above it.
    pub requests_per_minute_per_user: u32,
    /// Concurrent connections per source address; more are closed at once.
    pub connections_per_source: u32,
    /// Time allowed for the TLS handshake and the request head (slowloris).
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_bytes: 64 * 1024,
            requests_per_minute_per_user: 6000,
            connections_per_source: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name; policy rules and audit records use it.
    pub name: String,
    /// Canonical host: lowercase, no trailing dot, no port.
    pub host: String,
    /// Canonical path prefix, without a trailing slash unless it is `/`.
    pub path: String,
    /// Where requests go, in order (round robin).
    pub upstreams: Vec<Upstream>,
    /// CA that signs the upstreams' certificates (required for https upstreams).
    pub upstream_ca: Option<PathBuf>,
    /// Plaintext upstreams were asked for explicitly.
    pub allow_plaintext: bool,
    /// Served without identity.
    pub public: bool,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Largest request body (413 above it); `None` = no limit.
    pub max_body: Option<u64>,
    /// Active health-check path.
    pub health: Option<String>,
    /// WebSocket upgrades are allowed (h1 Upgrade, h2 extended CONNECT).
    pub websocket: bool,
    /// SHA-256 of every body into the audit record; stated upload digests are checked.
    pub integrity: bool,
    /// Session idle timeout on this route (overrides `[session] idle`).
    pub idle: Option<Duration>,
    /// Session absolute timeout on this route (overrides `[session] absolute`).
    pub absolute: Option<Duration>,
}

/// One upstream endpoint.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `https://host:port` or `http://host:port` (no path).
    pub uri: Uri,
    /// TLS to the upstream.
    pub tls: bool,
}

/// Upstream timeouts of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// From request sent to response head received.
    pub header: Duration,
    /// An idle pooled upstream connection is closed after this.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            header: Duration::from_secs(30),
            idle: Duration::from_secs(300),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// tracing level filter.
    pub level: String,
    /// `json` or `text`.
    pub format: LogFormat,
}

/// Operational log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable.
    Text,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read and is wrong; every problem is listed.
    #[error("{0}")]
    Invalid(Diagnostics),
}

// The document's sections: (section, keys built now, keys of DESIGN.md not built yet).
const TOP: &[&str] = &[
    "listen", "tls", "route", "log", "limits", "policy", "audit", "keys", "oidc", "session",
    "store", "alerts",
];
const TOP_NOT_YET: &[&str] = &[];
const ALERTS: &[&str] = &[
    "export_bytes",
    "export_window",
    "mfa_failures",
    "mfa_window",
    "cert_warning",
    "webhook",
    "webhook_ca",
    "webhook_secret_file",
];
const OIDC: &[&str] = &[
    "issuer",
    "client_id",
    "client_secret_file",
    "callback",
    "mfa_amr",
    "ca",
    "groups_claim",
    "api_audience",
];
const SESSION: &[&str] = &["auth_host", "idle", "absolute", "keys_file"];
const STORE: &[&str] = &["kind", "path", "url", "ca"];
const DEFAULT_MFA_AMR: &[&str] = &["otp", "mfa", "hwk", "swk", "fpt", "face"];
const AUDIT: &[&str] = &["file", "sync", "retain", "stdout", "syslog", "syslog_ca"];
const KEYS: &[&str] = &["dir"];
const POLICY: &[&str] = &["file", "tests", "break_glass_for"];
const LISTEN: &[&str] = &[
    "addr",
    "admin",
    "admin_token_file",
    "redirect_http",
    "trusted_proxies",
    "proxy_protocol",
];
const TLS: &[&str] = &["cert", "key", "sni"];
const TLS_NOT_YET: &[&str] = &["device_ca", "device_crl"];
const SNI: &[&str] = &["hosts", "cert", "key"];
const LIMITS: &[&str] = &[
    "header_bytes",
    "requests_per_minute_per_user",
    "connections_per_source",
    "header_timeout",
];
const ROUTE: &[&str] = &[
    "name",
    "host",
    "path",
    "upstreams",
    "upstream_ca",
    "allow_plaintext",
    "public",
    "timeouts",
    "health",
    "max_body",
    "websocket",
    "integrity",
    "idle",
    "absolute",
];
const TIMEOUTS: &[&str] = &["connect", "header", "idle"];
const LOG: &[&str] = &["level", "format"];
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
// Keys of the not-yet sections, so a typo inside them is still caught.
const NOT_YET_SECTIONS: &[(&str, &[&str])] = &[];

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text).map_err(ConfigError::Invalid)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, Diagnostics> {
        let file = path.display().to_string();
        let base = path.parent().unwrap_or(Path::new("."));
        let mut r = Reader::new(&file, text);
        let Some(doc) = r.parse() else {
            return Err(r.finish());
        };
        let mut v = Validator {
            r,
            base,
            sni_errors: Vec::new(),
        };
        let cfg = v.document(doc.get_ref(), doc.span());
        if !v.sni_errors.is_empty() {
            // Point at the [tls] table: the hosts named there serve no route.
            let at = doc.get_ref().get("tls").map_or(0..0, |t| t.span());
            let hosts = std::mem::take(&mut v.sni_errors).join(", ");
            v.r.error(
                at,
                format!("[[tls.sni]] names hosts that no [[route]] serves: {hosts}"),
            );
        }
        let diags = v.r.finish();
        match cfg {
            Some(mut cfg) if diags.is_empty() => {
                cfg.file = path.to_path_buf();
                // The policy is part of the configuration: its errors (with its own
                // file:line:column) refuse the configuration too.
                if let Some(p) = &cfg.policy
                    && let Err(e) = crate::policy::load(p, None, &cfg.route_names())
                {
                    return Err(e.into_diagnostics(&file));
                }
                Ok(cfg)
            }
            _ => Err(if diags.is_empty() {
                Diagnostics(vec![position(
                    &file,
                    text,
                    0,
                    "configuration is incomplete".into(),
                )])
            } else {
                diags
            }),
        }
    }

    /// Route names, for validating policy files.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }

    /// What an operator should know at start: public routes, plaintext upstreams,
    /// allow rules on protected routes that need neither MFA nor a visit room.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(p) = &self.policy
            && let Ok(policy) = crate::policy::load(p, None, &self.route_names())
        {
            for rule in policy.rules() {
                let weak = rule.effect == dermgate_policy::Effect::Allow
                    && rule.mfa_max_age.is_none()
                    && !rule.visit_room_own;
                let protected: Vec<&str> = self
                    .routes
                    .iter()
                    .filter(|r| !r.public)
                    .filter(|r| rule.routes.as_ref().is_none_or(|rs| rs.contains(&r.name)))
                    .map(|r| r.name.as_str())
                    .collect();
                if weak && !protected.is_empty() {
                    w.push(format!(
                        "policy rule `{}` allows protected route(s) {} without MFA or a visit room",
                        rule.name,
                        protected.join(", ")
                    ));
                }
            }
        }
        for r in &self.routes {
            if r.public {
                w.push(format!(
                    "route `{}` is public: served without identity or policy",
                    r.name
                ));
            }
            for u in r.upstreams.iter().filter(|u| !u.tls) {
                w.push(format!(
                    "route `{}` forwards in plaintext to {} (allow_plaintext = true)",
                    r.name, u.uri
                ));
            }
        }
        w
    }

    /// A short summary of listeners and routes, for `dermgate check`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: ok\nlisten: https://{} (TCP, TLS 1.3 only, ALPN h2, http/1.1)\nroutes: {}\n",
            self.file.display(),
            self.listen.addr,
            self.routes.len()
        );
        for r in &self.routes {
            let ups: Vec<String> = r.upstreams.iter().map(|u| u.uri.to_string()).collect();
            s.push_str(&format!(
                "  {:<12} {}{} -> {}{}\n",
                r.name,
                r.host,
                r.path,
                ups.join(", "),
                if r.public { "  [public]" } else { "" }
            ));
        }
        for w in self.warnings() {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}

struct Validator<'s> {
    r: Reader<'s>,
    base: &'s Path,
    sni_errors: Vec<String>,
}

impl Validator<'_> {
    fn document(&mut self, doc: &DeTable<'_>, span: Range<usize>) -> Option<Config> {
        self.r
            .check_keys(doc, "the configuration", TOP, TOP_NOT_YET);
        for (section, keys) in NOT_YET_SECTIONS {
            if let Some(v) = doc.get(*section)
                && let Some(t) = v.get_ref().as_table()
            {
                self.r.check_keys(t, &format!("[{section}]"), keys, &[]);
            }
        }
        let listen = self
            .section(doc, span.clone(), "listen")
            .and_then(|(t, at)| self.listen(t, at));
        let tls = self
            .section(doc, span.clone(), "tls")
            .and_then(|(t, at)| self.tls(t, at));
        let log = match doc.get("log") {
            None => Some(LogConfig::default()),
            Some(v) => self.r.table(v, "log").and_then(|t| self.log(t)),
        };
        let limits = match doc.get("limits") {
            None => Some(Limits::default()),
            Some(v) => self.r.table(v, "limits").map(|t| self.limits(t)),
        };
        let policy = match doc.get("policy") {
            None => Some(None),
            Some(v) => self.r.table(v, "policy").map(|t| self.policy(t, v.span())),
        };
        let keys_dir = match doc.get("keys") {
            None => None,
            Some(v) => self.r.table(v, "keys").and_then(|t| {
                self.r.check_keys(t, "[keys]", KEYS, &[]);
                let d = self.r.required(
                    t,
                    v.span(),
                    "[keys]",
                    "dir",
                    "a directory such as \"secrets/\"",
                )?;
                self.path(d, "dir")
            }),
        };
        let audit = match doc.get("audit") {
            None => Some(None),
            Some(v) => self
                .r
                .table(v, "audit")
                .map(|t| self.audit(t, v.span(), keys_dir.clone())),
        };
        let alerts = match doc.get("alerts") {
            None => Some(AlertsConfig::default()),
            Some(v) => self
                .r
                .table(v, "alerts")
                .and_then(|t| self.alerts(t, v.span(), keys_dir.as_deref())),
        };
        let identity = match doc.get("oidc") {
            None => {
                for section in ["session", "store"] {
                    if let Some(v) = doc.get(section) {
                        self.r.error(
                            v.span(),
                            format!(
                                "[{section}] needs [oidc]: sessions come from an identity provider"
                            ),
                        );
                    }
                }
                Some(None)
            }
            Some(v) => self.identity(doc, v, keys_dir.clone()).map(Some),
        };
        let routes = self.routes(doc, span);
        let tls = tls?;
        let routes = routes?;
        // Every SNI host must be a route host, or the certificate is dead weight (or a typo).
        for s in &tls.sni {
            for h in &s.hosts {
                if !routes.iter().any(|r| &r.host == h) {
                    self.sni_errors.push(h.clone());
                }
            }
        }
        Some(Config {
            file: PathBuf::new(),
            listen: listen?,
            tls,
            routes,
            log: log?,
            limits: limits?,
            policy: policy?,
            audit: audit?,
            identity: identity?,
            alerts: alerts?,
            keys_dir,
        })
    }

    fn https_url(&mut self, v: &Value<'_>, key: &str) -> Option<http::Uri> {
        let s = self.r.str(v, key, "an https URL")?;
        match s.parse::<Uri>() {
            Ok(u)
                if u.scheme_str() == Some("https") && u.host().is_some() && u.query().is_none() =>
            {
                Some(u)
            }
            _ => {
                self.r.error(
                    v.span(),
                    format!("`{key}`: expected an https URL such as \"https://login.example.com\", found \"{s}\""),
                );
                None
            }
        }
    }

    fn identity(
        &mut self,
        doc: &DeTable<'_>,
        oidc_v: &Value<'_>,
        keys_dir: Option<PathBuf>,
    ) -> Option<IdentityConfig> {
        let t = self.r.table(oidc_v, "oidc")?;
        let at = oidc_v.span();
        self.r.check_keys(t, "[oidc]", OIDC, &[]);
        let issuer = self
            .r
            .required(t, at.clone(), "[oidc]", "issuer", "the IdP's issuer URL")
            .and_then(|v| {
                self.https_url(v, "issuer")?;
                Some(
                    self.r
                        .str(v, "issuer", "")?
                        .trim_end_matches('/')
                        .to_string(),
                )
            });
        let client_id = self
            .r
            .required(
                t,
                at.clone(),
                "[oidc]",
                "client_id",
                "our client id at the IdP",
            )
            .and_then(|v| {
                self.r
                    .str(v, "client_id", "a client id")
                    .map(str::to_string)
            });
        let client_secret_file = self
            .r
            .required(
                t,
                at.clone(),
                "[oidc]",
                "client_secret_file",
                "a file holding the client secret",
            )
            .and_then(|v| self.existing_file(v, "client_secret_file"));
        let callback = self
            .r
            .required(
                t,
                at.clone(),
                "[oidc]",
                "callback",
                "\"https://<auth host>/.dermgate/callback\"",
            )
            .and_then(|v| {
                let u = self.https_url(v, "callback")?;
                if u.path() != "/.dermgate/callback" {
                    self.r
                        .error(v.span(), "`callback`: the path must be /.dermgate/callback");
                    return None;
                }
                Some(u)
            });
        let mfa_amr = match t.get("mfa_amr") {
            None => Some(DEFAULT_MFA_AMR.iter().map(|s| s.to_string()).collect()),
            Some(v) => self
                .r
                .str_array(v, "mfa_amr", "amr values such as [\"otp\", \"hwk\"]")
                .map(|items| items.iter().map(|i| i.get_ref().to_string()).collect()),
        };
        let ca = t.get("ca").and_then(|v| {
            let p = self.existing_file(v, "ca")?;
            if let Err(e) = tls::load_roots(&p) {
                self.r.error(v.span(), format!("`ca`: {e}"));
                return None;
            }
            Some(p)
        });
        let groups_claim = match t.get("groups_claim") {
            None => Some("groups".to_string()),
            Some(v) => self
                .r
                .str(v, "groups_claim", "a claim name")
                .map(str::to_string),
        };
        let api_audience = t.get("api_audience").and_then(|v| {
            self.r
                .str(v, "api_audience", "an audience such as \"dermgate-api\"")
                .map(str::to_string)
        });
        if keys_dir.is_none() {
            self.r.error(
                at.clone(),
                "[oidc] needs [keys] dir: the directory for the assertion, TOTP and session keys",
            );
        }
        let session = self.session(doc, callback.as_ref(), keys_dir.as_deref());
        let store = self.store(doc);
        Some(IdentityConfig {
            oidc: OidcConfig {
                issuer: issuer?,
                client_id: client_id?,
                client_secret_file: client_secret_file?,
                callback: callback?.to_string(),
                mfa_amr: mfa_amr?,
                ca,
                groups_claim: groups_claim?,
                api_audience,
            },
            session: session?,
            store: store?,
            keys_dir: keys_dir?,
        })
    }

    fn session(
        &mut self,
        doc: &DeTable<'_>,
        callback: Option<&Uri>,
        keys_dir: Option<&Path>,
    ) -> Option<SessionConfig> {
        let t = match doc.get("session") {
            None => None,
            Some(v) => Some(self.r.table(v, "session")?),
        };
        if let Some(t) = t {
            self.r.check_keys(t, "[session]", SESSION, &[]);
        }
        let get = |k: &str| t.and_then(|t| t.get(k));
        let auth_host = match get("auth_host") {
            Some(v) => {
                let s = self.r.str(v, "auth_host", "a host name")?;
                match canonical::canonical_host(s) {
                    Some(h) if !s.contains(':') && !s.contains('/') => Some(h.into_owned()),
                    _ => {
                        self.r.error(
                            v.span(),
                            format!("`auth_host`: expected a host name without scheme, port or path, found \"{s}\""),
                        );
                        None
                    }
                }
            }
            None => callback
                .and_then(|u| u.host())
                .and_then(canonical::canonical_host)
                .map(|h| h.into_owned()),
        };
        let mut duration = |k: &str, default: u64| match get(k) {
            None => Some(Duration::from_secs(default)),
            Some(v) => {
                let d = self.r.duration(v, k)?;
                if d.is_zero() {
                    self.r
                        .error(v.span(), format!("`{k}` must be more than 0s"));
                    return None;
                }
                Some(d)
            }
        };
        let idle = duration("idle", 30 * 60);
        let absolute = duration("absolute", 12 * 3600);
        let keys_file = match get("keys_file") {
            Some(v) => self.path(v, "keys_file"),
            None => keys_dir.map(|d| d.join("session-keys")),
        };
        Some(SessionConfig {
            auth_host: auth_host?,
            idle: idle?,
            absolute: absolute?,
            keys_file: keys_file?,
        })
    }

    fn store(&mut self, doc: &DeTable<'_>) -> Option<StoreConfig> {
        let Some(v) = doc.get("store") else {
            return Some(StoreConfig::Embedded {
                path: self.base.join("state"),
            });
        };
        let t = self.r.table(v, "store")?;
        self.r.check_keys(t, "[store]", STORE, &[]);
        let kind = match t.get("kind") {
            None => "embedded",
            Some(k) => match self.r.str(k, "kind", "\"embedded\" or \"redis\"")? {
                "embedded" => "embedded",
                "redis" => "redis",
                other => {
                    self.r.error(
                        k.span(),
                        dermgate_policy::text::unknown(
                            &format!("store kind \"{other}\""),
                            other,
                            &["embedded", "redis"],
                        ),
                    );
                    return None;
                }
            },
        };
        if kind == "embedded" {
            for k in ["url", "ca"] {
                if let Some(x) = t.get(k) {
                    self.r
                        .error(x.span(), format!("`{k}` is for kind = \"redis\""));
                }
            }
            let path = match t.get("path") {
                Some(p) => self.path(p, "path")?,
                None => self.base.join("state"),
            };
            return Some(StoreConfig::Embedded { path });
        }
        if let Some(x) = t.get("path") {
            self.r.error(x.span(), "`path` is for kind = \"embedded\"");
        }
        let url = self
            .r
            .required(
                t,
                v.span(),
                "[store]",
                "url",
                "\"redis://host:6379/0\" or \"rediss://…\"",
            )
            .and_then(|u| {
                let s = self.r.str(u, "url", "a redis URL")?;
                if s.starts_with("redis://") || s.starts_with("rediss://") {
                    Some(s.to_string())
                } else {
                    self.r.error(
                        u.span(),
                        format!("`url`: expected redis:// or rediss://, found \"{s}\""),
                    );
                    None
                }
            });
        let ca = t.get("ca").and_then(|c| self.existing_file(c, "ca"));
        Some(StoreConfig::Redis { url: url?, ca })
    }

    fn policy(&mut self, t: &DeTable<'_>, at: Range<usize>) -> Option<PolicyConfig> {
        self.r.check_keys(t, "[policy]", POLICY, &[]);
        let file = self
            .r
            .required(
                t,
                at,
                "[policy]",
                "file",
                "the policy file, e.g. \"policy.toml\"",
            )
            .and_then(|v| self.existing_file(v, "file"));
        let tests = t.get("tests").and_then(|v| self.existing_file(v, "tests"));
        let break_glass_for = match t.get("break_glass_for") {
            Some(v) => self.r.duration(v, "break_glass_for")?,
            None => Duration::from_secs(3600),
        };
        Some(PolicyConfig {
            file: file?,
            tests,
            break_glass_for,
        })
    }

    fn audit(
        &mut self,
        t: &DeTable<'_>,
        at: Range<usize>,
        keys_dir: Option<PathBuf>,
    ) -> Option<AuditConfig> {
        self.r.check_keys(t, "[audit]", AUDIT, &[]);
        let file = self
            .r
            .required(
                t,
                at.clone(),
                "[audit]",
                "file",
                "the audit file, e.g. \"audit/audit.jsonl\"",
            )
            .and_then(|v| self.path(v, "file"));
        let sync = match t.get("sync") {
            None => Some(crate::audit::SyncMode::Batch),
            Some(v) => match self.r.str(v, "sync", "\"batch\" or \"always\"") {
                Some("batch") => Some(crate::audit::SyncMode::Batch),
                Some("always") => Some(crate::audit::SyncMode::Always),
                Some(other) => {
                    self.r.error(
                        v.span(),
                        dermgate_policy::text::unknown(
                            &format!("sync mode \"{other}\""),
                            other,
                            &["batch", "always"],
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        let retain = match t.get("retain") {
            None => Some(Duration::from_secs(6 * 365 * 86_400)),
            Some(v) => self.r.duration(v, "retain"),
        };
        if keys_dir.is_none() {
            self.r.error(
                at,
                "[audit] needs [keys] dir: the directory where the checkpoint signing key is kept",
            );
        }
        let stdout = match t.get("stdout") {
            None => Some(false),
            Some(v) => self.r.bool(v, "stdout"),
        };
        let syslog_ca = match t.get("syslog_ca") {
            None => Some(None),
            Some(v) => self.existing_file(v, "syslog_ca").map(Some),
        };
        let syslog = match t.get("syslog") {
            None => Some(None),
            Some(v) => self.syslog_url(v).map(Some),
        };
        let syslog = match (syslog?, syslog_ca?) {
            (Some((host, port)), ca) => Some(SyslogConfig { host, port, ca }),
            (None, Some(_)) => {
                if let Some(v) = t.get("syslog_ca") {
                    self.r
                        .error(v.span(), "`syslog_ca` is set but `syslog` is not");
                }
                return None;
            }
            (None, None) => None,
        };
        Some(AuditConfig {
            file: file?,
            sync: sync?,
            retain: retain?,
            keys_dir: keys_dir?,
            stdout: stdout?,
            syslog,
        })
    }

    fn syslog_url(&mut self, v: &Value<'_>) -> Option<(String, u16)> {
        let s = self.r.str(
            v,
            "syslog",
            "\"tls://host:port\" (RFC 5425 syslog over TLS)",
        )?;
        let parsed = s.strip_prefix("tls://").and_then(|rest| {
            let u = format!("https://{rest}").parse::<Uri>().ok()?;
            let ok = u.host().is_some() && matches!(u.path(), "" | "/") && u.query().is_none();
            ok.then(|| {
                (
                    u.host()
                        .unwrap_or_default()
                        .trim_matches(['[', ']'])
                        .to_string(),
                    u.port_u16().unwrap_or(6514),
                )
            })
        });
        if parsed.is_none() {
            self.r.error(
                v.span(),
                format!("`syslog`: expected \"tls://host:port\" (RFC 5425 syslog over TLS; plaintext syslog is not offered), found \"{s}\""),
            );
        }
        parsed
    }

    fn alerts(
        &mut self,
        t: &DeTable<'_>,
        at: Range<usize>,
        keys_dir: Option<&Path>,
    ) -> Option<AlertsConfig> {
        self.r.check_keys(t, "[alerts]", ALERTS, &[]);
        let mut a = AlertsConfig::default();
        let mut ok = true;
        if let Some(v) = t.get("export_bytes") {
            match self.r.size(v, "export_bytes") {
                Some(n) => a.export_bytes = n,
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("export_window", &mut a.export_window),
            ("mfa_window", &mut a.mfa_window),
            ("cert_warning", &mut a.cert_warning),
        ] {
            if let Some(v) = t.get(key) {
                match self.r.duration(v, key) {
                    Some(d) if !d.is_zero() => *slot = d,
                    Some(_) => {
                        self.r
                            .error(v.span(), format!("`{key}` must be longer than 0s"));
                        ok = false;
                    }
                    None => ok = false,
                }
            }
        }
        if let Some(v) = t.get("mfa_failures") {
            match self.r.uint(v, "mfa_failures") {
                Some(n) if n > 0 => a.mfa_failures = n,
                Some(_) => {
                    self.r.error(v.span(), "`mfa_failures` must be at least 1");
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(v) = t.get("webhook") {
            match self.https_url(v, "webhook") {
                Some(u) => a.webhook = Some(u),
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("webhook_ca", &mut a.webhook_ca),
            ("webhook_secret_file", &mut a.webhook_secret_file),
        ] {
            if let Some(v) = t.get(key) {
                match self.existing_file(v, key) {
                    Some(p) => *slot = Some(p),
                    None => ok = false,
                }
            }
        }
        if a.webhook.is_some() && a.webhook_secret_file.is_none() && keys_dir.is_none() {
            self.r.error(
                at,
                "[alerts] webhook needs `webhook_secret_file` or [keys] dir (where its signing key is created)",
            );
            ok = false;
        }
        ok.then_some(a)
    }

    fn limits(&mut self, t: &DeTable<'_>) -> Limits {
        self.r.check_keys(t, "[limits]", LIMITS, &[]);
        let mut l = Limits::default();
        if let Some(v) = t.get("header_bytes")
            && let Some(n) = self.r.size(v, "header_bytes")
        {
            if (1024..=1024 * 1024).contains(&n) {
                l.header_bytes = n;
            } else {
                self.r
                    .error(v.span(), "`header_bytes` must be between 1KiB and 1MiB");
            }
        }
        for (key, slot) in [
            (
                "requests_per_minute_per_user",
                &mut l.requests_per_minute_per_user,
            ),
            ("connections_per_source", &mut l.connections_per_source),
        ] {
            if let Some(v) = t.get(key)
                && let Some(n) = self.r.uint(v, key)
            {
                match u32::try_from(n) {
                    Ok(n) if n > 0 => *slot = n,
                    _ => self.r.error(
                        v.span(),
                        format!("`{key}` must be between 1 and {}", u32::MAX),
                    ),
                }
            }
        }
        if let Some(v) = t.get("header_timeout")
            && let Some(d) = self.r.duration(v, "header_timeout")
        {
            if d.is_zero() {
                self.r
                    .error(v.span(), "`header_timeout` must be more than 0s");
            } else {
                l.header_timeout = d;
            }
        }
        l
    }

    fn section<'t, 'i>(
        &mut self,
        doc: &'t DeTable<'i>,
        at: Range<usize>,
        name: &str,
    ) -> Option<(&'t DeTable<'i>, Range<usize>)> {
        let v = self.r.required(
            doc,
            at,
            "the configuration",
            name,
            &format!("a [{name}] table"),
        )?;
        self.r.table(v, name).map(|t| (t, v.span()))
    }

    fn socket_addr(&mut self, v: &Value<'_>, key: &str) -> Option<SocketAddr> {
        let s = self.r.str(v, key, "an address such as \"0.0.0.0:443\"")?;
        match s.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.r.error(
                    v.span(),
                    format!("`{key}`: expected IP:PORT such as \"0.0.0.0:443\" or \"[::]:443\", found \"{s}\""),
                );
                None
            }
        }
    }

    fn listen(&mut self, t: &DeTable<'_>, at: Range<usize>) -> Option<Listen> {
        self.r.check_keys(t, "[listen]", LISTEN, &[]);
        let addr = self
            .r
            .required(
                t,
                at,
                "[listen]",
                "addr",
                "an address such as \"0.0.0.0:443\"",
            )
            .and_then(|v| self.socket_addr(v, "addr"));
        let admin = t.get("admin").and_then(|v| self.socket_addr(v, "admin"));
        let redirect_http = t
            .get("redirect_http")
            .and_then(|v| self.socket_addr(v, "redirect_http"));
        let admin_token_file = t
            .get("admin_token_file")
            .and_then(|v| self.existing_file(v, "admin_token_file"));
        let mut trusted_proxies = Vec::new();
        if let Some(v) = t.get("trusted_proxies")
            && let Some(items) =
                self.r
                    .str_array(v, "trusted_proxies", "CIDRs such as \"10.0.0.0/8\"")
        {
            for item in items {
                let s = *item.get_ref();
                match s
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                {
                    Ok(n) => trusted_proxies.push(n.trunc()),
                    Err(_) => self.r.error(
                        item.span(),
                        format!("`trusted_proxies`: expected a CIDR such as \"10.0.0.0/8\" or an address, found \"{s}\""),
                    ),
                }
            }
        }
        let proxy_protocol = match t.get("proxy_protocol") {
            Some(v) => {
                let on = self.r.bool(v, "proxy_protocol").unwrap_or(false);
                if on && t.get("trusted_proxies").is_none() {
                    self.r.error(
                        v.span(),
                        "`proxy_protocol = true` needs `trusted_proxies`: the load balancers whose PROXY headers are believed",
                    );
                }
                on
            }
            None => false,
        };
        if let (Some(a), Some(v)) = (admin, t.get("admin"))
            && Some(a) == addr
            && a.port() != 0
        {
            self.r.error(v.span(), "`admin` must differ from `addr`");
        }
        Some(Listen {
            addr: addr?,
            admin,
            admin_token_file,
            redirect_http,
            trusted_proxies,
            proxy_protocol,
        })
    }

    fn path(&mut self, v: &Value<'_>, key: &str) -> Option<PathBuf> {
        let s = self.r.str(v, key, "a file path")?;
        if s.is_empty() {
            self.r.error(v.span(), format!("`{key}` must not be empty"));
            return None;
        }
        Some(self.base.join(s))
    }

    fn existing_file(&mut self, v: &Value<'_>, key: &str) -> Option<PathBuf> {
        let p = self.path(v, key)?;
        if !p.is_file() {
            self.r
                .error(v.span(), format!("`{key}`: no such file: {}", p.display()));
            return None;
        }
        Some(p)
    }

    /// A `cert` + `key` pair in `t`, loaded and checked to belong together.
    fn cert_pair(
        &mut self,
        t: &DeTable<'_>,
        at: Range<usize>,
        what: &str,
    ) -> Option<(PathBuf, PathBuf)> {
        let cert_v = self
            .r
            .required(t, at.clone(), what, "cert", "the server certificate (PEM)");
        let key_v = self
            .r
            .required(t, at, what, "key", "the server private key (PEM)");
        let cert = cert_v.and_then(|v| self.existing_file(v, "cert"));
        let key = key_v.and_then(|v| self.existing_file(v, "key"));
        let (cert, key) = (cert?, key?);
        let (Some(cert_v), Some(key_v)) = (cert_v, key_v) else {
            return None;
        };
        match tls::load_chain(&cert) {
            Err(e) => self.r.error(cert_v.span(), format!("`cert`: {e}")),
            Ok(_) => {
                if let Err(e) = tls::load_key(&key) {
                    self.r.error(key_v.span(), format!("`key`: {e}"));
                } else if let Err(e) = tls::certified_key(&cert, &key) {
                    self.r.error(key_v.span(), format!("`cert`/`key`: {e}"));
                }
            }
        }
        Some((cert, key))
    }

    fn tls(&mut self, t: &DeTable<'_>, at: Range<usize>) -> Option<TlsFiles> {
        self.r.check_keys(t, "[tls]", TLS, TLS_NOT_YET);
        let pair = self.cert_pair(t, at, "[tls]");
        let mut sni = Vec::new();
        if let Some(v) = t.get("sni") {
            for (span, st) in self.r.table_array(v, "sni") {
                self.r.check_keys(st, "[[tls.sni]]", SNI, &[]);
                let hosts = self
                    .r
                    .required(
                        st,
                        span.clone(),
                        "[[tls.sni]]",
                        "hosts",
                        "a list of host names",
                    )
                    .and_then(|hv| {
                        let items = self.r.str_array(hv, "hosts", "host names")?;
                        let mut hosts = Vec::new();
                        for item in items {
                            match canonical::canonical_host(item.get_ref()) {
                                Some(h) if !item.get_ref().contains(':') => {
                                    hosts.push(h.into_owned())
                                }
                                _ => self.r.error(
                                    item.span(),
                                    format!(
                                        "`hosts`: expected a host name, found \"{}\"",
                                        item.get_ref()
                                    ),
                                ),
                            }
                        }
                        if hosts.is_empty() {
                            self.r
                                .error(hv.span(), "`hosts` must list at least one host");
                        }
                        Some(hosts)
                    });
                if let (Some(hosts), Some((cert, key))) =
                    (hosts, self.cert_pair(st, span, "[[tls.sni]]"))
                {
                    sni.push(SniCert { hosts, cert, key });
                }
            }
        }
        let (cert, key) = pair?;
        Some(TlsFiles { cert, key, sni })
    }

    fn log(&mut self, t: &DeTable<'_>) -> Option<LogConfig> {
        self.r.check_keys(t, "[log]", LOG, &[]);
        let mut log = LogConfig::default();
        if let Some(v) = t.get("level") {
            let s = self
                .r
                .str(v, "level", "one of trace, debug, info, warn, error")?;
            if !LEVELS.contains(&s) {
                self.r.error(
                    v.span(),
                    dermgate_policy::text::unknown(&format!("log level \"{s}\""), s, LEVELS),
                );
                return None;
            }
            log.level = s.to_string();
        }
        if let Some(v) = t.get("format") {
            match self.r.str(v, "format", "\"json\" or \"text\"")? {
                "json" => log.format = LogFormat::Json,
                "text" => log.format = LogFormat::Text,
                s => {
                    self.r.error(
                        v.span(),
                        dermgate_policy::text::unknown(
                            &format!("log format \"{s}\""),
                            s,
                            &["json", "text"],
                        ),
                    );
                    return None;
                }
            }
        }
        Some(log)
    }

    fn routes(&mut self, doc: &DeTable<'_>, at: Range<usize>) -> Option<Vec<RouteConfig>> {
        let v = self.r.required(
            doc,
            at,
            "the configuration",
            "route",
            "at least one [[route]] table",
        )?;
        let tables = self.r.table_array(v, "route");
        if tables.is_empty() {
            self.r.error(v.span(), "at least one [[route]] is needed");
            return None;
        }
        let mut out: Vec<RouteConfig> = Vec::new();
        let mut ok = true;
        for (span, t) in tables {
            match self.route(t, span.clone()) {
                Some(r) => {
                    if let Some(prev) = out.iter().find(|p| p.name == r.name) {
                        self.r.error(
                            t.get("name").map_or(span.clone(), |v| v.span()),
                            format!(
                                "route name `{}` is used twice; names must be unique",
                                prev.name
                            ),
                        );
                        ok = false;
                    } else if let Some(prev) =
                        out.iter().find(|p| p.host == r.host && p.path == r.path)
                    {
                        self.r.error(
                            t.get("path").or(t.get("host")).map_or(span, |v| v.span()),
                            format!(
                                "route `{}` has the same host and path as route `{}`",
                                r.name, prev.name
                            ),
                        );
                        ok = false;
                    } else {
                        out.push(r);
                    }
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn route(&mut self, t: &DeTable<'_>, at: Range<usize>) -> Option<RouteConfig> {
        self.r.check_keys(t, "[[route]]", ROUTE, &[]);
        let name = self
            .r
            .required(
                t,
                at.clone(),
                "[[route]]",
                "name",
                "a route name such as \"ehr\"",
            )
            .and_then(|v| {
                let s = self.r.str(v, "name", "a route name")?;
                if s.is_empty()
                    || !s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
                {
                    self.r.error(
                        v.span(),
                        format!(
                            "route name \"{s}\": expected lowercase letters, digits, '-' or '_'"
                        ),
                    );
                    return None;
                }
                Some(s.to_string())
            });
        let host = self
            .r
            .required(t, at.clone(), "[[route]]", "host", "a host name such as \"ehr.example.com\"")
            .and_then(|v| {
                let s = self.r.str(v, "host", "a host name")?;
                match canonical::canonical_host(s) {
                    Some(h) if !s.contains(':') || s.starts_with('[') => Some(h.into_owned()),
                    _ => {
                        self.r.error(
                            v.span(),
                            format!("`host`: expected a host name without scheme, port or path, found \"{s}\""),
                        );
                        None
                    }
                }
            });
        let path = match t.get("path") {
            None => Some("/".to_string()),
            Some(v) => self.r.str(v, "path", "a path prefix such as \"/\"").and_then(|s| {
                match canonical::canonical_path(s) {
                    Ok(c) if c.decoded == s || format!("{}/", c.decoded) == s => {
                        let p = c.decoded.trim_end_matches('/');
                        Some(if p.is_empty() { "/".into() } else { p.to_string() })
                    }
                    _ => {
                        self.r.error(
                            v.span(),
                            format!("`path`: expected a canonical path prefix starting with '/' (no '..', '//', '%', query), found \"{s}\""),
                        );
                        None
                    }
                }
            }),
        };
        let allow_plaintext = match t.get("allow_plaintext") {
            Some(v) => self.r.bool(v, "allow_plaintext").unwrap_or(false),
            None => false,
        };
        let public = match t.get("public") {
            Some(v) => self.r.bool(v, "public").unwrap_or(false),
            None => false,
        };
        let upstream_ca = t.get("upstream_ca").and_then(|v| {
            let p = self.existing_file(v, "upstream_ca")?;
            if let Err(e) = tls::load_roots(&p) {
                self.r.error(v.span(), format!("`upstream_ca`: {e}"));
                return None;
            }
            Some(p)
        });
        let upstreams = self
            .r
            .required(
                t,
                at.clone(),
                "[[route]]",
                "upstreams",
                "a list of URLs such as [\"https://10.0.0.5:8443\"]",
            )
            .and_then(|v| {
                self.upstreams(
                    v,
                    allow_plaintext,
                    upstream_ca.is_some() || t.contains_key("upstream_ca"),
                    at.clone(),
                )
            });
        let timeouts = match t.get("timeouts") {
            None => Some(Timeouts::default()),
            Some(v) => self.r.table(v, "timeouts").map(|tt| {
                self.r.check_keys(tt, "route `timeouts`", TIMEOUTS, &[]);
                let mut to = Timeouts::default();
                for (key, slot) in [
                    ("connect", &mut to.connect),
                    ("header", &mut to.header),
                    ("idle", &mut to.idle),
                ] {
                    if let Some(d) = tt.get(key).and_then(|v| self.r.duration(v, key)) {
                        *slot = d;
                    }
                }
                to
            }),
        };
        let max_body = t.get("max_body").and_then(|v| self.r.size(v, "max_body"));
        let websocket = match t.get("websocket") {
            Some(v) => self.r.bool(v, "websocket").unwrap_or(false),
            None => false,
        };
        let integrity = match t.get("integrity") {
            Some(v) => self.r.bool(v, "integrity").unwrap_or(false),
            None => false,
        };
        let mut session_timeout = |k: &str| match t.get(k) {
            None => Some(None),
            Some(v) => match self.r.duration(v, k) {
                Some(d) if !d.is_zero() => Some(Some(d)),
                Some(_) => {
                    self.r
                        .error(v.span(), format!("`{k}` must be more than 0s"));
                    None
                }
                None => None,
            },
        };
        let idle = session_timeout("idle");
        let absolute = session_timeout("absolute");
        let health = match t.get("health") {
            None => None,
            Some(v) => {
                let s = self.r.str(v, "health", "a path such as \"/healthz\"")?;
                match canonical::canonical_path(s) {
                    Ok(c) if c.encoded == s => Some(s.to_string()),
                    _ => {
                        self.r.error(
                            v.span(),
                            format!("`health`: expected a canonical path such as \"/healthz\", found \"{s}\""),
                        );
                        return None;
                    }
                }
            }
        };
        Some(RouteConfig {
            name: name?,
            host: host?,
            path: path?,
            upstreams: upstreams?,
            upstream_ca,
            allow_plaintext,
            public,
            timeouts: timeouts?,
            max_body,
            health,
            websocket,
            integrity,
            idle: idle?,
            absolute: absolute?,
        })
    }

    fn upstreams(
        &mut self,
        v: &Value<'_>,
        allow_plaintext: bool,
        has_ca: bool,
        route_at: Range<usize>,
    ) -> Option<Vec<Upstream>> {
        let items = self
            .r
            .str_array(v, "upstreams", "URLs such as \"https://10.0.0.5:8443\"")?;
        if items.is_empty() {
            self.r
                .error(v.span(), "`upstreams` must list at least one URL");
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut need_ca = false;
        for item in items {
            let s = *item.get_ref();
            let parsed = s.parse::<Uri>().ok().filter(|u| {
                u.authority()
                    .is_some_and(|a| a.port_u16().is_some() || !a.as_str().ends_with(':'))
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none()
                    && !u.authority().is_some_and(|a| a.as_str().contains('@'))
            });
            let Some(uri) = parsed else {
                self.r.error(
                    item.span(),
                    format!("upstream \"{s}\": expected scheme://host:port with no path, e.g. \"https://10.0.0.5:8443\""),
                );
                continue;
            };
            match uri.scheme_str() {
                Some("https") => {
                    need_ca = true;
                    out.push(Upstream { uri, tls: true });
                }
                Some("http") if allow_plaintext => out.push(Upstream { uri, tls: false }),
                Some("http") => self.r.error(
                    item.span(),
                    format!("upstream \"{s}\" is plaintext: use https, or set `allow_plaintext = true` on this route to accept the risk"),
                ),
                _ => self.r.error(
                    item.span(),
                    format!("upstream \"{s}\": expected an https:// (or, with allow_plaintext, http://) URL"),
                ),
            }
        }
        if need_ca && !has_ca {
            self.r.error(
                route_at,
                "route has https upstreams but no `upstream_ca` (expected the CA file that signs the upstreams' certificates)",
            );
        }
        Some(out)
    }
}
