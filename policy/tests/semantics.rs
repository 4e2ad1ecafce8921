//! Decision semantics as DESIGN.md defines them, one table per condition.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dermgate_policy::{
    CompiledPolicy, Condition, Decision, DenyReason, DeviceFailure, Policy, RequestSpec, Timestamp,
};

fn policy(text: &str) -> CompiledPolicy {
    Policy::from_str("p.toml", text, None).unwrap_or_else(|d| panic!("{}", d.render()))
}

fn now() -> Timestamp {
    "2026-03-02T14:00:00Z".parse().unwrap()
}

/// A request from inline-table fields; route, method, path, source and user
/// default to an EHR chart read by alice from a home address.
fn req(fields: &str) -> RequestSpec {
    let mut parts: Vec<String> = Vec::new();
    if !fields.trim().is_empty() {
        parts.push(fields.to_string());
    }
    for (k, v) in [
        ("route", "\"ehr\""),
        ("method", "\"GET\""),
        ("path", "\"/chart/42\""),
        ("source", "\"203.0.113.7\""),
        ("user", "\"alice\""),
    ] {
        if !fields.contains(&format!("{k} =")) {
            parts.push(format!("{k} = {v}"));
        }
    }
    let text = format!(
        "{{ {} }}",
        parts.join(", ").replace("user = \"-\"", "user = \"\"")
    );
    let mut spec = RequestSpec::parse("--request", &text, now())
        .unwrap_or_else(|d| panic!("{text}\n{}", d.render()));
    if spec.user.as_deref() == Some("") {
        spec.user = None;
    }
    spec
}

