//! Stage three: [`Policy`] → [`CompiledPolicy`], an immutable structure built so
//! that evaluation touches only the rules that could decide a request and never
//! parses, lowercases or allocates.
//!
//! What is precomputed: group names interned to small integers; per route the
//! deny and allow rules in file order, split by group (rules with `groups`)
//! and by the first path segment (rules whose patterns all start with a
//! literal one), so a request visits only its candidates and evaluation time
//! does not grow with the number of rules that cannot apply; one prefix trie per family for each
//! rule's sources; path patterns split into segments; methods upper-cased; day
//! sets as bitmasks and time zones resolved. Also the canonical form of every
//! rule, whose SHA-256 is the policy version.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ipnet::IpNet;
use jiff::tz::TimeZone;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ast::{
    DeviceRequirement, Effect, OsVersion, Platform, Policy, Rule, Segment, Source, hhmm,
    weekday_name,
};
use crate::cidr::SourceSet;
use crate::decision::DenyReason;

/// FNV-1a: the maps below are keyed by names from the policy (trusted), and a
/// lookup with an attacker-chosen key cannot lengthen their chains, so a fast
/// non-keyed hash is safe and saves most of the per-request hashing cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A `HashMap` with [`Fnv`].
pub(crate) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// A policy ready to evaluate. Immutable, `Send + Sync`; share it behind an `Arc`
/// and swap the `Arc` to apply a new one.
pub struct CompiledPolicy {
    pub(crate) policy: Policy,
    pub(crate) rules: Box<[CompiledRule]>,
    pub(crate) groups: FastMap<Box<str>, u32>,
    pub(crate) routes: FastMap<Box<str>, Bucket>,
    /// Rules for a route no rule names: those without `routes`.
    pub(crate) other_routes: Bucket,
    pub(crate) canonical: Vec<CanonicalRule>,
    pub(crate) version: String,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("file", &self.policy.file)
            .field("rules", &self.rules.len())
            .field("version", &self.version)
            .finish()
    }
}

/// The candidate rules for one route.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub(crate) deny: Lane,
    pub(crate) allow: Lane,
}

/// Rules of one effect for one route, split so that a request visits only
/// rules it could match: rules with `groups` under each of their groups, and
/// within a group, rules whose every path pattern starts with a literal
/// segment under each such segment; rules without `groups` likewise by
/// segment; the rest in `open`. Each list is in file order.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// Rules without `groups` reached by no segment index.
    pub(crate) open: Box<[u32]>,
    /// Rules with a `groups` condition, under each of their groups.
    pub(crate) by_group: FastMap<u32, SegmentIndex>,
    /// Rules without `groups` whose patterns all start with a literal segment,
    /// under each of those segments.
    pub(crate) by_segment: FastMap<Box<str>, Box<[u32]>>,
}

/// Rules split by the first path segment their patterns all start with.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndex {
    /// Rules with a pattern that does not start with a literal segment.
    pub(crate) open: Box<[u32]>,
    /// The other rules, under each of their first segments.
    pub(crate) by_segment: FastMap<Box<str>, Box<[u32]>>,
}

impl SegmentIndex {
    fn candidates<'a>(&'a self, first_segment: Option<&str>, f: &mut impl FnMut(&'a [u32])) {
        if !self.open.is_empty() {
            f(&self.open);
        }
        if !self.by_segment.is_empty()
            && let Some(seg) = first_segment
            && let Some(list) = self.by_segment.get(seg)
        {
            f(list);
        }
    }
}

impl Lane {
    /// Calls `f` with every candidate list for a request with these (interned,
    /// sorted) groups and this first path segment.
    pub(crate) fn candidates<'a>(
        &'a self,
        groups: &[u32],
        first_segment: Option<&str>,
        mut f: impl FnMut(&'a [u32]),
    ) {
        f(&self.open);
        if !self.by_group.is_empty() {
            for g in groups {
                if let Some(index) = self.by_group.get(g) {
                    index.candidates(first_segment, &mut f);
                }
            }
        }
        if !self.by_segment.is_empty()
            && let Some(seg) = first_segment
            && let Some(list) = self.by_segment.get(seg)
        {
            f(list);
        }
    }
}

