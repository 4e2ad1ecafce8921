//! Property test: the compiled evaluator (route and group index, prefix tries,
//! precompiled patterns, local-time cache) agrees with a small, obviously
//! correct reference evaluator written here straight from DESIGN.md over the
//! validated rules, over random policies and random requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::time::Duration;

use dermgate_policy::ast::{Segment, Source};
use dermgate_policy::cases::DeviceSpec;
use dermgate_policy::{Effect, Policy, RequestSpec, Rule, Timestamp};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

// ---------- the reference evaluator ----------

/// Matches path segments against pattern segments by plain recursion, `**`
/// anywhere; returns the room bound by `{room}` on a match.
fn glob(pattern: &[Segment], segs: &[&str], room: Option<String>) -> Option<Option<String>> {
    match pattern.split_first() {
        None => segs.is_empty().then_some(room),
        Some((Segment::Rest, rest)) => {
            (0..=segs.len()).find_map(|skip| glob(rest, &segs[skip..], room.clone()))
        }
        Some((seg, rest)) => {
            let (first, tail) = segs.split_first()?;
            match seg {
                Segment::Literal(l) if l == first => glob(rest, tail, room),
                Segment::Star if !first.is_empty() => glob(rest, tail, room),
                Segment::Room if !first.is_empty() => glob(rest, tail, Some(first.to_string())),
                _ => None,
            }
        }
    }
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn version_parts(s: &str) -> Option<Vec<u64>> {
    s.split('.')
        .map(|p| {
            p.parse::<u64>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

fn at_least(reported: &str, min: &[u64]) -> bool {
    let Some(mut got) = version_parts(reported) else {
        return false;
    };
    let mut want = min.to_vec();
    let n = got.len().max(want.len());
    got.resize(n, 0);
    want.resize(n, 0);
    got >= want
}

fn reference_matches(r: &Rule, q: &RequestSpec) -> bool {
    if let Some(routes) = &r.routes
        && !routes.contains(&q.route)
    {
        return false;
    }
    if let Some(methods) = &r.methods
        && !methods.iter().any(|m| m.eq_ignore_ascii_case(&q.method))
    {
        return false;
    }
    if let Some(paths) = &r.paths {
        let Some(rest) = q.path.strip_prefix('/') else {
            return false;
        };
        let segs: Vec<&str> = rest.split('/').collect();
        let ok = paths.iter().any(|p| match glob(&p.segments, &segs, None) {
            None => false,
            Some(room) => {
                !r.visit_room_own || (room.is_some() && room.as_deref() == q.visit_room.as_deref())
            }
        });
        if !ok {
            return false;
        }
    }
    if let Some(sources) = &r.sources {
        let addr = match q.source {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            v4 => v4,
        };
        let includes: Vec<_> = sources
            .iter()
            .filter(|s| !matches!(s, Source::Exclude(_)))
            .collect();
        let included = includes.is_empty()
            || includes.iter().any(|s| match s {
                Source::Any => true,
                Source::Include(n) => n.contains(&addr),
                Source::Exclude(_) => false,
            });
        let excluded = sources
            .iter()
            .any(|s| matches!(s, Source::Exclude(n) if n.contains(&addr)));
        if !included || excluded {
            return false;
        }
    }
    if let Some(groups) = &r.groups
        && !groups.iter().any(|g| q.groups.contains(g))
    {
        return false;
    }
    if let Some(claims) = &r.claims {
        for (name, wanted) in claims {
            let ok = match q.claims.get(name) {
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .filter_map(json_text)
                    .any(|t| wanted.contains(&t)),
                Some(v) => json_text(v).is_some_and(|t| wanted.contains(&t)),
                None => false,
            };
            if !ok {
                return false;
            }
        }
    }
    if let Some(max) = r.mfa_max_age
        && q.mfa_age.is_none_or(|a| a > max)
    {
        return false;
    }
    if let Some(req) = &r.device {
        let Some(d) = &q.device else { return false };
        if (req.managed && !d.managed)
            || (req.disk_encrypted && !d.disk_encrypted)
            || (req.screen_lock && !d.screen_lock)
        {
            return false;
        }
        if let Some(max) = req.max_checkin_age
            && d.checkin_age.is_none_or(|a| a > max)
        {
            return false;
        }
        if let Some(os_min) = &req.os_min {
            let min = os_min.iter().find(|(p, _)| {
                d.os.as_deref()
                    .is_some_and(|os| os.eq_ignore_ascii_case(p.as_str()))
            });
            let Some((_, min)) = min else { return false };
            if !d.os_version.as_deref().is_some_and(|v| at_least(v, &min.0)) {
                return false;
            }
        }
    }
    if let Some(h) = &r.hours {
        let zoned = q.time.to_zoned_datetime(h.tz.clone());
        let day = zoned.weekday();
        let minute =
            u16::try_from(zoned.hour()).unwrap() * 60 + u16::try_from(zoned.minute()).unwrap();
        let listed = |d| h.days.as_ref().is_none_or(|days| days.contains(&d));
        let (start, end) = h.time.unwrap_or((0, 1440));
        let inside = if start < end {
            listed(day) && start <= minute && minute < end
        } else {
            (listed(day) && minute >= start) || (listed(day.previous()) && minute < end)
        };
        if !inside {
            return false;
        }
    }
    !r.break_glass || q.break_glass
}

/// (effect, deciding rule) per DESIGN.md.
fn reference_decide(p: &Policy, q: &RequestSpec) -> (Effect, String) {
    for effect in [Effect::Deny, Effect::Allow] {
        if let Some(r) = p
            .rules
            .iter()
            .find(|r| r.effect == effect && reference_matches(r, q))
        {
            return (effect, r.name.clone());
        }
    }
    (Effect::Deny, "default".to_string())
}

// ---------- random policies ----------

const ROUTES: &[&str] = &["ehr", "imaging", "video"];
const GROUPS: &[&str] = &["a", "b", "c", "d"];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "get"];
const PATHS: &[&str] = &[
    "/**",
    "/chart/*",
    "/export/**",
    "/",
    "/chart/42",
    "/room/*/x",
    "/export",
];
const ROOM_PATHS: &[&str] = &["/room/{room}/**", "/signal/{room}", "/{room}"];
const SOURCES: &[&str] = &[
    "any",
    "10.0.0.0/8",
    "!10.1.0.0/16",
    "2001:db8::/32",
    "!2001:db8:1::/48",
    "192.168.1.0/24",
    "::ffff:172.16.0.0/108",
    "!0.0.0.0/0",
    "8.8.8.8",
];
const CLAIM_VALUES: &[&str] = &["derm", "42", "true", "1.5"];
const OS_MIN: &[&str] = &[
    "macos = \"14.4\"",
    "windows = \"10.0.22631\"",
    "ios = \"17\"",
    "android = \"14\"",
];
const DAYS: &[&str] = &[
    "\"mon-fri\"",
    "\"fri-mon\"",
    "\"sat\"",
    "[\"mon\", \"wed\"]",
    "\"sun-tue\"",
];
const TIMES: &[&str] = &[
    "06:00-21:00",
    "21:00-06:00",
    "00:00-24:00",
    "09:30-09:45",
    "23:00-01:00",
];
const TZS: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
];

fn quoted(v: &[&str]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn list(
    pool: &'static [&'static str],
    max: usize,
) -> impl Strategy<Value = Option<Vec<&'static str>>> {
    prop::option::weighted(0.4, subsequence(pool, 1..=max.min(pool.len())))
}

prop_compose! {
    fn device_text()(
        managed in any::<bool>(),
        disk in any::<bool>(),
        lock in any::<bool>(),
        checkin in prop::option::of(select(&["1h", "1d"][..])),
        os_min in prop::option::of(subsequence(OS_MIN, 1..=2)),
    ) -> String {
        let mut parts = Vec::new();
        if managed { parts.push("managed = true".to_string()); }
        if disk { parts.push("disk_encrypted = true".to_string()); }
        if lock { parts.push("screen_lock = true".to_string()); }
        if let Some(c) = checkin { parts.push(format!("max_checkin_age = \"{c}\"")); }
        if let Some(o) = os_min { parts.push(format!("os_min = {{ {} }}", o.join(", "))); }
        format!("{{ {} }}", parts.join(", "))
    }
}

prop_compose! {
    fn hours_text()(
        days in prop::option::of(select(DAYS)),
        time in prop::option::of(select(TIMES)),
        tz in select(TZS),
    ) -> String {
        let mut parts = Vec::new();
        if let Some(d) = days { parts.push(format!("days = {d}")); }
        match (days, time) {
            (_, Some(t)) => parts.push(format!("time = \"{t}\"")),
            (None, None) => parts.push("time = \"08:00-17:00\"".to_string()),
            (Some(_), None) => {}
        }
        parts.push(format!("tz = \"{tz}\""));
        format!("{{ {} }}", parts.join(", "))
    }
}

prop_compose! {
    fn rule_text()(
        allow in any::<bool>(),
        routes in list(ROUTES, 2),
        groups in list(GROUPS, 2),
        methods in list(METHODS, 2),
        paths in list(PATHS, 3),
        own_room in prop::option::weighted(0.15, subsequence(ROOM_PATHS, 1..=2)),
        sources in list(SOURCES, 3),
        claims in prop::option::weighted(0.2, subsequence(CLAIM_VALUES, 1..=2)),
        mfa in prop::option::weighted(0.3, select(&["30m", "12h"][..])),
        device in prop::option::weighted(0.3, device_text()),
        hours in prop::option::weighted(0.3, hours_text()),
        break_glass in prop::bool::weighted(0.15),
    ) -> String {
        let mut t = format!("effect = \"{}\"\n", if allow { "allow" } else { "deny" });
        if let Some(v) = routes { t += &format!("routes = {}\n", quoted(&v)); }
        if let Some(v) = groups { t += &format!("groups = {}\n", quoted(&v)); }
        if let Some(v) = methods { t += &format!("methods = {}\n", quoted(&v)); }
        match own_room {
            Some(v) => t += &format!("visit_room = \"own\"\npaths = {}\n", quoted(&v)),
            None => if let Some(v) = paths { t += &format!("paths = {}\n", quoted(&v)); },
        }
        if let Some(v) = sources { t += &format!("sources = {}\n", quoted(&v)); }
        if let Some(v) = claims { t += &format!("claims = {{ dept = {} }}\n", quoted(&v)); }
        if let Some(v) = mfa { t += &format!("mfa_max_age = \"{v}\"\n"); }
        if let Some(v) = device { t += &format!("device = {v}\n"); }
        if let Some(v) = hours { t += &format!("hours = {v}\n"); }
        if break_glass && allow { t += "break_glass = true\n"; }
        t
    }
}

fn policy_text() -> impl Strategy<Value = String> {
    prop::collection::vec(rule_text(), 1..10).prop_map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, body)| format!("[[rule]]\nname = \"r{i}\"\n{body}\n"))
            .collect()
    })
}