/// Asserts the decision for each `(fields, expected effect, expected rule)`.
fn table(p: &CompiledPolicy, rows: &[(&str, &str, &str)]) {
    let mut wrong = Vec::new();
    for (fields, effect, rule) in rows {
        let spec = req(fields);
        let d = p.evaluate(&spec.facts());
        if d.effect().as_str() != *effect || d.rule() != *rule {
            wrong.push(format!("{fields}: expected {effect} by {rule}, got {d}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

fn reason(p: &CompiledPolicy, fields: &str) -> Option<DenyReason> {
    p.evaluate(&req(fields).facts()).reason()
}

#[test]
fn the_design_example_and_its_cases() {
    let p = policy(include_str!("design_policy.toml"));
    let cases =
        dermgate_policy::Cases::parse("cases.toml", include_str!("design_cases.toml"), now())
            .unwrap();
    let results = dermgate_policy::run_cases(&p, &cases);
    assert!(results.iter().all(|r| r.passed), "{results:#?}");
    assert_eq!(
        results[1].reason,
        Some(DenyReason::Device(DeviceFailure::Unknown))
    );
    // The same request is offered break-the-glass (the design's break-glass rule
    // needs only the clinician group and fresh MFA).
    let d = p.evaluate(&cases.cases[1].request.facts());
    assert!(d.break_glass_available());
}

#[test]
fn routes_methods_and_omitted_conditions() {
    let p = policy(
        r#"
[[rule]]
name = "read-ehr"
effect = "allow"
routes = ["ehr"]
methods = ["GET", "head"]

[[rule]]
name = "anything-on-welcome"
effect = "allow"
routes = ["welcome"]
"#,
    );
    table(
        &p,
        &[
            ("", "allow", "read-ehr"),
            ("method = \"HEAD\"", "allow", "read-ehr"),
            ("method = \"get\"", "allow", "read-ehr"),
            ("method = \"POST\"", "deny", "default"),
            ("route = \"imaging\"", "deny", "default"),
            (
                "route = \"welcome\", method = \"DELETE\", path = \"/x\", source = \"::1\", user = \"-\"",
                "allow",
                "anything-on-welcome",
            ),
        ],
    );
}

#[test]
fn deny_overrides_allow_and_file_order_names_the_rule() {
    let p = policy(
        r#"
[[rule]]
name = "allow-all"
effect = "allow"

[[rule]]
name = "allow-ehr"
effect = "allow"
routes = ["ehr"]

[[rule]]
name = "deny-delete"
effect = "deny"
methods = ["DELETE"]

[[rule]]
name = "deny-ehr-delete"
effect = "deny"
routes = ["ehr"]
methods = ["DELETE"]
"#,
    );
    table(
        &p,
        &[
            ("", "allow", "allow-all"),
            ("method = \"DELETE\"", "deny", "deny-delete"),
            (
                "method = \"DELETE\", route = \"imaging\"",
                "deny",
                "deny-delete",
            ),
            ("route = \"unknown-route\"", "allow", "allow-all"),
        ],
    );
    assert_eq!(
        reason(&p, "method = \"DELETE\""),
        Some(DenyReason::NotPermitted)
    );
}

#[test]
fn groups_are_any_of() {
    let p = policy(
        r#"
[[rule]]
name = "clin"
effect = "allow"
groups = ["clinicians", "nurses"]
"#,
    );
    table(
        &p,
        &[
            ("groups = [\"nurses\"]", "allow", "clin"),
            ("groups = [\"x\", \"clinicians\"]", "allow", "clin"),
            ("groups = [\"front-desk\"]", "deny", "default"),
            ("groups = []", "deny", "default"),
            ("groups = [\"Clinicians\"]", "deny", "default"),
        ],
    );
    assert_eq!(
        reason(&p, "groups = [\"front-desk\"]"),
        Some(DenyReason::NotPermitted)
    );
    assert_eq!(reason(&p, "user = \"-\""), Some(DenyReason::LoginRequired));
}

#[test]
fn many_groups_spill_off_the_stack() {
    let p = policy(
        "[[rule]]\nname = \"g\"\neffect = \"allow\"\ngroups = [\"g30\"]\n[[rule]]\nname = \"h\"\neffect = \"allow\"\ngroups = [\"g0\", \"g1\", \"g2\", \"g3\", \"g4\", \"g5\", \"g6\", \"g7\", \"g8\", \"g9\", \"g10\", \"g11\", \"g12\", \"g13\", \"g14\", \"g15\", \"g16\", \"g17\", \"g18\", \"g19\", \"g20\", \"g21\", \"g22\", \"g23\", \"g24\", \"g25\", \"g26\", \"g27\", \"g28\", \"g29\"]\n",
    );
    let many: Vec<String> = (0..31).rev().map(|i| format!("\"g{i}\"")).collect();
    table(
        &p,
        &[
            (&format!("groups = [{}]", many.join(", ")), "allow", "g"),
            ("groups = [\"g29\"]", "allow", "h"),
        ],
    );
}

#[test]
fn claims_of_each_json_type() {
    let p = policy(
        r#"
[[rule]]
name = "derm"
effect = "allow"
claims = { department = ["derm", "dermpath"], level = ["3", "4.5"], active = ["true"] }
"#,
    );
    let all = "claims = { department = \"derm\", level = 3, active = true }";
    table(
        &p,
        &[
            (all, "allow", "derm"),
            (
                "claims = { department = [\"x\", \"dermpath\"], level = 4.5, active = true }",
                "allow",
                "derm",
            ),
            (
                "claims = { department = \"derm\", level = [1, 3], active = [true] }",
                "allow",
                "derm",
            ),
            (
                "claims = { department = \"derm\", level = \"3\", active = \"true\" }",
                "allow",
                "derm",
            ),
            (
                "claims = { department = \"Derm\", level = 3, active = true }",
                "deny",
                "default",
            ),
            (
                "claims = { department = \"derm\", level = 3.0, active = true }",
                "deny",
                "default",
            ),
            (
                "claims = { department = \"derm\", level = 3, active = false }",
                "deny",
                "default",
            ),
            (
                "claims = { department = \"derm\", level = 3 }",
                "deny",
                "default",
            ),
            (
                "claims = { department = [[\"derm\"]], level = 3, active = true }",
                "deny",
                "default",
            ),
            ("", "deny", "default"),
        ],
    );
}

#[test]
fn mfa_max_age_is_inclusive_and_absent_mfa_fails() {
    let p = policy("[[rule]]\nname = \"m\"\neffect = \"allow\"\nmfa_max_age = \"12h\"\n");
    table(
        &p,
        &[
            ("mfa_age = \"0s\"", "allow", "m"),
            ("mfa_age = \"12h\"", "allow", "m"),
            ("mfa_age = \"12h1s\"", "deny", "default"),
            ("", "deny", "default"),
        ],
    );
    assert_eq!(reason(&p, ""), Some(DenyReason::MfaRequired));
    assert_eq!(
        reason(&p, "mfa_age = \"13h\""),
        Some(DenyReason::MfaRequired)
    );
    assert_eq!(reason(&p, "user = \"-\""), Some(DenyReason::LoginRequired));
}

#[test]
fn device_posture_names_the_failed_requirement() {
    let p = policy(
        r#"
[[rule]]
name = "posture"
effect = "allow"
device = { managed = true, disk_encrypted = true, screen_lock = true, max_checkin_age = "24h", os_min = { macos = "14.4", windows = "10.0.22631", ios = "17.4", android = "14" } }
"#,
    );
    let good = |os: &str, ver: &str| {
        format!(
            "device = {{ managed = true, disk_encrypted = true, screen_lock = true, checkin_age = \"2h\", os = \"{os}\", os_version = \"{ver}\" }}"
        )
    };
    table(
        &p,
        &[
            (&good("macos", "14.4"), "allow", "posture"),
            (&good("macos", "14.10.1"), "allow", "posture"),
            (&good("macOS", "15"), "allow", "posture"),
            (&good("macos", "14.3.9"), "deny", "default"),
            (&good("windows", "10.0.22631"), "allow", "posture"),
            (&good("windows", "10.0.19045"), "deny", "default"),
            (&good("ios", "17.4"), "allow", "posture"),
            (&good("ios", "17.3"), "deny", "default"),
            (&good("android", "14"), "allow", "posture"),
            (&good("android", "13.9"), "deny", "default"),
            (&good("linux", "6.8"), "deny", "default"),
            (&good("macos", "14.4-beta"), "deny", "default"),
        ],
    );
    let dev = |fields: &str| format!("device = {{ {fields} }}");
    let cases = [
        ("", DeviceFailure::Unknown),
        ("managed = false", DeviceFailure::NotManaged),
        ("managed = true", DeviceFailure::DiskNotEncrypted),
        (
            "managed = true, disk_encrypted = true",
            DeviceFailure::NoScreenLock,
        ),
        (
            "managed = true, disk_encrypted = true, screen_lock = true",
            DeviceFailure::CheckinStale,
        ),
        (
            "managed = true, disk_encrypted = true, screen_lock = true, checkin_age = \"25h\"",
            DeviceFailure::CheckinStale,
        ),
        (
            "managed = true, disk_encrypted = true, screen_lock = true, checkin_age = \"24h\"",
            DeviceFailure::OsNotAllowed,
        ),
        (
            "managed = true, disk_encrypted = true, screen_lock = true, checkin_age = \"1h\", os = \"linux\", os_version = \"6\"",
            DeviceFailure::OsNotAllowed,
        ),
        (
            "managed = true, disk_encrypted = true, screen_lock = true, checkin_age = \"1h\", os = \"macos\"",
            DeviceFailure::OsOutdated,
        ),
        (
            "managed = true, disk_encrypted = true, screen_lock = true, checkin_age = \"1h\", os = \"macos\", os_version = \"13\"",
            DeviceFailure::OsOutdated,
        ),
    ];
    for (fields, failure) in cases {
        let f = if fields.is_empty() {
            String::new()
        } else {
            dev(fields)
        };
        assert_eq!(
            reason(&p, &f),
            Some(DenyReason::Device(failure)),
            "{fields}"
        );
    }
    // An empty device table requires only a known device.
    let known = policy("[[rule]]\nname = \"k\"\neffect = \"allow\"\ndevice = {}\n");
    table(
        &known,
        &[("device = {}", "allow", "k"), ("", "deny", "default")],
    );
}

#[test]
fn sources_ipv4_ipv6_mapped_and_edges() {
    let p = policy(
        r#"
[[rule]]
name = "clinic"
effect = "allow"
sources = ["10.0.0.0/8", "!10.66.0.0/16", "2001:db8::/32", "192.0.2.1/32", "2001:db8:ffff::1/128"]

[[rule]]
name = "v6-everything-but"
effect = "allow"
sources = ["!::/0"]
routes = ["video"]

[[rule]]
name = "world"
effect = "allow"
sources = ["0.0.0.0/0"]
routes = ["imaging"]
"#,
    );
    let at = |ip: &str| format!("source = \"{ip}\"");
    table(
        &p,
        &[
            (&at("10.0.0.0"), "allow", "clinic"),
            (&at("10.255.255.255"), "allow", "clinic"),
            (&at("9.255.255.255"), "deny", "default"),
            (&at("11.0.0.0"), "deny", "default"),
            (&at("10.66.0.0"), "deny", "default"),
            (&at("10.66.255.255"), "deny", "default"),
            (&at("10.65.255.255"), "allow", "clinic"),
            (&at("10.67.0.0"), "allow", "clinic"),
            (&at("::ffff:10.1.2.3"), "allow", "clinic"),
            (&at("::ffff:10.66.2.3"), "deny", "default"),
            (&at("::ffff:11.1.2.3"), "deny", "default"),
            (&at("192.0.2.1"), "allow", "clinic"),
            (&at("192.0.2.0"), "deny", "default"),
            (&at("192.0.2.2"), "deny", "default"),
            (&at("::ffff:192.0.2.1"), "allow", "clinic"),
            (&at("2001:db8::"), "allow", "clinic"),
            (
                &at("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
                "allow",
                "clinic",
            ),
            (&at("2001:db9::"), "deny", "default"),
            (
                &at("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"),
                "deny",
                "default",
            ),
            (&at("::1"), "deny", "default"),
            // /0 over IPv6 excludes every IPv6 address but no IPv4 one (mapped ones included).
            (
                &format!("route = \"video\", {}", at("2001:db9::1")),
                "deny",
                "default",
            ),
            (
                &format!("route = \"video\", {}", at("198.51.100.1")),
                "allow",
                "v6-everything-but",
            ),
            (
                &format!("route = \"video\", {}", at("::ffff:198.51.100.1")),
                "allow",
                "v6-everything-but",
            ),
            // 0.0.0.0/0 is every IPv4 address, mapped ones too, and no IPv6 one.
            (
                &format!("route = \"imaging\", {}", at("255.255.255.255")),
                "allow",
                "world",
            ),
            (
                &format!("route = \"imaging\", {}", at("0.0.0.0")),
                "allow",
                "world",
            ),
            (
                &format!("route = \"imaging\", {}", at("::ffff:8.8.8.8")),
                "allow",
                "world",
            ),
            (
                &format!("route = \"imaging\", {}", at("2001:db9::1")),
                "deny",
                "default",
            ),
        ],
    );
    assert_eq!(
        reason(&p, &at("11.0.0.1")),
        Some(DenyReason::NetworkNotAllowed)
    );
}

#[test]
fn sources_written_as_mapped_ipv6_are_ipv4() {
    let p = policy(
        "[[rule]]\nname = \"m\"\neffect = \"allow\"\nsources = [\"::ffff:10.0.0.0/104\", \"!::ffff:10.9.9.9\"]\n",
    );
    table(
        &p,
        &[
            ("source = \"10.1.1.1\"", "allow", "m"),
            ("source = \"::ffff:10.1.1.1\"", "allow", "m"),
            ("source = \"10.9.9.9\"", "deny", "default"),
            ("source = \"11.1.1.1\"", "deny", "default"),
        ],
    );
}

#[test]
fn paths_star_double_star_room_and_canonical_form() {
    let p = policy(
        r#"
[[rule]]
name = "export"
effect = "allow"
paths = ["/export/**"]

[[rule]]
name = "chart"
effect = "allow"
paths = ["/chart/*", "/Cases/a b/*"]

[[rule]]
name = "root"
effect = "allow"
paths = ["/"]
"#,
    );
    let at = |path: &str| format!("path = \"{path}\"");
    table(
        &p,
        &[
            (&at("/export"), "allow", "export"),
            (&at("/export/"), "allow", "export"),
            (&at("/export/a/b"), "allow", "export"),
            (&at("/exports"), "deny", "default"),
            (&at("/x/export"), "deny", "default"),
            (&at("/chart/42"), "allow", "chart"),
            (&at("/chart/"), "deny", "default"),
            (&at("/chart"), "deny", "default"),
            (&at("/chart/42/notes"), "deny", "default"),
            (&at("/Chart/42"), "deny", "default"),
            // The proxy hands policy the decoded, normalised path: an encoded
            // form is just other text and never matches the decoded pattern.
            (&at("/Cases/a b/1"), "allow", "chart"),
            (&at("/Cases/a%20b/1"), "deny", "default"),
            (&at("/"), "allow", "root"),
        ],
    );
}

#[test]
fn visit_room_binding() {
    let p = policy(include_str!("design_policy.toml"));
    let v = |path: &str, room: &str| {
        let room = if room.is_empty() {
            String::new()
        } else {
            format!(", visit_room = \"{room}\"")
        };
        format!("route = \"video\", path = \"{path}\", user = \"-\"{room}")
    };
    table(
        &p,
        &[
            (&v("/room/r1/join", "r1"), "allow", "patients-own-visit"),
            (&v("/room/r1", "r1"), "allow", "patients-own-visit"),
            (&v("/signal/r1", "r1"), "allow", "patients-own-visit"),
            (&v("/room/r2/join", "r1"), "deny", "default"),
            (&v("/signal/r2", "r1"), "deny", "default"),
            (&v("/signal/r1/x", "r1"), "deny", "default"),
            (&v("/room/r1/join", ""), "deny", "default"),
            (&v("/admin", "r1"), "deny", "default"),
        ],
    );
    assert_eq!(
        reason(&p, &v("/room/r2/join", "r1")),
        Some(DenyReason::NotPermitted)
    );
    assert_eq!(
        reason(&p, &v("/room/r1/join", "")),
        Some(DenyReason::LoginRequired)
    );
}

#[test]
fn break_glass_needs_a_justification() {
    let p = policy(include_str!("design_policy.toml"));
    // A clinician with fresh MFA on an unknown device at 3 am: only the
    // break-glass rule could let her in.
    let base = "groups = [\"clinicians\"], mfa_age = \"5m\", time = \"2026-03-03T03:00:00-05:00\"";
    let d = p.evaluate(&req(base).facts());
    // A known device and daytime would fix it, so that is the reason; the
    // break-the-glass page is offered alongside.
    assert_eq!(
        d,
        Decision::Deny {
            rule: None,
            reason: DenyReason::OutsideHours,
            break_glass: true
        }
    );
    let d = p.evaluate(&req(&format!("{base}, break_glass = true")).facts());
    assert_eq!(
        d,
        Decision::Allow {
            rule: "break-glass-ehr",
            break_glass: true
        }
    );
    // Break-glass still needs the rule's other conditions.
    assert_eq!(
        reason(&p, "groups = [\"clinicians\"], break_glass = true"),
        Some(DenyReason::MfaRequired)
    );
    // A normal rule that matches decides before the break-glass one (no alert).
    let ok = "groups = [\"clinicians\"], mfa_age = \"5m\", time = \"2026-03-03T09:00:00-05:00\", break_glass = true, device = { managed = true, disk_encrypted = true, checkin_age = \"1h\" }";
    assert_eq!(
        p.evaluate(&req(ok).facts()),
        Decision::Allow {
            rule: "clinicians-ehr",
            break_glass: false
        }
    );
}

#[test]
fn reasons_come_from_the_closest_allow_rule() {
    let p = policy(
        r#"
[[rule]]
name = "office"
effect = "allow"
groups = ["staff"]
sources = ["10.0.0.0/8"]
mfa_max_age = "1h"

[[rule]]
name = "remote"
effect = "allow"
groups = ["staff"]
mfa_max_age = "1h"
device = { managed = true }

[[rule]]
name = "admins"
effect = "allow"
groups = ["admins"]
"#,
    );
    // `office` (network + MFA) and `remote` (MFA + device) tie: file order
    // picks `office`, and of its failures the network comes first (stepping
    // up MFA would not help from here).
    assert_eq!(
        reason(&p, "groups = [\"staff\"]"),
        Some(DenyReason::NetworkNotAllowed)
    );
    // With MFA done, `office` lacks the network and `remote` the device: a tie again.
    assert_eq!(
        reason(&p, "groups = [\"staff\"], mfa_age = \"1m\""),
        Some(DenyReason::NetworkNotAllowed)
    );
    // With a managed device, only MFA is missing.
    assert_eq!(
        reason(&p, "groups = [\"staff\"], device = { managed = true }"),
        Some(DenyReason::MfaRequired)
    );
    // From the office with MFA the device does not matter.
    assert_eq!(
        p.evaluate(&req("groups = [\"staff\"], mfa_age = \"1m\", source = \"10.1.1.1\"").facts())
            .rule(),
        "office"
    );
    // Nobody's group: nothing the user can fix.
    assert_eq!(
        reason(&p, "groups = [\"patients\"]"),
        Some(DenyReason::NotPermitted)
    );
    // No identity at all: log in.
    assert_eq!(reason(&p, "user = \"-\""), Some(DenyReason::LoginRequired));
}

#[test]
fn deny_rule_reasons() {
    let p = policy(include_str!("design_policy.toml"));
    let d = p.evaluate(
        &req("route = \"imaging\", path = \"/export/all\", source = \"203.0.113.9\"").facts(),
    );
    assert_eq!(
        d,
        Decision::Deny {
            rule: Some("no-bulk-export-off-site"),
            reason: DenyReason::NetworkNotAllowed,
            break_glass: false
        }
    );
    assert!(d.remedy().is_some_and(|r| r.contains("network")));
    let hours = policy(
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\n[[rule]]\nname = \"night\"\neffect = \"deny\"\nhours = { time = \"22:00-06:00\", tz = \"UTC\" }\n",
    );
    assert_eq!(
        reason(&hours, "time = \"2026-03-02T23:00:00Z\""),
        Some(DenyReason::OutsideHours)
    );
    assert_eq!(
        hours
            .evaluate(&req("time = \"2026-03-02T12:00:00Z\"").facts())
            .rule(),
        "a"
    );
}

#[test]
fn hours_follow_new_york_across_both_dst_changes() {
    let p = policy(
        "[[rule]]\nname = \"morning\"\neffect = \"allow\"\nhours = { time = \"08:00-09:00\", tz = \"America/New_York\" }\n",
    );
    let at = |t: &str| format!("time = \"{t}\"");
    table(
        &p,
        &[
            // Before the March change New York is UTC-5...
            (&at("2026-03-07T13:30:00Z"), "allow", "morning"),
            (&at("2026-03-07T12:30:00Z"), "deny", "default"),
            // ...after it UTC-4: the same UTC instant is now 09:30.
            (&at("2026-03-09T13:30:00Z"), "deny", "default"),
            (&at("2026-03-09T12:30:00Z"), "allow", "morning"),
            (&at("2026-03-09T12:00:00Z"), "allow", "morning"),
            (&at("2026-03-09T11:59:59Z"), "deny", "default"),
            (&at("2026-03-09T12:59:59Z"), "allow", "morning"),
            (&at("2026-03-09T13:00:00Z"), "deny", "default"),
            // November: back to UTC-5.
            (&at("2026-10-31T12:30:00Z"), "allow", "morning"),
            (&at("2026-11-02T12:30:00Z"), "deny", "default"),
            (&at("2026-11-02T13:30:00Z"), "allow", "morning"),
            (&at("2026-11-02T08:30:00-05:00"), "allow", "morning"),
        ],
    );
    // The repeated hour of November 1 counts twice; the skipped hour of March 8 never.
    let repeated = policy(
        "[[rule]]\nname = \"one-am\"\neffect = \"allow\"\nhours = { time = \"01:00-02:00\", tz = \"America/New_York\" }\n",
    );
    table(
        &repeated,
        &[
            (&at("2026-11-01T05:30:00Z"), "allow", "one-am"),
            (&at("2026-11-01T06:30:00Z"), "allow", "one-am"),
            (&at("2026-11-01T07:30:00Z"), "deny", "default"),
        ],
    );
    let skipped = policy(
        "[[rule]]\nname = \"two-am\"\neffect = \"allow\"\nhours = { time = \"02:00-03:00\", tz = \"America/New_York\" }\n",
    );
    table(
        &skipped,
        &[
            (&at("2026-03-08T06:59:59Z"), "deny", "default"),
            (&at("2026-03-08T07:00:00Z"), "deny", "default"),
            (&at("2026-03-09T06:30:00Z"), "allow", "two-am"),
        ],
    );
}

#[test]
fn overnight_windows_belong_to_their_start_day() {
    let p = policy(
        "[[rule]]\nname = \"fri-night\"\neffect = \"allow\"\nhours = { days = \"fri\", time = \"21:00-06:00\", tz = \"UTC\" }\n",
    );
    let at = |t: &str| format!("time = \"{t}\"");
    table(
        &p,
        &[
            (&at("2026-03-06T21:00:00Z"), "allow", "fri-night"),
            (&at("2026-03-06T20:59:59Z"), "deny", "default"),
            (&at("2026-03-06T23:59:59Z"), "allow", "fri-night"),
            (&at("2026-03-07T00:00:00Z"), "allow", "fri-night"),
            (&at("2026-03-07T05:59:59Z"), "allow", "fri-night"),
            (&at("2026-03-07T06:00:00Z"), "deny", "default"),
            (&at("2026-03-07T22:00:00Z"), "deny", "default"),
            // Friday early morning belongs to Thursday's window, which is not listed.
            (&at("2026-03-06T05:00:00Z"), "deny", "default"),
        ],
    );
    // Sunday night into Monday, across the wrap of the week.
    let sun = policy(
        "[[rule]]\nname = \"sun-night\"\neffect = \"allow\"\nhours = { days = [\"sun\"], time = \"22:00-02:00\", tz = \"UTC\" }\n",
    );
    table(
        &sun,
        &[
            (&at("2026-03-08T23:00:00Z"), "allow", "sun-night"),
            (&at("2026-03-09T01:00:00Z"), "allow", "sun-night"),
            (&at("2026-03-09T23:00:00Z"), "deny", "default"),
        ],
    );
}

#[test]
fn day_ranges_wrap_around_the_week() {
    let p = policy(
        "[[rule]]\nname = \"long-weekend\"\neffect = \"allow\"\nhours = { days = \"fri-mon\", tz = \"Europe/Berlin\" }\n",
    );
    let at = |t: &str| format!("time = \"{t}\"");
    table(
        &p,
        &[
            (&at("2026-03-05T12:00:00Z"), "deny", "default"), // Thu
            (&at("2026-03-05T23:30:00Z"), "allow", "long-weekend"), // Fri 00:30 in Berlin
            (&at("2026-03-07T12:00:00Z"), "allow", "long-weekend"), // Sat
            (&at("2026-03-08T12:00:00Z"), "allow", "long-weekend"), // Sun
            (&at("2026-03-09T12:00:00Z"), "allow", "long-weekend"), // Mon
            (&at("2026-03-10T12:00:00Z"), "deny", "default"), // Tue
            (&at("2026-03-09T23:30:00Z"), "deny", "default"), // Tue 00:30 in Berlin
        ],
    );
    let design = policy(include_str!("design_policy.toml"));
    let clin = "groups = [\"clinicians\"], mfa_age = \"5m\", device = { managed = true, disk_encrypted = true, checkin_age = \"1h\" }";
    table(
        &design,
        &[
            (
                &format!("{clin}, time = \"2026-03-07T20:59:00-05:00\""),
                "allow",
                "clinicians-ehr",
            ), // Sat
            (
                &format!("{clin}, time = \"2026-03-08T12:00:00-04:00\""),
                "deny",
                "default",
            ), // Sun
            (
                &format!("{clin}, time = \"2026-03-09T06:00:00-04:00\""),
                "allow",
                "clinicians-ehr",
            ), // Mon
            (
                &format!("{clin}, time = \"2026-03-09T21:00:00-04:00\""),
                "deny",
                "default",
            ),
        ],
    );
    // On Sunday the normal rule is out of hours; break-the-glass is offered.
    let sunday =
        design.evaluate(&req(&format!("{clin}, time = \"2026-03-08T12:00:00-04:00\"")).facts());
    assert_eq!(sunday.reason(), Some(DenyReason::OutsideHours));
    assert!(sunday.break_glass_available());
    // Only a break-the-glass rule applies: the reason is the justification.
    let only_glass = policy(
        "[[rule]]\nname = \"bg\"\neffect = \"allow\"\nbreak_glass = true\n[[rule]]\nname = \"admins\"\neffect = \"allow\"\ngroups = [\"admins\"]\n",
    );
    let d = only_glass.evaluate(&req("").facts());
    assert_eq!(
        d,
        Decision::Deny {
            rule: None,
            reason: DenyReason::BreakGlassRequired,
            break_glass: true
        }
    );
    assert_eq!(
        only_glass
            .evaluate(&req("break_glass = true").facts())
            .rule(),
        "bg"
    );
    let no_glass = policy(
        "[[rule]]\nname = \"day\"\neffect = \"allow\"\nhours = { days = \"mon-fri\", time = \"08:00-18:00\", tz = \"UTC\" }\n",
    );
    assert_eq!(
        reason(&no_glass, "time = \"2026-03-08T12:00:00Z\""),
        Some(DenyReason::OutsideHours)
    );
}

#[test]
fn explain_names_the_first_failing_condition_of_every_rule() {
    let p = policy(include_str!("design_policy.toml"));
    let spec = req("groups = [\"clinicians\"], time = \"2026-03-02T09:00:00-05:00\"");
    let e = p.explain(&spec.facts());
    assert_eq!(e.decision, dermgate_policy::Effect::Deny);
    assert_eq!(e.rule, "default");
    // Both allow rules fail twice; the first in file order misses MFA and a
    // known device, and the device is what blocks normal access.
    assert_eq!(e.reason, Some(DenyReason::Device(DeviceFailure::Unknown)));
    let failed: Vec<Option<Condition>> = e.rules.iter().map(|r| r.failed).collect();
    assert_eq!(
        failed,
        vec![
            Some(Condition::Mfa),
            Some(Condition::Route),
            Some(Condition::Route),
            Some(Condition::Mfa)
        ]
    );
    let text = e.to_string();
    assert!(text.contains("clinicians-ehr (allow, line 3): no match — mfa_max_age: no MFA in this session; the rule needs MFA within 12h"), "{text}");
    assert!(text.contains("no-bulk-export-off-site (deny, line 18): no match — routes: route `ehr` is not one of: imaging"), "{text}");
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json["rules"][0]["failed"],
        "mfa_max_age".replace("mfa_max_age", "mfa")
    );
    assert_eq!(json["reason"], "device_unknown");
    assert_eq!(json["policy_version"], p.version());

    let ok = req(
        "groups = [\"clinicians\"], mfa_age = \"5m\", time = \"2026-03-02T09:00:00-05:00\", device = { managed = true, disk_encrypted = true, checkin_age = \"1h\" }, break_glass = true",
    );
    let e = p.explain(&ok.facts());
    assert_eq!(e.rule, "clinicians-ehr");
    assert!(e.rules[0].deciding && e.rules[0].matched);
    assert!(e.rules[3].matched && !e.rules[3].deciding);
    assert!(e.to_string().contains("matched — deciding rule"));

    let e = p.explain(&req("groups = [\"clinicians\"], mfa_age = \"5m\", time = \"2026-03-08T12:00:00-04:00\", device = { managed = true, disk_encrypted = true, checkin_age = \"1h\" }").facts());
    let d = e.rules[0].detail.clone().unwrap_or_default();
    assert_eq!(e.rules[0].failed, Some(Condition::Hours));
    assert!(d.contains("2026-03-08 sun 12:00 local time is outside mon,tue,wed,thu,fri,sat 06:00-21:00 America/New_York"), "{d}");
    assert_eq!(e.rules[3].failed, Some(Condition::BreakGlass));
}
