//! Versions, the cases file, diff and explain's request parsing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dermgate_policy::{
    Cases, CompiledPolicy, Effect, Policy, RequestSpec, Timestamp, diff, run_cases,
};

fn policy(text: &str) -> CompiledPolicy {
    Policy::from_str("p.toml", text, None).unwrap_or_else(|d| panic!("{}", d.render()))
}

fn now() -> Timestamp {
    "2026-03-02T14:00:00Z".parse().unwrap()
}

const BASE: &str = r#"
[[rule]]
name = "clinicians-ehr"
effect = "allow"
routes = ["ehr", "imaging"]
groups = ["clinicians", "nurses"]
mfa_max_age = "90m"
device = { managed = true, os_min = { macos = "14.0" } }
methods = ["GET", "POST"]
paths = ["/chart/**", "/img/*"]
sources = ["10.0.0.0/9", "10.128.0.0/9", "!10.66.0.0/16"]
hours = { days = "mon-fri", time = "06:00-21:00", tz = "America/New_York" }
claims = { dept = ["derm", "path"] }

[[rule]]
name = "deny-export"
effect = "deny"
paths = ["/export/**"]
"#;

#[test]
fn same_meaning_same_version() {
    let base = policy(BASE);
    assert_eq!(base.version().len(), 64);
    assert!(
        base.version()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let same = [
        // Comments, whitespace, key order, set order, duplicates, spelling.
        r#"# the same policy, written differently
[[rule]]
effect   = "allow"        # allow!
name = "clinicians-ehr"
claims = { dept = ["path", "derm", "derm"] }
routes = ["imaging", "ehr", "ehr"]
groups = ["nurses", "clinicians"]
mfa_max_age = "1h30m"
methods = ["post", "GET"]
paths = ["/img/*", "/chart/**"]
sources = ["!10.66.0.0/16", "::ffff:10.0.0.0/104"]
hours = { tz = "america/new_york", time = "06:00-21:00", days = ["fri", "thu", "wed", "tue", "mon"] }

[rule.device]
os_min = { macos = "14" }
managed = true

[[rule]]
paths = ["/export/**"]
effect = "deny"
name = "deny-export"
"#,
    ];
    for text in same {
        assert_eq!(policy(text).version(), base.version(), "{text}");
    }
    // Conditions that match everything are the same as leaving them out.
    let a = policy("[[rule]]\nname = \"a\"\neffect = \"allow\"\n");
    for text in [
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\npaths = [\"/**\"]\n",
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\nsources = [\"any\"]\n",
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\nhours = { days = \"mon-sun\", tz = \"UTC\" }\n",
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\nhours = { time = \"00:00-24:00\", tz = \"Europe/Berlin\" }\n",
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\nbreak_glass = false\n",
    ] {
        assert_eq!(policy(text).version(), a.version(), "{text}");
    }
}

#[test]
fn different_meaning_different_version() {
    let base = policy(BASE);
    let changes = [
        (
            "groups = [\"clinicians\", \"nurses\"]",
            "groups = [\"clinicians\"]",
        ),
        ("mfa_max_age = \"90m\"", "mfa_max_age = \"91m\""),
        ("\"!10.66.0.0/16\"", "\"!10.67.0.0/16\""),
        ("macos = \"14.0\"", "macos = \"14.1\""),
        ("tz = \"America/New_York\"", "tz = \"America/Chicago\""),
        ("time = \"06:00-21:00\"", "time = \"06:00-21:01\""),
        ("effect = \"deny\"", "effect = \"allow\""),
        ("name = \"deny-export\"", "name = \"deny-exports\""),
        ("paths = [\"/export/**\"]", "paths = [\"/export/*\"]"),
        ("methods = [\"GET\", \"POST\"]", "methods = [\"GET\"]"),
        (
            "claims = { dept = [\"derm\", \"path\"] }",
            "claims = { dept = [\"derm\"] }",
        ),
        (
            "device = { managed = true,",
            "device = { managed = true, screen_lock = true,",
        ),
    ];
    for (from, to) in changes {
        assert!(BASE.contains(from), "{from}");
        let changed = policy(&BASE.replace(from, to));
        assert_ne!(changed.version(), base.version(), "{from} -> {to}");
    }
    // Rule order decides which rule is named: it is part of the meaning.
    let ab = policy(
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\n[[rule]]\nname = \"b\"\neffect = \"allow\"\n",
    );
    let ba = policy(
        "[[rule]]\nname = \"b\"\neffect = \"allow\"\n[[rule]]\nname = \"a\"\neffect = \"allow\"\n",
    );
    assert_ne!(ab.version(), ba.version());
}

const CASES: &str = r#"
[[case]]
name = "nurse reads a chart"
expect = "allow"
rule = "clinicians-ehr"
[case.request]
route = "ehr"
method = "GET"
path = "/chart/1"
source = "10.1.1.1"
user = "nina"
groups = ["nurses"]
claims = { dept = "derm" }
mfa_age = "5m"
time = "2026-03-02T09:00:00-05:00"
device = { managed = true, os = "macos", os_version = "14.2" }

[[case]]
name = "export is refused"
expect = "deny"
rule = "deny-export"
[case.request]
route = "imaging"
method = "GET"
path = "/export/all"
source = "10.1.1.1"

[[case]]
name = "wrong expectation"
expect = "allow"
[case.request]
route = "ehr"
method = "GET"
path = "/chart/1"
source = "10.1.1.1"
time = "now-1h"
"#;

#[test]
fn cases_run_and_report() {
    let p = policy(BASE);
    let cases = Cases::parse("cases.toml", CASES, now()).unwrap();
    assert_eq!(cases.cases.len(), 3);
    assert_eq!(
        cases.cases[2].request.time.to_string(),
        "2026-03-02T13:00:00Z"
    );
    let results = run_cases(&p, &cases);
    let passed: Vec<bool> = results.iter().map(|r| r.passed).collect();
    assert_eq!(passed, vec![true, true, false]);
    assert_eq!(
        results[0].to_string(),
        "pass  nurse reads a chart — allow by `clinicians-ehr`"
    );
    assert_eq!(
        results[2].to_string(),
        "FAIL  wrong expectation (line 29) — expected allow, got deny by `default` (you need to log in)"
    );
    let json = serde_json::to_value(&results).unwrap();
    assert_eq!(json[2]["reason"], "login_required");

    // A wrong expected rule fails the case even when the effect is right.
    let wrong_rule = CASES.replace("rule = \"deny-export\"", "rule = \"default\"");
    let results = run_cases(&p, &Cases::parse("cases.toml", &wrong_rule, now()).unwrap());
    assert!(!results[1].passed);
}

#[test]
fn malformed_cases_are_refused_with_positions() {
    let text = r#"[[case]]
name = "a"
expect = "alow"
[case.request]
route = "ehr"
method = "GET"
path = "/x"
source = "10.0.0.1"
time = "yesterday"
devise = { managed = true }

[[case]]
name = "a"
expect = "deny"
"#;
    let d = Cases::parse("cases.toml", text, now()).unwrap_err();
    let got: Vec<(usize, usize)> = d.0.iter().map(|x| (x.line, x.column)).collect();
    assert_eq!(
        got,
        vec![(3, 10), (9, 8), (10, 1), (12, 1), (13, 8)],
        "{}",
        d.render()
    );
    assert!(d.0[0].message.contains("did you mean `allow`"));
    assert!(d.0[2].message.contains("did you mean `device`"));
    assert!(
        d.0[3].message.contains("missing `request`"),
        "{}",
        d.render()
    );
    assert!(d.0[4].message.contains("duplicate case name"));
}

#[test]
fn request_from_a_file_or_an_inline_table() {
    let inline = RequestSpec::parse(
        "--request",
        r#"{ route = "ehr", method = "GET", path = "/", source = "::1" }"#,
        now(),
    )
    .unwrap();
    let doc = RequestSpec::parse(
        "req.toml",
        "route = \"ehr\"\nmethod = \"GET\"\npath = \"/\"\nsource = \"::1\"\n",
        now(),
    )
    .unwrap();
    let table = RequestSpec::parse(
        "req.toml",
        "[request]\nroute = \"ehr\"\nmethod = \"GET\"\npath = \"/\"\nsource = \"::1\"\n",
        now(),
    )
    .unwrap();
    assert_eq!(inline, doc);
    assert_eq!(inline, table);
    assert_eq!(inline.time, now());
    let d = RequestSpec::parse("req.toml", "route = \"ehr\"\n", now()).unwrap_err();
    assert_eq!(d.len(), 3, "{}", d.render());
}

#[test]
fn diff_reports_rules_and_cases() {
    let old = policy(BASE);
    let new_text = BASE
        .replace(
            "groups = [\"clinicians\", \"nurses\"]",
            "groups = [\"clinicians\"]",
        )
        .replace("mfa_max_age = \"90m\"", "mfa_max_age = \"60m\"")
        .replace("name = \"deny-export\"", "name = \"deny-exports\"")
        + "\n[[rule]]\nname = \"all\"\neffect = \"allow\"\n";
    let new = policy(&new_text);
    let cases = Cases::parse("cases.toml", CASES, now()).unwrap();
    let d = diff(&old, &new, Some(&cases));
    assert_eq!(d.added, vec!["deny-exports", "all"]);
    assert_eq!(d.removed, vec!["deny-export"]);
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].fields, vec!["groups", "mfa_max_age"]);
    assert!(!d.reordered);
    let names: Vec<&str> = d.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "nurse reads a chart",
            "export is refused",
            "wrong expectation"
        ]
    );
    assert_eq!(
        d.cases[0].old,
        (Effect::Allow, "clinicians-ehr".to_string())
    );
    assert_eq!(d.cases[0].new, (Effect::Allow, "all".to_string()));
    let text = d.to_string();
    assert!(
        text.contains("~ rule `clinicians-ehr` changed: groups, mfa_max_age"),
        "{text}"
    );
    assert!(text.contains("+ rule `all` added"));
    assert!(text.contains("- rule `deny-export` removed"));

    // Reformatting is no change at all.
    let reformatted = policy(&BASE.replace(
        "routes = [\"ehr\", \"imaging\"]",
        "routes = [ \"imaging\" , \"ehr\" ] # both",
    ));
    let d = diff(&old, &reformatted, Some(&cases));
    assert!(d.is_empty(), "{d}");
    assert!(d.to_string().starts_with("no change in meaning"));
}

#[test]
fn show_helpers() {
    let p = policy(BASE);
    let conds = p.rules()[0].conditions();
    let keys: Vec<&str> = conds.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        vec![
            "routes",
            "methods",
            "paths",
            "sources",
            "groups",
            "claims",
            "mfa_max_age",
            "device",
            "hours"
        ]
    );
    assert_eq!(conds[6].1, "1h30m");
    assert_eq!(
        conds[8].1,
        "mon,tue,wed,thu,fri 06:00-21:00 America/New_York"
    );
    let json = serde_json::to_value(p.canonical_rules()).unwrap();
    assert_eq!(
        json[0]["sources"]["include"],
        serde_json::json!(["10.0.0.0/8"])
    );
    assert_eq!(json[0]["device"]["os_min"]["macos"], "14");
    assert_eq!(p.weak_allow_rules(&[]), Vec::<&str>::new());
    let weak = policy(
        "[[rule]]\nname = \"w\"\neffect = \"allow\"\nroutes = [\"ehr\"]\n[[rule]]\nname = \"pub\"\neffect = \"allow\"\nroutes = [\"welcome\"]\n",
    );
    assert_eq!(weak.weak_allow_rules(&["welcome"]), vec!["w"]);
}