// ---------- random requests ----------

const REQ_PATHS: &[&str] = &[
    "/",
    "/chart/42",
    "/chart/",
    "/chart/7",
    "/export",
    "/export/",
    "/export/a/b",
    "/room/r1/x",
    "/room/r2",
    "/room/r1",
    "/signal/r1",
    "/r1",
    "/x",
    "/room/r1/x/y",
    "/room//x",
];
const REQ_SOURCES: &[&str] = &[
    "10.1.2.3",
    "10.2.2.3",
    "::ffff:10.1.2.3",
    "::ffff:10.2.0.1",
    "2001:db8::5",
    "2001:db8:1::5",
    "192.168.1.9",
    "192.168.2.9",
    "8.8.8.8",
    "::ffff:8.8.8.8",
    "::1",
    "172.16.5.5",
    "::ffff:172.16.5.5",
    "0.0.0.0",
    "255.255.255.255",
];

fn claim_value() -> impl Strategy<Value = serde_json::Value> {
    select(vec![
        serde_json::json!("derm"),
        serde_json::json!("Derm"),
        serde_json::json!(42),
        serde_json::json!(42.0),
        serde_json::json!(1.5),
        serde_json::json!(true),
        serde_json::json!(false),
        serde_json::json!(["x", "derm"]),
        serde_json::json!([42]),
        serde_json::json!([["derm"]]),
        serde_json::json!(null),
        serde_json::json!({ "derm": 1 }),
    ])
}