#[derive(Default)]
struct SegmentIndexBuilder {
    open: Vec<u32>,
    by_segment: BTreeMap<Box<str>, Vec<u32>>,
}

impl SegmentIndexBuilder {
    fn push(&mut self, i: u32, segments: Option<&[&str]>) {
        match segments {
            Some(segments) => {
                for s in segments {
                    self.by_segment.entry(Box::from(*s)).or_default().push(i);
                }
            }
            None => self.open.push(i),
        }
    }
    fn build(self) -> SegmentIndex {
        SegmentIndex {
            open: self.open.into(),
            by_segment: self
                .by_segment
                .into_iter()
                .map(|(s, l)| (s, l.into_boxed_slice()))
                .collect(),
        }
    }
}

#[derive(Default)]
struct LaneBuilder {
    open: Vec<u32>,
    by_group: BTreeMap<u32, SegmentIndexBuilder>,
    by_segment: BTreeMap<Box<str>, Vec<u32>>,
}

/// The distinct first segments of a rule's path patterns, when every pattern
/// starts with a literal one.
fn first_literals(rule: &CompiledRule) -> Option<Vec<&str>> {
    let paths = rule.paths.as_ref()?;
    let mut out = Vec::with_capacity(paths.len());
    for p in paths.iter() {
        match p.first() {
            Some(Segment::Literal(l)) => out.push(l.as_str()),
            _ => return None,
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

impl LaneBuilder {
    fn push(&mut self, i: u32, rule: &CompiledRule) {
        let segments = first_literals(rule);
        if let Some(ids) = &rule.groups {
            for g in ids.iter() {
                self.by_group
                    .entry(*g)
                    .or_default()
                    .push(i, segments.as_deref());
            }
        } else if let Some(segments) = segments {
            for s in segments {
                self.by_segment.entry(Box::from(s)).or_default().push(i);
            }
        } else {
            self.open.push(i);
        }
    }
    fn build(self) -> Lane {
        Lane {
            open: self.open.into(),
            by_group: self
                .by_group
                .into_iter()
                .map(|(g, b)| (g, b.build()))
                .collect(),
            by_segment: self
                .by_segment
                .into_iter()
                .map(|(s, l)| (s, l.into_boxed_slice()))
                .collect(),
        }
    }
}

#[derive(Default)]
struct BucketBuilder {
    deny: LaneBuilder,
    allow: LaneBuilder,
}

impl BucketBuilder {
    fn push(&mut self, i: u32, rule: &CompiledRule) {
        match rule.effect {
            Effect::Deny => self.deny.push(i, rule),
            Effect::Allow => self.allow.push(i, rule),
        }
    }
    fn build(self) -> Bucket {
        Bucket {
            deny: self.deny.build(),
            allow: self.allow.build(),
        }
    }
}

/// One listed claim and the values that satisfy it.
pub(crate) type ClaimCondition = (Box<str>, Box<[Box<str>]>);

/// One rule, ready to check.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) effect: Effect,
    pub(crate) routes: Option<Box<[Box<str>]>>,
    pub(crate) methods: Option<Box<[Box<str>]>>,
    pub(crate) paths: Option<Box<[Box<[Segment]>]>>,
    pub(crate) visit_room_own: bool,
    pub(crate) sources: Option<SourceSet>,
    pub(crate) groups: Option<Box<[u32]>>,
    pub(crate) claims: Option<Box<[ClaimCondition]>>,
    pub(crate) mfa_max_age: Option<Duration>,
    pub(crate) device: Option<CompiledDevice>,
    pub(crate) hours: Option<CompiledHours>,
    pub(crate) break_glass: bool,
    /// The reason given when this rule denies.
    pub(crate) deny_reason: DenyReason,
}

#[derive(Debug)]
pub(crate) struct CompiledDevice {
    pub(crate) managed: bool,
    pub(crate) disk_encrypted: bool,
    pub(crate) screen_lock: bool,
    pub(crate) max_checkin_age: Option<Duration>,
    pub(crate) os_min: Option<Box<[(Platform, OsVersion)]>>,
}

#[derive(Debug)]
pub(crate) struct CompiledHours {
    /// Bit `n` = weekday with Monday-zero offset `n` may start the window.
    pub(crate) days: u8,
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) tz: TimeZone,
    /// Interned time zone, for the per-request local-time cache.
    pub(crate) tz_id: u32,
}

/// Compiles a validated policy. Never fails: everything that could go wrong was
/// refused by validation.
pub fn compile(policy: Policy) -> CompiledPolicy {
    let mut groups: FastMap<Box<str>, u32> = FastMap::default();
    let mut tzs: HashMap<String, u32> = HashMap::new();
    let mut rules = Vec::with_capacity(policy.rules.len());
    for rule in &policy.rules {
        rules.push(compile_rule(rule, &mut groups, &mut tzs));
    }

    // Buckets: one per route any rule names; rules without `routes` go everywhere.
    let mut builders: HashMap<Box<str>, BucketBuilder> = HashMap::new();
    for rule in &rules {
        for r in rule.routes.iter().flatten() {
            builders.entry(r.clone()).or_default();
        }
    }
    let mut other = BucketBuilder::default();
    for (i, rule) in rules.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match &rule.routes {
            None => {
                other.push(i, rule);
                for b in builders.values_mut() {
                    b.push(i, rule);
                }
            }
            Some(routes) => {
                for r in routes.iter() {
                    // `routes` is deduplicated, so each bucket gets the rule once.
                    if let Some(b) = builders.get_mut(r) {
                        b.push(i, rule);
                    }
                }
            }
        }
    }
    let routes = builders.into_iter().map(|(k, b)| (k, b.build())).collect();

    let canonical: Vec<CanonicalRule> = policy.rules.iter().map(canonical_rule).collect();
    let version = version_of(&canonical);
    CompiledPolicy {
        policy,
        rules: rules.into_boxed_slice(),
        groups,
        routes,
        other_routes: other.build(),
        canonical,
        version,
    }
}

