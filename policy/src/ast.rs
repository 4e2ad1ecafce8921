//! The validated policy: what [`crate::validate`] produces from the syntax tree
//! and [`crate::compile()`] turns into a [`crate::CompiledPolicy`].
//!
//! Every value here has already been checked (CIDRs parse and have no host bits,
//! time zones exist, durations follow the grammar, path patterns are well
//! formed), so the compiler cannot fail. The types keep the user's meaning
//! without precomputation; the property tests evaluate these rules directly as
//! the reference the compiled evaluator must agree with.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::Serialize;

/// Whether a rule lets a request through or stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The rule lets matching requests through (unless a deny rule matches too).
    Allow,
    /// The rule stops matching requests; deny overrides allow.
    Deny,
}

impl Effect {
    /// `"allow"` or `"deny"`, as written in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The whole validated policy: its rules in file order.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file name the policy was read from (for messages).
    pub file: String,
    /// Rules in file order; names are unique and never `default`.
    pub rules: Vec<Rule>,
}

/// One `[[rule]]`. `None` (or `false`) for a condition means it was left out and
/// matches anything.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name, reported as the deciding rule.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// 1-based line of the rule's `name` key (or of the rule itself).
    pub line: usize,
    /// Route names; the request's route must be one of them.
    pub routes: Option<Vec<String>>,
    /// Groups; the request must carry at least one of them.
    pub groups: Option<Vec<String>>,
    /// Claims: for every listed claim, the request's claim must match one value.
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// MFA required, at most this long ago.
    pub mfa_max_age: Option<Duration>,
    /// Device posture requirements; a request from an unknown device fails them.
    pub device: Option<DeviceRequirement>,
    /// Source networks.
    pub sources: Option<Vec<Source>>,
    /// HTTP methods, upper case.
    pub methods: Option<Vec<String>>,
    /// Path patterns; the request's path must match one of them.
    pub paths: Option<Vec<PathPattern>>,
    /// A weekly time window in a time zone.
    pub hours: Option<Hours>,
    /// `visit_room = "own"`: the `{room}` bound by the path must be the session's room.
    pub visit_room_own: bool,
    /// `break_glass = true`: matches only when the user stated a justification.
    pub break_glass: bool,
}

/// One entry of `sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `"any"`: every address.
    Any,
    /// A network the address may be in (IPv4-mapped IPv6 networks are stored as IPv4).
    Include(IpNet),
    /// `"!CIDR"`: a network the address must not be in.
    Exclude(IpNet),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Any => f.write_str("any"),
            Source::Include(n) => write!(f, "{n}"),
            Source::Exclude(n) => write!(f, "!{n}"),
        }
    }
}

/// A path pattern such as `/room/{room}/**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The pattern as written.
    pub text: String,
    /// Its segments (the text after the leading `/`, split on `/`).
    pub segments: Vec<Segment>,
}

impl PathPattern {
    /// True when the pattern has a `{room}` segment.
    pub fn binds_room(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Room))
    }
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text (case-sensitive; may be empty for a trailing `/`).
    Literal(String),
    /// `*`: one non-empty segment.
    Star,
    /// `{room}`: one non-empty segment, bound as the visit room.
    Room,
    /// `**`: zero or more segments; only ever the last segment.
    Rest,
}

/// `hours = { days = ..., time = "HH:MM-HH:MM", tz = "..." }`.
#[derive(Debug, Clone)]
pub struct Hours {
    /// The days the window starts on (`None`: every day). Expanded from ranges, deduplicated,
    /// Monday first.
    pub days: Option<Vec<Weekday>>,
    /// Minutes after midnight: start included, end excluded; `end` may be 1440 (24:00).
    /// When `end <= start` the window runs overnight and belongs to the day it starts.
    /// `None`: the whole day.
    pub time: Option<(u16, u16)>,
    /// The time zone whose wall clock the window follows.
    pub tz: TimeZone,
    /// Its IANA name, canonical spelling.
    pub tz_name: String,
}

/// `device = { ... }` requirements. Any requirement fails for an unknown device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequirement {
    /// The device must be managed by the practice's MDM.
    pub managed: bool,
    /// The device's disk must be encrypted.
    pub disk_encrypted: bool,
    /// The device must have a screen lock.
    pub screen_lock: bool,
    /// The device must have checked in at most this long ago.
    pub max_checkin_age: Option<Duration>,
    /// Minimum OS version per platform; a platform not listed fails.
    pub os_min: Option<BTreeMap<Platform, OsVersion>>,
}

/// A device platform named in `os_min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple macOS.
    Macos,
    /// Microsoft Windows.
    Windows,
    /// Apple iOS and iPadOS.
    Ios,
    /// Google Android.
    Android,
}

impl Platform {
    /// Every platform, in the order of DESIGN.md.
    pub const ALL: [Platform; 4] = [
        Platform::Macos,
        Platform::Windows,
        Platform::Ios,
        Platform::Android,
    ];

    /// The key used in `os_min` and the `os` value of device facts.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Macos => "macos",
            Platform::Windows => "windows",
            Platform::Ios => "ios",
            Platform::Android => "android",
        }
    }

    /// Case-insensitive lookup of a platform name.
    pub fn from_name(name: &str) -> Option<Platform> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A dotted numeric version such as `10.0.22631`; missing components count as 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OsVersion(pub Vec<u64>);

