//! Policy tests: a file of request scenarios with expected decisions
//! (`dermgate policy test policy.toml cases.toml`), and the single request of
//! `dermgate policy explain --request '{ ... }'`.
//!
//! Both are read with the same [`Reader`] as the policy, so a mistake in a
//! cases file is reported with file:line:column too. Times may be RFC 3339
//! with an offset, or relative to a `now` the caller passes in (`now`,
//! `now+1h`, `now-30m`): this module never reads the clock.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::ast::Effect;
use crate::compile::CompiledPolicy;
use crate::decision::{DenyReason, DeviceFacts, RequestFacts};
use crate::error::ValueError;
use crate::text::{
    DeTable, DeValue, Diagnostics, LineIndex, Reader, Value, parse_duration, unknown,
};

const CASE_KEYS: &[&str] = &["name", "expect", "rule", "request"];
const REQUEST_KEYS: &[&str] = &[
    "route",
    "method",
    "path",
    "source",
    "user",
    "groups",
    "claims",
    "mfa_age",
    "time",
    "device",
    "visit_room",
    "break_glass",
];
const DEVICE_KEYS: &[&str] = &[
    "managed",
    "disk_encrypted",
    "screen_lock",
    "os",
    "os_version",
    "checkin_age",
];

/// A request scenario as owned data; [`RequestSpec::facts`] borrows it as
/// [`RequestFacts`].
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    /// Route name.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Canonical path.
    pub path: String,
    /// Client address.
    pub source: IpAddr,
    /// Subject; `None`: no identity.
    pub user: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Other claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Time since MFA; `None`: no MFA.
    pub mfa_age: Option<Duration>,
    /// When the request is decided.
    pub time: Timestamp,
    /// Device posture; `None`: unknown device.
    pub device: Option<DeviceSpec>,
    /// Session's visit room.
    pub visit_room: Option<String>,
    /// A break-the-glass justification was given.
    pub break_glass: bool,
}

/// Owned device facts of a [`RequestSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Managed by the MDM.
    pub managed: bool,
    /// Disk encrypted.
    pub disk_encrypted: bool,
    /// Screen lock on.
    pub screen_lock: bool,
    /// Platform name.
    pub os: Option<String>,
    /// Dotted OS version.
    pub os_version: Option<String>,
    /// Time since the last check-in.
    pub checkin_age: Option<Duration>,
}

impl RequestSpec {
    /// A minimal request (no identity, no device, no MFA) for tests and tools.
    pub fn new(
        route: &str,
        method: &str,
        path: &str,
        source: IpAddr,
        time: Timestamp,
    ) -> RequestSpec {
        RequestSpec {
            route: route.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            source,
            user: None,
            groups: Vec::new(),
            claims: serde_json::Map::new(),
            mfa_age: None,
            time,
            device: None,
            visit_room: None,
            break_glass: false,
        }
    }

    /// Borrows the scenario as the facts the evaluator takes.
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            route: &self.route,
            method: &self.method,
            path: &self.path,
            source: self.source,
            user: self.user.as_deref(),
            groups: &self.groups,
            claims: Some(&self.claims),
            mfa_age: self.mfa_age,
            time: self.time,
            device: self.device.as_ref().map(|d| DeviceFacts {
                managed: d.managed,
                disk_encrypted: d.disk_encrypted,
                screen_lock: d.screen_lock,
                os: d.os.as_deref(),
                os_version: d.os_version.as_deref(),
                checkin_age: d.checkin_age,
            }),
            visit_room: self.visit_room.as_deref(),
            break_glass: self.break_glass,
        }
    }

    /// Parses one request: a one-line TOML inline table (`{ route = "ehr", ... }`,
    /// as given to `explain --request`) or a TOML document whose top-level keys
    /// are the request fields (or which holds them in one `[request]` table).
    pub fn parse(file: &str, text: &str, now: Timestamp) -> Result<RequestSpec, Diagnostics> {
        let mut r = Reader::new(file, text);
        let spec = if text.trim_start().starts_with('{') {
            r.parse_value().and_then(|v| {
                let t = r.table(&v, "--request")?;
                request(&mut r, v.span(), t, now)
            })
        } else {
            r.parse().and_then(|doc| {
                let t = doc.get_ref();
                match t.get("request") {
                    Some(v) if t.len() == 1 => {
                        let inner = r.table(v, "request")?;
                        request(&mut r, v.span(), inner, now)
                    }
                    _ => request(&mut r, doc.span(), t, now),
                }
            })
        };
        let diags = r.finish();
        match spec {
            Some(s) if diags.is_empty() => Ok(s),
            _ => Err(diags),
        }
    }
}