fn compile_rule(
    rule: &Rule,
    groups: &mut FastMap<Box<str>, u32>,
    tzs: &mut HashMap<String, u32>,
) -> CompiledRule {
    let boxed = |v: &Vec<String>| -> Box<[Box<str>]> {
        let mut v: Vec<Box<str>> = v.iter().map(|s| Box::from(s.as_str())).collect();
        v.sort();
        v.dedup();
        v.into()
    };
    let group_ids = rule.groups.as_ref().map(|gs| {
        let mut ids: Vec<u32> = gs
            .iter()
            .map(|g| {
                let next = u32::try_from(groups.len()).unwrap_or(u32::MAX);
                *groups.entry(Box::from(g.as_str())).or_insert(next)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_boxed_slice()
    });
    let hours = rule.hours.as_ref().map(|h| {
        let next = u32::try_from(tzs.len()).unwrap_or(u32::MAX);
        let tz_id = *tzs.entry(h.tz_name.clone()).or_insert(next);
        let days = match &h.days {
            None => 0x7f,
            Some(d) => d
                .iter()
                .fold(0u8, |m, d| m | (1 << d.to_monday_zero_offset())),
        };
        let (start, end) = h.time.unwrap_or((0, 1440));
        CompiledHours {
            days,
            start,
            end,
            tz: h.tz.clone(),
            tz_id,
        }
    });
    let restrictive_sources = rule
        .sources
        .as_ref()
        .is_some_and(|s| s.iter().any(|e| !matches!(e, Source::Any)));
    let deny_reason = if restrictive_sources {
        DenyReason::NetworkNotAllowed
    } else if rule.hours.is_some() {
        DenyReason::OutsideHours
    } else {
        DenyReason::NotPermitted
    };
    CompiledRule {
        effect: rule.effect,
        routes: rule.routes.as_ref().map(boxed),
        methods: rule.methods.as_ref().map(boxed),
        paths: rule.paths.as_ref().map(|ps| {
            ps.iter()
                .map(|p| p.segments.clone().into_boxed_slice())
                .collect()
        }),
        visit_room_own: rule.visit_room_own,
        sources: rule.sources.as_deref().map(SourceSet::new),
        groups: group_ids,
        claims: rule.claims.as_ref().map(|c| {
            c.iter()
                .map(|(k, v)| (Box::from(k.as_str()), boxed(v)))
                .collect()
        }),
        mfa_max_age: rule.mfa_max_age,
        device: rule
            .device
            .as_ref()
            .map(|d: &DeviceRequirement| CompiledDevice {
                managed: d.managed,
                disk_encrypted: d.disk_encrypted,
                screen_lock: d.screen_lock,
                max_checkin_age: d.max_checkin_age,
                os_min: d
                    .os_min
                    .as_ref()
                    .map(|m| m.iter().map(|(p, v)| (*p, v.clone())).collect()),
            }),
        hours,
        break_glass: rule.break_glass,
        deny_reason,
    }
}

/// One rule in canonical form: sets sorted and deduplicated, networks
/// aggregated, durations in seconds, conditions that match everything dropped.
/// Two rules with equal canonical forms decide every request alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanonicalRule {
    /// Rule name.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Sorted route names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// Sorted upper-case methods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Sorted path patterns (absent when one of them is `/**`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// `Some("own")` for `visit_room = "own"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visit_room: Option<String>,
    /// Source networks (absent when they allow every address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<CanonicalSources>,
    /// Sorted groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Claims with sorted values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// MFA maximum age in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_max_age_secs: Option<u64>,
    /// Device requirements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<CanonicalDevice>,
    /// Time window (absent when it covers every minute of the week).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hours: Option<CanonicalHours>,
    /// Break-the-glass rule.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// Canonical `sources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanonicalSources {
    /// Aggregated networks an address must be in; `None`: any address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    /// Aggregated networks an address must not be in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Canonical `device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanonicalDevice {
    /// Must be managed.
    pub managed: bool,
    /// Must have disk encryption.
    pub disk_encrypted: bool,
    /// Must have a screen lock.
    pub screen_lock: bool,
    /// Maximum check-in age in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_checkin_age_secs: Option<u64>,
    /// Minimum versions per platform (trailing `.0` components dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_min: Option<BTreeMap<String, String>>,
}

/// Canonical `hours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanonicalHours {
    /// Days the window starts on, Monday first; absent for every day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<String>>,
    /// `"HH:MM-HH:MM"`; absent for the whole day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// IANA time zone, canonical spelling.
    pub tz: String,
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn aggregate(nets: Vec<IpNet>) -> Vec<String> {
    let mut agg = IpNet::aggregate(&nets);
    agg.sort();
    agg.iter().map(IpNet::to_string).collect()
}

pub(crate) fn canonical_rule(rule: &Rule) -> CanonicalRule {
    let paths = rule.paths.as_ref().and_then(|ps| {
        let everything =
            !rule.visit_room_own && ps.iter().any(|p| p.segments.as_slice() == [Segment::Rest]);
        (!everything).then(|| {
            let texts: Vec<String> = ps.iter().map(|p| p.text.clone()).collect();
            sorted(&texts)
        })
    });
    let sources = rule.sources.as_ref().and_then(|entries| {
        let mut any = false;
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for e in entries {
            match *e {
                Source::Any => any = true,
                Source::Include(n) => include.push(crate::parse::canonical_net(n)),
                Source::Exclude(n) => exclude.push(crate::parse::canonical_net(n)),
            }
        }
        let include = (!any && !include.is_empty()).then(|| aggregate(include));
        let exclude = if exclude.is_empty() {
            Vec::new()
        } else {
            aggregate(exclude)
        };
        (include.is_some() || !exclude.is_empty()).then_some(CanonicalSources { include, exclude })
    });
    let device = rule.device.as_ref().map(|d| CanonicalDevice {
        managed: d.managed,
        disk_encrypted: d.disk_encrypted,
        screen_lock: d.screen_lock,
        max_checkin_age_secs: d.max_checkin_age.map(|a| a.as_secs()),
        os_min: d.os_min.as_ref().map(|m| {
            m.iter()
                .map(|(p, v)| {
                    let mut parts = v.0.clone();
                    while parts.len() > 1 && parts.last() == Some(&0) {
                        parts.pop();
                    }
                    (p.as_str().to_string(), OsVersion(parts).to_string())
                })
                .collect()
        }),
    });
    let hours = rule.hours.as_ref().and_then(|h| {
        let days = h.days.as_ref().filter(|d| d.len() < 7).map(|d| {
            d.iter()
                .map(|w| weekday_name(*w).to_string())
                .collect::<Vec<_>>()
        });
        let time = h
            .time
            .filter(|&(s, e)| !(s == 0 && e == 1440))
            .map(|(s, e)| format!("{}-{}", hhmm(s), hhmm(e)));
        (days.is_some() || time.is_some()).then(|| CanonicalHours {
            days,
            time,
            tz: h.tz_name.clone(),
        })
    });
    CanonicalRule {
        name: rule.name.clone(),
        effect: rule.effect,
        routes: rule.routes.as_deref().map(sorted),
        methods: rule.methods.as_deref().map(sorted),
        paths,
        visit_room: rule.visit_room_own.then(|| "own".to_string()),
        sources,
        groups: rule.groups.as_deref().map(sorted),
        claims: rule
            .claims
            .as_ref()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), sorted(v))).collect()),
        mfa_max_age_secs: rule.mfa_max_age.map(|d| d.as_secs()),
        device,
        hours,
        break_glass: rule.break_glass,
    }
}