impl OsVersion {
    /// Parses `"14.4"`; `None` unless every component is a decimal number.
    pub fn parse(s: &str) -> Option<OsVersion> {
        let mut parts = Vec::new();
        for p in s.split('.') {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parts.push(p.parse().ok()?);
        }
        Some(OsVersion(parts))
    }

    /// True when the dotted version `reported` is at least `self`. A version that
    /// is not dotted numeric is never new enough (fail closed). Allocation-free.
    pub fn satisfied_by(&self, reported: &str) -> bool {
        let mut want = self.0.iter();
        let mut got = reported.split('.');
        loop {
            let w = want.next();
            let g = got.next();
            let g = match g {
                None => None,
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    match p.parse::<u64>() {
                        Ok(v) => Some(v),
                        Err(_) => return false,
                    }
                }
                Some(_) => return false,
            };
            match (w, g) {
                (None, None) => return true,
                (Some(w), g) => {
                    let g = g.unwrap_or(0);
                    if g != *w {
                        return g > *w;
                    }
                }
                // Extra reported components after an equal prefix: at least as new.
                (None, Some(_)) => {
                    // Keep validating the rest so that "14.4.x" is refused.
                    return got.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                }
            }
        }
    }
}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The lowercase three-letter name of a weekday, as written in `days`.
pub fn weekday_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "mon",
        Weekday::Tuesday => "tue",
        Weekday::Wednesday => "wed",
        Weekday::Thursday => "thu",
        Weekday::Friday => "fri",
        Weekday::Saturday => "sat",
        Weekday::Sunday => "sun",
    }
}

/// `"HH:MM"` for minutes after midnight (1440 is `"24:00"`).
pub fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl Rule {
    /// The rule's conditions as `(key, value)` in policy syntax, for display
    /// (`dermgate policy show`). Only conditions that are present.
    pub fn conditions(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let list = |v: &[String]| v.join(", ");
        if let Some(r) = &self.routes {
            out.push(("routes", list(r)));
        }
        if let Some(m) = &self.methods {
            out.push(("methods", list(m)));
        }
        if let Some(p) = &self.paths {
            out.push((
                "paths",
                p.iter()
                    .map(|p| p.text.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if self.visit_room_own {
            out.push(("visit_room", "own".to_string()));
        }
        if let Some(s) = &self.sources {
            out.push((
                "sources",
                s.iter()
                    .map(Source::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if let Some(g) = &self.groups {
            out.push(("groups", list(g)));
        }
        if let Some(c) = &self.claims {
            out.push((
                "claims",
                c.iter()
                    .map(|(k, v)| format!("{k} in [{}]", v.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        if let Some(m) = self.mfa_max_age {
            out.push(("mfa_max_age", format_duration(m)));
        }
        if let Some(d) = &self.device {
            out.push(("device", d.to_string()));
        }
        if let Some(h) = &self.hours {
            out.push(("hours", h.to_string()));
        }
        if self.break_glass {
            out.push(("break_glass", "true".to_string()));
        }
        out
    }
}

impl fmt::Display for DeviceRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.managed {
            parts.push("managed".into());
        }
        if self.disk_encrypted {
            parts.push("disk encrypted".into());
        }
        if self.screen_lock {
            parts.push("screen lock".into());
        }
        if let Some(a) = self.max_checkin_age {
            parts.push(format!("checked in within {}", format_duration(a)));
        }
        if let Some(os) = &self.os_min {
            let list: Vec<String> = os.iter().map(|(p, v)| format!("{p} >= {v}")).collect();
            parts.push(format!("os {}", list.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("known device")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = match &self.days {
            None => "every day".to_string(),
            Some(d) => d
                .iter()
                .map(|d| weekday_name(*d))
                .collect::<Vec<_>>()
                .join(","),
        };
        let time = match self.time {
            None => "all day".to_string(),
            Some((s, e)) => format!("{}-{}", hhmm(s), hhmm(e)),
        };
        write!(f, "{days} {time} {}", self.tz_name)
    }
}

/// Formats a duration in the policy grammar, largest units first (`"1h30m"`, `"0s"`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("y", 31_536_000u64),
        ("w", 604_800),
        ("d", 86_400),
        ("h", 3_600),
        ("m", 60),
        ("s", 1),
    ] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn v(s: &str) -> OsVersion {
        OsVersion::parse(s).unwrap_or(OsVersion(vec![u64::MAX]))
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("14.4").satisfied_by("14.4"));
        assert!(v("14.4").satisfied_by("14.4.1"));
        assert!(v("14.4").satisfied_by("14.10"));
        assert!(v("14.4").satisfied_by("15"));
        assert!(!v("14.4").satisfied_by("14"));
        assert!(!v("14.4").satisfied_by("14.3.9"));
        assert!(!v("14.4").satisfied_by("14.4-beta"));
        assert!(!v("14.4").satisfied_by("14.4.x"));
        assert!(!v("14.4").satisfied_by(""));
        assert!(!v("14.4").satisfied_by("14..4"));
        assert!(v("10.0.22631").satisfied_by("10.0.22631"));
        assert!(!v("10.0.22631").satisfied_by("10.0.19045"));
        assert!(v("14").satisfied_by("14.0.0"));
        assert!(v("14.0").satisfied_by("14"));
        assert!(OsVersion::parse("14.").is_none());
        assert!(OsVersion::parse("a").is_none());
        assert!(OsVersion::parse("").is_none());
    }

    #[test]
    fn durations_format_back() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 8)), "1w1d");
    }
}