/// Parses a time as written in cases and on the command line: RFC 3339 with an
/// offset, or `now`, `now+<duration>`, `now-<duration>`.
pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, ValueError> {
    parse_time_text(s, now).map_err(ValueError::Time)
}

fn parse_time_text(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let shift = |rest: &str, sign: i32| -> Result<Timestamp, String> {
        let d = parse_duration(rest)?;
        let d = SignedDuration::try_from(d).map_err(|_| format!("\"{s}\" is too far from now"))?;
        let d = if sign < 0 { -d } else { d };
        now.checked_add(d)
            .map_err(|_| format!("\"{s}\" is out of range"))
    };
    if s == "now" {
        return Ok(now);
    }
    if let Some(rest) = s.strip_prefix("now+") {
        return shift(rest, 1);
    }
    if let Some(rest) = s.strip_prefix("now-") {
        return shift(rest, -1);
    }
    s.parse::<Timestamp>().map_err(|_| {
        format!("expected a time in RFC 3339 with an offset (such as \"2026-03-02T09:00:00-05:00\") or \"now\", \"now+1h\", \"now-30m\", found \"{s}\"")
    })
}

fn claim_value(r: &mut Reader<'_>, v: &Value<'_>, key: &str) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    match v.get_ref() {
        DeValue::String(s) => Some(J::String(s.to_string())),
        DeValue::Boolean(b) => Some(J::Bool(*b)),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            match i64::from_str_radix(&digits, i.radix()) {
                Ok(n) => Some(J::from(n)),
                Err(_) => {
                    r.error(v.span(), format!("`{key}`: integer out of range"));
                    None
                }
            }
        }
        DeValue::Float(f) => {
            let n = f
                .as_str()
                .replace('_', "")
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64);
            match n {
                Some(n) => Some(J::Number(n)),
                None => {
                    r.error(v.span(), format!("`{key}`: expected a finite number"));
                    None
                }
            }
        }
        DeValue::Datetime(d) => Some(J::String(d.to_string())),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for it in items {
                match claim_value(r, it, key) {
                    Some(x) => out.push(x),
                    None => ok = false,
                }
            }
            ok.then_some(J::Array(out))
        }
        DeValue::Table(_) => {
            r.error(
                v.span(),
                format!("`{key}` must be a string, number, boolean or array, found a table"),
            );
            None
        }
    }
}

fn opt_str(
    r: &mut Reader<'_>,
    t: &DeTable<'_>,
    key: &str,
    expected: &str,
) -> (bool, Option<String>) {
    match t.get(key) {
        None => (true, None),
        Some(v) => match r.str(v, key, expected) {
            Some(s) => (true, Some(s.to_string())),
            None => (false, None),
        },
    }
}