fn version_of(canonical: &[CanonicalRule]) -> String {
    // serde_json writes struct fields in declaration order and BTreeMap keys
    // sorted, so the text is the same in every build (with or without
    // serde_json's `preserve_order`).
    let text = serde_json::to_string(canonical).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"dermgate-policy-v1\n");
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

impl CompiledPolicy {
    /// The policy version: lowercase hex SHA-256 of the canonical form. Files
    /// that differ only in comments, whitespace, key order or the order of set
    /// values (groups, methods, routes, ...) have the same version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The validated rules, in file order (for display).
    pub fn rules(&self) -> &[Rule] {
        &self.policy.rules
    }

    /// The validated policy this was compiled from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The canonical form of every rule, in file order (`policy show --json`, `diff`).
    pub fn canonical_rules(&self) -> &[CanonicalRule] {
        &self.canonical
    }

    /// The file the policy was read from.
    pub fn file(&self) -> &str {
        &self.policy.file
    }

    /// Allow rules on the given non-public routes (or on every route, when the
    /// rule names none) that require neither MFA nor a visit room: `dermgate
    /// check` warns about each.
    pub fn weak_allow_rules(&self, public_routes: &[&str]) -> Vec<&str> {
        self.policy
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Allow && r.mfa_max_age.is_none() && !r.visit_room_own)
            .filter(|r| match &r.routes {
                None => true,
                Some(routes) => routes.iter().any(|x| !public_routes.contains(&x.as_str())),
            })
            .map(|r| r.name.as_str())
            .collect()
    }
}
