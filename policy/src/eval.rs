//! Stage four: evaluate a [`CompiledPolicy`] against [`RequestFacts`].
//!
//! The deciding rule is the first matching deny rule in file order, else the
//! first matching allow rule in file order, else `default` (deny). Only the
//! candidate rules of the request's route (and, for rules with `groups`, of the
//! request's groups) are visited; the hot path does not allocate unless a
//! request carries more than [`INLINE_GROUPS`] groups the policy knows.
//!
//! # Why a default deny gives the reason it gives
//!
//! When no allow rule matches, the reason comes from the allow rule that came
//! *closest*, so that the user is told the one thing that would help:
//!
//! 1. Only allow rules whose route, methods and paths match are considered: the
//!    others are about other requests.
//! 2. A failing condition the user cannot change (groups, claims, another
//!    visit room) makes a rule *unfixable*, unless the request has no identity,
//!    in which case logging in is the fix.
//! 3. Rules rank by class, then fewer failing conditions, then file order.
//!    The classes, best first: misses only what the proxy fixes in band (MFA
//!    step-up, logging in); misses something else the user can fix (network,
//!    hours, device); misses only the break-the-glass justification; cannot
//!    be fixed.
//! 4. The reason is taken from the best rule: unfixable → not permitted;
//!    break-the-glass only → "break-the-glass justification needed";
//!    otherwise the first of log in, network, hours, device (naming the
//!    requirement), MFA that failed (stepping up MFA is pointless while the
//!    device or network would still fail).
//!    So a rule that fails only for stale MFA yields "step up MFA", and an
//!    unmanaged laptop is told so rather than sent to break the glass.
//! 5. Independently, [`Decision::Deny`]'s `break_glass` says whether some
//!    break-the-glass rule would match but for the justification, so the proxy
//!    can offer its break-the-glass page next to any remedy.
//! 6. No rule in scope → not permitted; but a request without an identity is
//!    told to log in when some allow rule for its route needs a group.
//!
//! Only candidate rules (see [`CompiledPolicy::evaluate`]) are ranked, so a
//! denied request costs no more than an allowed one.
//!
//! A deny rule that decides gives "not from this network" when it has a
//! restrictive `sources`, "outside allowed hours" when it has `hours`, and
//! "not permitted" otherwise.

use std::cell::Cell;
use std::fmt;

use jiff::civil::DateTime;
use serde::Serialize;

use crate::ast::{Effect, Platform, Rule, Segment, format_duration, hhmm, weekday_name};
use crate::compile::{Bucket, CompiledDevice, CompiledHours, CompiledPolicy, CompiledRule, Lane};
use crate::decision::{Condition, Decision, DenyReason, DeviceFacts, DeviceFailure, RequestFacts};

/// How many of a request's groups are kept on the stack while deciding.
pub const INLINE_GROUPS: usize = 16;

/// The request's groups as interned ids, sorted: only groups some rule names.
struct GroupIds {
    inline: [u32; INLINE_GROUPS],
    len: usize,
    spill: Vec<u32>,
}

impl GroupIds {
    fn new(policy: &CompiledPolicy, groups: &[String]) -> GroupIds {
        let mut ids = GroupIds {
            inline: [0; INLINE_GROUPS],
            len: 0,
            spill: Vec::new(),
        };
        if policy.groups.is_empty() {
            return ids;
        }
        for g in groups {
            if let Some(&id) = policy.groups.get(g.as_str()) {
                if !ids.spill.is_empty() || ids.len == INLINE_GROUPS {
                    if ids.spill.is_empty() {
                        ids.spill.extend_from_slice(&ids.inline);
                    }
                    ids.spill.push(id);
                } else {
                    ids.inline[ids.len] = id;
                    ids.len += 1;
                }
            }
        }
        if ids.spill.is_empty() {
            let s = &mut ids.inline[..ids.len];
            s.sort_unstable();
        } else {
            ids.spill.sort_unstable();
        }
        ids
    }

    fn as_slice(&self) -> &[u32] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    fn intersects(&self, rule: &[u32]) -> bool {
        let mine = self.as_slice();
        let (small, big) = if mine.len() <= rule.len() {
            (mine, rule)
        } else {
            (rule, mine)
        };
        small.iter().any(|g| big.binary_search(g).is_ok())
    }
}