prop_compose! {
    fn device_spec()(
        managed in any::<bool>(),
        disk_encrypted in any::<bool>(),
        screen_lock in any::<bool>(),
        os in prop::option::of(select(&["macos", "windows", "ios", "android", "linux", "MacOS"][..])),
        os_version in prop::option::of(select(&["14.4", "14.3", "10.0.22631", "10.0.19045", "17", "16.9", "14", "13", "15.0.1", "x", "14.4.0.1"][..])),
        checkin in prop::option::of(0u64..200_000),
    ) -> DeviceSpec {
        DeviceSpec {
            managed,
            disk_encrypted,
            screen_lock,
            os: os.map(str::to_string),
            os_version: os_version.map(str::to_string),
            checkin_age: checkin.map(Duration::from_secs),
        }
    }
}

prop_compose! {
    fn request()(
        route in select(&["ehr", "imaging", "video", "other"][..]),
        method in select(&["GET", "POST", "DELETE", "get", "PUT"][..]),
        path in select(REQ_PATHS),
        source in select(REQ_SOURCES),
        user in prop::option::weighted(0.85, Just("u")),
        groups in subsequence(&["a", "b", "c", "d", "e"][..], 0..=3),
        dept in prop::option::of(claim_value()),
        mfa in prop::option::of(0u64..72_000),
        secs in 0i64..(400 * 86_400),
        device in prop::option::of(device_spec()),
        visit_room in prop::option::of(select(&["r1", "r2"][..])),
        break_glass in any::<bool>(),
    ) -> RequestSpec {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut q = RequestSpec::new(route, method, path, source.parse().unwrap(), start + jiff::SignedDuration::from_secs(secs));
        q.user = user.map(str::to_string);
        q.groups = groups.into_iter().map(str::to_string).collect();
        if let Some(v) = dept {
            q.claims.insert("dept".to_string(), v);
        }
        q.mfa_age = mfa.map(Duration::from_secs);
        q.device = device;
        q.visit_room = visit_room.map(str::to_string);
        q.break_glass = break_glass;
        q
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compiled_evaluator_agrees_with_the_reference(
        text in policy_text(),
        requests in prop::collection::vec(request(), 40),
    ) {
        let parsed = Policy::parse("p.toml", &text, None);
        let policy = match parsed {
            Ok(p) => p,
            Err(d) => panic!("generated policy refused:\n{text}\n{}", d.render()),
        };
        let compiled = policy.clone().compile();
        for q in &requests {
            let facts = q.facts();
            let got = compiled.evaluate(&facts);
            let want = reference_decide(&policy, q);
            prop_assert_eq!(
                (got.effect(), got.rule().to_string()),
                want.clone(),
                "policy:\n{}\nrequest: {:?}", text, q
            );
            // explain: same decision; each rule's match as the reference says.
            let e = compiled.explain(&facts);
            prop_assert_eq!((e.decision, e.rule.clone()), want);
            for (r, x) in policy.rules.iter().zip(&e.rules) {
                prop_assert_eq!(x.matched, reference_matches(r, q), "rule {} in\n{}\n{:?}", r.name, text, q);
                prop_assert_eq!(x.failed.is_some(), !x.matched);
            }
            // Break-the-glass is offered exactly when a break-the-glass rule would
            // match if a justification were given (and no deny rule decided).
            if got.rule() == "default" {
                let mut with = q.clone();
                with.break_glass = true;
                let offer = policy.rules.iter().any(|r| r.break_glass && reference_matches(r, &with));
                prop_assert_eq!(got.break_glass_available(), offer, "policy:\n{}\nrequest: {:?}", text, q);
            } else {
                prop_assert!(!got.break_glass_available());
            }
        }
    }
}