fn request(
    r: &mut Reader<'_>,
    span: std::ops::Range<usize>,
    t: &DeTable<'_>,
    now: Timestamp,
) -> Option<RequestSpec> {
    r.check_keys(t, "the request", REQUEST_KEYS, &[]);
    let mut ok = true;
    let mut req_str = |r: &mut Reader<'_>, key: &str, expected: &str| -> Option<String> {
        let v = r.required(t, span.clone(), "the request", key, expected)?;
        let s = r.str(v, key, expected).map(str::to_string);
        ok &= s.is_some();
        s
    };
    let route = req_str(r, "route", "a route name such as \"ehr\"");
    let method = req_str(r, "method", "an HTTP method such as \"GET\"");
    let path = req_str(r, "path", "a path such as \"/chart/42\"");
    if let (Some(p), Some(v)) = (&path, t.get("path"))
        && !p.starts_with('/')
    {
        r.error(
            v.span(),
            format!("`path` must start with `/`, found \"{p}\""),
        );
        ok = false;
    }
    let source = r
        .required(t, span.clone(), "the request", "source", "an IP address such as \"203.0.113.7\"")
        .and_then(|v| {
            let s = r.str(v, "source", "an IP address such as \"203.0.113.7\"")?;
            match s.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    r.error(
                        v.span(),
                        format!("`source` must be an IPv4 or IPv6 address such as \"203.0.113.7\", found \"{s}\""),
                    );
                    None
                }
            }
        });
    let (u_ok, user) = opt_str(r, t, "user", "a user name");
    let (v_ok, visit_room) = opt_str(r, t, "visit_room", "a visit room id");
    ok &= u_ok && v_ok;
    let groups = match t.get("groups") {
        None => Vec::new(),
        Some(v) => match r.str_array(v, "groups", "group names") {
            Some(l) => l.into_iter().map(|s| s.get_ref().to_string()).collect(),
            None => {
                ok = false;
                Vec::new()
            }
        },
    };
    let mut claims = serde_json::Map::new();
    if let Some(v) = t.get("claims") {
        match r.table(v, "claims") {
            Some(ct) => {
                for (k, cv) in ct.iter() {
                    let key = format!("claims.{}", k.get_ref());
                    match claim_value(r, cv, &key) {
                        Some(j) => {
                            claims.insert(k.get_ref().to_string(), j);
                        }
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    let mfa_age = match t.get("mfa_age") {
        None => None,
        Some(v) => {
            let d = r.duration(v, "mfa_age");
            ok &= d.is_some();
            d
        }
    };
    let time = match t.get("time") {
        None => Some(now),
        Some(v) => {
            let text = match v.get_ref() {
                DeValue::Datetime(d) => Some(d.to_string()),
                _ => r
                    .str(
                        v,
                        "time",
                        "a time such as \"2026-03-02T09:00:00-05:00\" or \"now-1h\"",
                    )
                    .map(str::to_string),
            };
            text.and_then(|s| match parse_time(&s, now) {
                Ok(ts) => Some(ts),
                Err(e) => {
                    r.error(v.span(), format!("`time`: {e}"));
                    None
                }
            })
        }
    };
    let device = match t.get("device") {
        None => None,
        Some(v) => match device(r, v) {
            Some(d) => Some(d),
            None => {
                ok = false;
                None
            }
        },
    };
    let break_glass = match t.get("break_glass") {
        None => false,
        Some(v) => {
            let b = r.bool(v, "break_glass");
            ok &= b.is_some();
            b.unwrap_or(false)
        }
    };
    if !ok {
        return None;
    }
    Some(RequestSpec {
        route: route?,
        method: method?,
        path: path?,
        source: source?,
        user,
        groups,
        claims,
        mfa_age,
        time: time?,
        device,
        visit_room,
        break_glass,
    })
}

fn device(r: &mut Reader<'_>, v: &Value<'_>) -> Option<DeviceSpec> {
    let t = r.table(v, "device")?;
    r.check_keys(t, "`device`", DEVICE_KEYS, &[]);
    let mut ok = true;
    let mut d = DeviceSpec::default();
    for (key, slot) in [
        ("managed", &mut d.managed),
        ("disk_encrypted", &mut d.disk_encrypted),
        ("screen_lock", &mut d.screen_lock),
    ] {
        if let Some(bv) = t.get(key) {
            match r.bool(bv, key) {
                Some(b) => *slot = b,
                None => ok = false,
            }
        }
    }
    let (a, os) = opt_str(r, t, "os", "a platform such as \"macos\"");
    let (b, os_version) = opt_str(r, t, "os_version", "a dotted version such as \"14.4.1\"");
    ok &= a && b;
    d.os = os;
    d.os_version = os_version;
    if let Some(cv) = t.get("checkin_age") {
        d.checkin_age = r.duration(cv, "checkin_age");
        ok &= d.checkin_age.is_some();
    }
    ok.then_some(d)
}

/// One `[[case]]`.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case's name.
    pub name: String,
    /// 1-based line of the case's name.
    pub line: usize,
    /// Expected effect.
    pub expect: Effect,
    /// Expected deciding rule (`default` for the default deny); `None`: any.
    pub rule: Option<String>,
    /// The scenario.
    pub request: RequestSpec,
}

/// A parsed cases file.
#[derive(Debug, Clone)]
pub struct Cases {
    /// The file the cases were read from.
    pub file: String,
    /// Cases in file order.
    pub cases: Vec<Case>,
}

impl Cases {
    /// Parses a cases file; relative times are resolved against `now`.
    pub fn parse(file: &str, text: &str, now: Timestamp) -> Result<Cases, Diagnostics> {
        let mut r = Reader::new(file, text);
        let mut cases = Vec::new();
        if let Some(doc) = r.parse() {
            let root = doc.get_ref();
            r.check_keys(root, "the cases file (top level)", &["case"], &[]);
            match root.get("case") {
                None => r.error(0..0, "the cases file has no `[[case]]`"),
                Some(v) => {
                    let mut seen: HashMap<String, usize> = HashMap::new();
                    let lines = LineIndex::new(text);
                    for (span, t) in r.table_array(v, "case") {
                        if let Some(c) = case(&mut r, &lines, span, t, now, &mut seen) {
                            cases.push(c);
                        }
                    }
                }
            }
        }
        let diags = r.finish();
        if diags.is_empty() {
            Ok(Cases {
                file: file.to_string(),
                cases,
            })
        } else {
            Err(diags)
        }
    }
}

fn case(
    r: &mut Reader<'_>,
    lines: &LineIndex,
    span: std::ops::Range<usize>,
    t: &DeTable<'_>,
    now: Timestamp,
    seen: &mut HashMap<String, usize>,
) -> Option<Case> {
    r.check_keys(t, "`[[case]]`", CASE_KEYS, &[]);
    let name = r
        .required(t, span.clone(), "this `[[case]]`", "name", "a string")
        .and_then(|v| {
            let n = r.str(v, "name", "a string")?;
            let line = lines.line(v.span().start);
            if let Some(first) = seen.get(n) {
                r.error(
                    v.span(),
                    format!("duplicate case name `{n}` (first used on line {first})"),
                );
                return None;
            }
            seen.insert(n.to_string(), line);
            Some((n.to_string(), line))
        });
    let expect = r
        .required(
            t,
            span.clone(),
            "this `[[case]]`",
            "expect",
            "\"allow\" or \"deny\"",
        )
        .and_then(|v| {
            let s = r.str(v, "expect", "\"allow\" or \"deny\"")?;
            match s {
                "allow" => Some(Effect::Allow),
                "deny" => Some(Effect::Deny),
                other => {
                    r.error(
                        v.span(),
                        unknown(&format!("effect \"{other}\""), other, &["allow", "deny"]),
                    );
                    None
                }
            }
        });
    let (rule_ok, rule) = opt_str(r, t, "rule", "a rule name or \"default\"");
    let request = r
        .required(
            t,
            span.clone(),
            "this `[[case]]`",
            "request",
            "a `[case.request]` table",
        )
        .and_then(|v| {
            let rt = r.table(v, "request")?;
            request(r, v.span(), rt, now)
        });
    let (name, line) = name?;
    if !rule_ok {
        return None;
    }
    Some(Case {
        name,
        line,
        expect: expect?,
        rule,
        request: request?,
    })
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Line of the case in the cases file.
    pub line: usize,
    /// True when the decision (and the deciding rule, if given) was as expected.
    pub passed: bool,
    /// Expected effect.
    pub expect: Effect,
    /// Expected deciding rule, if the case named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_rule: Option<String>,
    /// Actual effect.
    pub effect: Effect,
    /// Actual deciding rule (`default` for the default deny).
    pub rule: String,
    /// Actual deny reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = match self.reason {
            Some(reason) => format!("{} by `{}` ({reason})", self.effect, self.rule),
            None => format!("{} by `{}`", self.effect, self.rule),
        };
        if self.passed {
            write!(f, "pass  {} — {got}", self.name)
        } else {
            let want = match &self.expect_rule {
                Some(r) => format!("{} by `{r}`", self.expect),
                None => self.expect.to_string(),
            };
            write!(
                f,
                "FAIL  {} (line {}) — expected {want}, got {got}",
                self.name, self.line
            )
        }
    }
}

/// Runs every case against `policy`.
pub fn run_cases(policy: &CompiledPolicy, cases: &Cases) -> Vec<CaseResult> {
    cases
        .cases
        .iter()
        .map(|c| {
            let facts = c.request.facts();
            let d = policy.evaluate(&facts);
            let rule_ok = c.rule.as_deref().is_none_or(|r| r == d.rule());
            CaseResult {
                name: c.name.clone(),
                line: c.line,
                passed: d.effect() == c.expect && rule_ok,
                expect: c.expect,
                expect_rule: c.rule.clone(),
                effect: d.effect(),
                rule: d.rule().to_string(),
                reason: d.reason(),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-03-02T14:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn relative_times() {
        let n = now();
        assert_eq!(parse_time("now", n), Ok(n));
        assert_eq!(
            parse_time("now+1h", n).map(|t| t.to_string()),
            Ok("2026-03-02T15:00:00Z".to_string())
        );
        assert_eq!(
            parse_time("now-30m", n).map(|t| t.to_string()),
            Ok("2026-03-02T13:30:00Z".to_string())
        );
        assert_eq!(
            parse_time("2026-03-02T09:00:00-05:00", n).map(|t| t.to_string()),
            Ok("2026-03-02T14:00:00Z".to_string())
        );
        assert!(parse_time("2026-03-02T09:00:00", n).is_err());
        assert!(parse_time("now+1x", n).is_err());
        assert!(parse_time("tomorrow", n).is_err());
    }

    #[test]
    fn inline_request_with_errors_positions() {
        let text = r#"{ route = "ehr", method = "GET", path = "chart", source = "1.2.3.999", mfa_age = "10 m", grups = ["a"] }"#;
        let Err(d) = RequestSpec::parse("--request", text, now()) else {
            panic!("accepted a bad request");
        };
        let cols: Vec<usize> = d.0.iter().map(|x| x.column).collect();
        assert_eq!(d.len(), 4, "{}", d.render());
        assert_eq!(cols, vec![41, 59, 82, 90], "{}", d.render());
        assert!(
            d.0[3].message.contains("did you mean `groups`"),
            "{}",
            d.render()
        );
    }

    #[test]
    fn inline_request_ok() {
        let text = r#"{ route = "ehr", method = "GET", path = "/chart/42", source = "::ffff:10.0.0.1", user = "alice", groups = ["clinicians"], claims = { dept = ["derm", 4], level = 3.5, on = true }, mfa_age = "10m", time = "now-1h", device = { managed = true, os = "macos", os_version = "14.4", checkin_age = "2h" }, break_glass = true }"#;
        let spec = RequestSpec::parse("--request", text, now());
        let Ok(spec) = spec else {
            panic!("{}", spec.err().map(|d| d.render()).unwrap_or_default());
        };
        assert_eq!(spec.route, "ehr");
        assert_eq!(spec.mfa_age, Some(Duration::from_secs(600)));
        assert_eq!(spec.time.to_string(), "2026-03-02T13:00:00Z");
        assert_eq!(spec.claims.get("level"), Some(&serde_json::json!(3.5)));
        assert_eq!(
            spec.claims.get("dept"),
            Some(&serde_json::json!(["derm", 4]))
        );
        assert!(spec.break_glass);
        assert_eq!(
            spec.device.as_ref().and_then(|d| d.os.as_deref()),
            Some("macos")
        );
    }
}