struct Ctx<'r, 'a> {
    req: &'r RequestFacts<'a>,
    groups: GroupIds,
    /// The request path's first segment (`"chart"` for `/chart/42`).
    first_segment: Option<&'a str>,
    /// The request time on the wall clock of the last time zone asked for.
    local: Cell<Option<(u32, DateTime)>>,
}

impl<'r, 'a> Ctx<'r, 'a> {
    fn new(policy: &CompiledPolicy, req: &'r RequestFacts<'a>) -> Self {
        Ctx {
            req,
            groups: GroupIds::new(policy, req.groups),
            first_segment: req
                .path
                .strip_prefix('/')
                .map(|rest| rest.split_once('/').map_or(rest, |(first, _)| first)),
            local: Cell::new(None),
        }
    }

    fn local(&self, h: &CompiledHours) -> DateTime {
        if let Some((id, dt)) = self.local.get()
            && id == h.tz_id
        {
            return dt;
        }
        let dt = h.tz.to_datetime(self.req.time);
        self.local.set(Some((h.tz_id, dt)));
        dt
    }
}

/// The conditions a rule failed (bit per [`Condition`]) and, when the device
/// failed, which requirement.
#[derive(Debug, Clone, Copy, Default)]
struct Fails {
    bits: u16,
    device: Option<DeviceFailure>,
}

impl Fails {
    fn has(self, c: Condition) -> bool {
        self.bits & c.bit() != 0
    }
    fn first(self) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| self.has(*c))
    }
}

/// Matches `path` against a pattern; `Some(room)` on a match, with the segment
/// bound by `{room}` if any.
fn match_path<'p>(pattern: &[Segment], path: &'p str) -> Option<Option<&'p str>> {
    let rest = path.strip_prefix('/')?;
    let mut segs = rest.split('/');
    let mut room = None;
    for seg in pattern {
        match seg {
            Segment::Rest => return Some(room),
            Segment::Star => {
                if segs.next()?.is_empty() {
                    return None;
                }
            }
            Segment::Room => {
                let s = segs.next()?;
                if s.is_empty() {
                    return None;
                }
                room = Some(s);
            }
            Segment::Literal(l) => {
                if segs.next()? != l.as_str() {
                    return None;
                }
            }
        }
    }
    segs.next().is_none().then_some(room)
}

/// A JSON number's text, formatted on the stack.
struct StackText {
    buf: [u8; 48],
    len: usize,
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn claim_matches(value: &serde_json::Value, wanted: &[Box<str>], nested: bool) -> bool {
    use serde_json::Value;
    let any = |s: &str| wanted.iter().any(|w| &**w == s);
    match value {
        Value::String(s) => any(s),
        Value::Bool(b) => any(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let mut t = StackText {
                buf: [0; 48],
                len: 0,
            };
            fmt::write(&mut t, format_args!("{n}")).is_ok()
                && std::str::from_utf8(&t.buf[..t.len]).is_ok_and(any)
        }
        Value::Array(items) if !nested => items.iter().any(|v| claim_matches(v, wanted, true)),
        _ => false,
    }
}

fn device_failure(d: &CompiledDevice, facts: Option<&DeviceFacts<'_>>) -> Option<DeviceFailure> {
    let Some(f) = facts else {
        return Some(DeviceFailure::Unknown);
    };
    if d.managed && !f.managed {
        return Some(DeviceFailure::NotManaged);
    }
    if d.disk_encrypted && !f.disk_encrypted {
        return Some(DeviceFailure::DiskNotEncrypted);
    }
    if d.screen_lock && !f.screen_lock {
        return Some(DeviceFailure::NoScreenLock);
    }
    if let Some(max) = d.max_checkin_age
        && f.checkin_age.is_none_or(|a| a > max)
    {
        return Some(DeviceFailure::CheckinStale);
    }
    if let Some(os_min) = &d.os_min {
        let platform = f.os.and_then(Platform::from_name);
        let Some(min) = platform.and_then(|p| os_min.iter().find(|(q, _)| *q == p).map(|(_, v)| v))
        else {
            return Some(DeviceFailure::OsNotAllowed);
        };
        if !f.os_version.is_some_and(|v| min.satisfied_by(v)) {
            return Some(DeviceFailure::OsOutdated);
        }
    }
    None
}

fn in_window(h: &CompiledHours, ctx: &Ctx<'_, '_>) -> bool {
    let local = ctx.local(h);
    let day = local.weekday();
    let minute =
        u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
    let starts = |d: jiff::civil::Weekday| h.days & (1 << d.to_monday_zero_offset()) != 0;
    if h.start < h.end {
        starts(day) && h.start <= minute && minute < h.end
    } else {
        // Overnight: the part after midnight belongs to the day the window started.
        (starts(day) && minute >= h.start) || (starts(day.previous()) && minute < h.end)
    }
}

/// Checks the conditions in [`Condition::ALL`] order; stops at the first
/// failure unless `all`.
fn check(rule: &CompiledRule, ctx: &Ctx<'_, '_>, all: bool) -> Fails {
    let mut f = Fails::default();
    let req = ctx.req;
    macro_rules! fail {
        ($c:expr) => {{
            f.bits |= $c.bit();
            if !all {
                return f;
            }
        }};
    }
    if let Some(routes) = &rule.routes
        && !routes.iter().any(|r| &**r == req.route)
    {
        fail!(Condition::Route);
    }
    if let Some(methods) = &rule.methods
        && !methods.iter().any(|m| m.eq_ignore_ascii_case(req.method))
    {
        fail!(Condition::Method);
    }
    if let Some(paths) = &rule.paths {
        let mut path_ok = false;
        let mut room_ok = false;
        for p in paths.iter() {
            if let Some(bound) = match_path(p, req.path) {
                path_ok = true;
                if !rule.visit_room_own || (bound.is_some() && bound == req.visit_room) {
                    room_ok = true;
                    break;
                }
            }
        }
        if !path_ok {
            fail!(Condition::Path);
        } else if !room_ok {
            fail!(Condition::VisitRoom);
        }
    }
    if let Some(sources) = &rule.sources
        && !sources.contains(req.source)
    {
        fail!(Condition::Source);
    }
    if let Some(groups) = &rule.groups
        && !ctx.groups.intersects(groups)
    {
        fail!(Condition::Groups);
    }
    if let Some(claims) = &rule.claims {
        let ok = claims.iter().all(|(name, wanted)| {
            req.claims
                .and_then(|c| c.get(&**name))
                .is_some_and(|v| claim_matches(v, wanted, false))
        });
        if !ok {
            fail!(Condition::Claims);
        }
    }
    if let Some(max) = rule.mfa_max_age
        && req.mfa_age.is_none_or(|a| a > max)
    {
        fail!(Condition::Mfa);
    }
    if let Some(d) = &rule.device
        && let Some(failure) = device_failure(d, req.device.as_ref())
    {
        f.device = Some(failure);
        fail!(Condition::Device);
    }
    if let Some(h) = &rule.hours
        && !in_window(h, ctx)
    {
        fail!(Condition::Hours);
    }
    if rule.break_glass && !req.break_glass {
        fail!(Condition::BreakGlass);
    }
    f
}

impl CompiledPolicy {
    fn bucket(&self, route: &str) -> &Bucket {
        self.routes.get(route).unwrap_or(&self.other_routes)
    }

    /// The first matching rule of a lane in file order.
    fn first_match(&self, lane: &Lane, ctx: &Ctx<'_, '_>) -> Option<u32> {
        let mut best = u32::MAX;
        let scan = |list: &[u32]| {
            for &i in list {
                if i >= best {
                    break;
                }
                let Some(rule) = self.rules.get(i as usize) else {
                    break;
                };
                if check(rule, ctx, false).bits == 0 {
                    best = i;
                    break;
                }
            }
        };
        lane.candidates(ctx.groups.as_slice(), ctx.first_segment, scan);
        (best != u32::MAX).then_some(best)
    }

    fn name(&self, i: u32) -> &str {
        self.policy
            .rules
            .get(i as usize)
            .map_or(crate::parse::DEFAULT_RULE, |r| r.name.as_str())
    }

    /// Decides one request. Pure and allocation-free on the common path.
    pub fn evaluate<'p>(&'p self, req: &RequestFacts<'_>) -> Decision<'p> {
        let ctx = Ctx::new(self, req);
        let bucket = self.bucket(req.route);
        if let Some(i) = self.first_match(&bucket.deny, &ctx) {
            let reason = self
                .rules
                .get(i as usize)
                .map_or(DenyReason::NotPermitted, |r| r.deny_reason);
            return Decision::Deny {
                rule: Some(self.name(i)),
                reason,
                break_glass: false,
            };
        }
        if let Some(i) = self.first_match(&bucket.allow, &ctx) {
            let break_glass = self.rules.get(i as usize).is_some_and(|r| r.break_glass);
            return Decision::Allow {
                rule: self.name(i),
                break_glass,
            };
        }
        let (reason, break_glass) = self.closest_reason(bucket, &ctx);
        Decision::Deny {
            rule: None,
            reason,
            break_glass,
        }
    }

    /// The reason for a default deny (see the module documentation), and
    /// whether a break-the-glass rule would allow the request once a
    /// justification is stated.
    fn closest_reason(&self, bucket: &Bucket, ctx: &Ctx<'_, '_>) -> (DenyReason, bool) {
        let req = ctx.req;
        const SCOPE: u16 = 1 << (Condition::Route as u16)
            | 1 << (Condition::Method as u16)
            | 1 << (Condition::Path as u16);
        let mut best: Option<((u8, u32, u32), Fails)> = None;
        let mut break_glass = false;
        let mut consider = |i: u32| {
            let Some(rule) = self.rules.get(i as usize) else {
                return;
            };
            let f = check(rule, ctx, true);
            if f.bits & SCOPE != 0 || f.bits == 0 {
                return;
            }
            let class = class(f, req);
            break_glass |= class == 2;
            let key = (class, f.bits.count_ones(), i);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, f));
            }
        };
        // Rules whose groups the request lacks are not visited: with an
        // identity they are unfixable, so never better than a rule visited
        // here and never break-the-glass candidates; rules indexed under
        // another first path segment are out of scope. The cost stays that
        // of the candidates, also for requests without an identity.
        bucket
            .allow
            .candidates(ctx.groups.as_slice(), ctx.first_segment, |list| {
                list.iter().for_each(|&i| consider(i));
            });
        let reason = match best {
            Some(((0, ..), f)) => reason_for(f, req),
            // Without an identity, a rule that needs a group may match after logging in.
            _ if req.user.is_none() && !bucket.allow.by_group.is_empty() => {
                DenyReason::LoginRequired
            }
            Some(((1, ..), f)) => reason_for(f, req),
            Some(((2, ..), _)) => DenyReason::BreakGlassRequired,
            _ => DenyReason::NotPermitted,
        };
        (reason, break_glass)
    }
}

/// How close a failing allow rule came: 0 misses only what the proxy fixes in
/// band (MFA step-up, logging in); 1 misses something else the user can fix;
/// 2 misses only the break-the-glass justification; 3 cannot be fixed.
fn class(f: Fails, req: &RequestFacts<'_>) -> u8 {
    let in_band = Condition::Mfa.bit()
        | Condition::Groups.bit()
        | Condition::Claims.bit()
        | Condition::VisitRoom.bit();
    if unfixable(f, req) {
        3
    } else if f.bits == Condition::BreakGlass.bit() {
        2
    } else if f.bits & !in_band == 0 {
        0
    } else {
        1
    }
}

fn unfixable(f: Fails, req: &RequestFacts<'_>) -> bool {
    if req.user.is_some() && (f.has(Condition::Groups) || f.has(Condition::Claims)) {
        return true;
    }
    f.has(Condition::VisitRoom) && (req.user.is_some() || req.visit_room.is_some())
}

fn reason_for(f: Fails, req: &RequestFacts<'_>) -> DenyReason {
    let identity = f.has(Condition::Groups)
        || f.has(Condition::Claims)
        || f.has(Condition::Mfa)
        || f.has(Condition::VisitRoom);
    if req.user.is_none() && identity {
        DenyReason::LoginRequired
    } else if f.has(Condition::Source) {
        DenyReason::NetworkNotAllowed
    } else if f.has(Condition::Hours) {
        DenyReason::OutsideHours
    } else if f.has(Condition::Device) {
        DenyReason::Device(f.device.unwrap_or(DeviceFailure::Unknown))
    } else if f.has(Condition::Mfa) {
        DenyReason::MfaRequired
    } else if f.has(Condition::BreakGlass) {
        DenyReason::BreakGlassRequired
    } else {
        DenyReason::NotPermitted
    }
}

/// `explain`: the decision and, for every rule, whether it matched and if not
/// the first condition (in [`Condition::ALL`] order) that did not.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The policy version that decided.
    pub policy_version: String,
    /// Allow or deny.
    pub decision: Effect,
    /// The deciding rule, or `default`.
    pub rule: String,
    /// The deny reason's code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
    /// The remedy shown to the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// The deciding rule is a break-the-glass rule.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// Denied, and a break-the-glass rule would allow the request once a
    /// justification is stated.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass_available: bool,
    /// Every rule, in file order.
    pub rules: Vec<RuleExplanation>,
}

/// One rule's part of an [`Explanation`].
#[derive(Debug, Clone, Serialize)]
pub struct RuleExplanation {
    /// Rule name.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Line of the rule in the policy file.
    pub line: usize,
    /// All conditions matched.
    pub matched: bool,
    /// This rule decided.
    pub deciding: bool,
    /// The first condition that did not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Condition>,
    /// Why it did not match, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl CompiledPolicy {
    /// Explains the decision for `req`: the decision (identical to
    /// [`CompiledPolicy::evaluate`]) and, for every rule, the first condition
    /// that did not match. Visits every rule; not for the hot path.
    pub fn explain(&self, req: &RequestFacts<'_>) -> Explanation {
        let decision = self.evaluate(req);
        let ctx = Ctx::new(self, req);
        let mut rules = Vec::with_capacity(self.rules.len());
        for (rule, ast) in self.rules.iter().zip(&self.policy.rules) {
            let f = check(rule, &ctx, false);
            let failed = f.first();
            let matched = failed.is_none();
            rules.push(RuleExplanation {
                name: ast.name.clone(),
                effect: ast.effect,
                line: ast.line,
                matched,
                deciding: matched && ast.name == decision.rule() && ast.effect == decision.effect(),
                failed,
                detail: failed.map(|c| detail(c, f, ast, rule, req)),
            });
        }
        Explanation {
            policy_version: self.version.clone(),
            decision: decision.effect(),
            rule: decision.rule().to_string(),
            reason: decision.reason(),
            remedy: decision.remedy().map(str::to_string),
            break_glass: matches!(
                decision,
                Decision::Allow {
                    break_glass: true,
                    ..
                }
            ),
            break_glass_available: decision.break_glass_available(),
            rules,
        }
    }
}

fn detail(
    c: Condition,
    f: Fails,
    ast: &Rule,
    rule: &CompiledRule,
    req: &RequestFacts<'_>,
) -> String {
    let list = |v: &[String]| v.join(", ");
    match c {
        Condition::Route => format!(
            "route `{}` is not one of: {}",
            req.route,
            list(ast.routes.as_deref().unwrap_or_default())
        ),
        Condition::Method => format!(
            "method `{}` is not one of: {}",
            req.method,
            list(ast.methods.as_deref().unwrap_or_default())
        ),
        Condition::Path => format!(
            "path `{}` matches none of: {}",
            req.path,
            ast.paths
                .iter()
                .flatten()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Condition::VisitRoom => {
            let bound = rule
                .paths
                .iter()
                .flatten()
                .find_map(|p| match_path(p, req.path).flatten());
            match (bound, req.visit_room) {
                (_, None) => "the session has no visit room".to_string(),
                (Some(b), Some(own)) => {
                    format!("the path's room `{b}` is not the session's room `{own}`")
                }
                (None, Some(own)) => {
                    format!("the path binds no room (the session's room is `{own}`)")
                }
            }
        }
        Condition::Source => format!(
            "source {} is not allowed by: {}",
            req.source,
            ast.sources
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Condition::Groups => format!(
            "the user's groups [{}] include none of: {}",
            req.groups.join(", "),
            list(ast.groups.as_deref().unwrap_or_default())
        ),
        Condition::Claims => {
            let failing = ast.claims.iter().flatten().find(|(name, wanted)| {
                let wanted: Vec<Box<str>> = wanted.iter().map(|s| Box::from(s.as_str())).collect();
                !req.claims
                    .and_then(|c| c.get(name.as_str()))
                    .is_some_and(|v| claim_matches(v, &wanted, false))
            });
            match failing {
                Some((name, wanted)) => {
                    let got = req
                        .claims
                        .and_then(|c| c.get(name.as_str()))
                        .map_or_else(|| "absent".to_string(), |v| format!("`{v}`"));
                    format!("claim `{name}` is {got}, not one of: {}", list(wanted))
                }
                None => "claims do not match".to_string(),
            }
        }
        Condition::Mfa => {
            let max = ast.mfa_max_age.map(format_duration).unwrap_or_default();
            match req.mfa_age {
                None => format!("no MFA in this session; the rule needs MFA within {max}"),
                Some(a) => format!(
                    "MFA was {} ago; the rule needs it within {max}",
                    format_duration(a)
                ),
            }
        }
        Condition::Device => {
            let reason = DenyReason::Device(f.device.unwrap_or(DeviceFailure::Unknown));
            let needs = ast
                .device
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!("{reason} (the rule requires: {needs})")
        }
        Condition::Hours => match (&ast.hours, &rule.hours) {
            (Some(h), Some(ch)) => {
                let local = ch.tz.to_datetime(req.time);
                format!(
                    "{} {} {} local time is outside {h}",
                    local.date(),
                    weekday_name(local.weekday()),
                    hhmm(
                        u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute()))
                            .unwrap_or(0)
                    ),
                )
            }
            _ => "outside the rule's hours".to_string(),
        },
        Condition::BreakGlass => {
            "break-the-glass rule: needs a stated justification (none given)".to_string()
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decision: {} (rule `{}`)", self.decision, self.rule)?;
        if self.break_glass {
            f.write_str(" — break-the-glass: audited and alerted")?;
        }
        writeln!(f)?;
        if let Some(reason) = self.reason {
            writeln!(f, "reason:   {reason}")?;
        }
        if let Some(remedy) = &self.remedy {
            writeln!(f, "remedy:   {remedy}")?;
        }
        if self.break_glass_available {
            writeln!(
                f,
                "          break-the-glass access is available with a stated justification"
            )?;
        }
        writeln!(f, "policy:   {}", self.policy_version)?;
        writeln!(f, "rules:")?;
        for r in &self.rules {
            write!(f, "  {} ({}, line {}): ", r.name, r.effect, r.line)?;
            match (&r.failed, &r.detail) {
                _ if r.deciding => f.write_str("matched — deciding rule")?,
                (None, _) => {
                    f.write_str("matched — not deciding (an earlier or deny rule decided)")?
                }
                (Some(c), Some(d)) => write!(f, "no match — {c}: {d}")?,
                (Some(c), None) => write!(f, "no match — {c}")?,
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Vec<Segment> {
        crate::parse::parse_path_pattern(s)
            .map(|p| p.segments)
            .unwrap_or_default()
    }

    #[test]
    fn paths_match_as_designed() {
        let export = pat("/export/**");
        for p in ["/export", "/export/", "/export/a/b", "/export/a"] {
            assert!(match_path(&export, p).is_some(), "{p}");
        }
        for p in ["/exports", "/", "/x/export", "export"] {
            assert!(match_path(&export, p).is_none(), "{p}");
        }
        let star = pat("/chart/*");
        assert!(match_path(&star, "/chart/42").is_some());
        assert!(match_path(&star, "/chart/").is_none());
        assert!(match_path(&star, "/chart").is_none());
        assert!(match_path(&star, "/chart/42/x").is_none());
        let room = pat("/room/{room}/**");
        assert_eq!(match_path(&room, "/room/r1/a"), Some(Some("r1")));
        assert_eq!(match_path(&room, "/room/r1"), Some(Some("r1")));
        assert_eq!(match_path(&room, "/room//a"), None);
        let root = pat("/");
        assert!(match_path(&root, "/").is_some());
        assert!(match_path(&root, "/a").is_none());
        let all = pat("/**");
        assert!(match_path(&all, "/").is_some());
        assert!(match_path(&all, "/a/b/c").is_some());
        // Case-sensitive; encoded characters are literal text in the canonical form.
        let lit = pat("/Chart/a b");
        assert!(match_path(&lit, "/Chart/a b").is_some());
        assert!(match_path(&lit, "/chart/a b").is_none());
        assert!(match_path(&lit, "/Chart/a%20b").is_none());
    }

    #[test]
    fn claims_compare_by_json_text() {
        let wanted: Vec<Box<str>> = ["derm", "42", "true", "1.5"]
            .iter()
            .map(|s| Box::from(*s))
            .collect();
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        assert!(claim_matches(&j("\"derm\""), &wanted, false));
        assert!(claim_matches(&j("42"), &wanted, false));
        assert!(!claim_matches(&j("42.0"), &wanted, false));
        assert!(claim_matches(&j("1.5"), &wanted, false));
        assert!(claim_matches(&j("true"), &wanted, false));
        assert!(!claim_matches(&j("false"), &wanted, false));
        assert!(claim_matches(&j("[\"x\", \"derm\"]"), &wanted, false));
        assert!(claim_matches(&j("[1, 42]"), &wanted, false));
        assert!(!claim_matches(&j("[[\"derm\"]]"), &wanted, false));
        assert!(!claim_matches(&j("null"), &wanted, false));
        assert!(!claim_matches(&j("{\"derm\": 1}"), &wanted, false));
        assert!(!claim_matches(&j("\"Derm\""), &wanted, false));
    }
}
