//! Malformed policies: each is refused with the right file:line:column and a
//! message that says what was expected; none panics; several errors in one
//! file are all reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dermgate_policy::{Diagnostics, Policy};

const ROUTES: &[&str] = &["ehr", "imaging", "video"];

/// Refuses `text` and returns the diagnostics.
fn refuse(text: &str) -> Diagnostics {
    match Policy::from_str("policy.toml", text, Some(ROUTES)) {
        Ok(_) => panic!("accepted a malformed policy:\n{text}"),
        Err(d) => {
            assert!(!d.is_empty());
            d
        }
    }
}

/// One malformed policy: the (line, column, message fragment) of every error, in order.
struct Bad {
    what: &'static str,
    text: &'static str,
    errors: &'static [(usize, usize, &'static str)],
}

const OK_HEAD: &str = "[[rule]]\nname = \"r\"\neffect = \"allow\"\n";

fn cases() -> Vec<Bad> {
    vec![
        Bad {
            what: "unclosed array-of-tables header",
            text: "[[rule]\nname = \"a\"\neffect = \"allow\"\n",
            errors: &[(1, 8, "expected `]`")],
        },
        Bad {
            what: "unterminated string",
            text: "[[rule]]\nname = \"a\neffect = \"allow\"\n",
            errors: &[(2, 10, "invalid TOML")],
        },
        Bad {
            what: "bare word value",
            text: "[[rule]]\nname = \"a\"\neffect = allow\n",
            errors: &[(3, 10, "invalid TOML")],
        },
        Bad {
            what: "duplicate key",
            text: "[[rule]]\nname = \"a\"\nname = \"b\"\neffect = \"allow\"\n",
            errors: &[(3, 1, "invalid TOML")],
        },
        Bad {
            what: "misspelt [[rule]]",
            text: "[[rules]]\nname = \"a\"\neffect = \"allow\"\n",
            errors: &[(1, 1, "no `[[rule]]`"), (1, 3, "did you mean `rule`")],
        },
        Bad {
            what: "empty file",
            text: "",
            errors: &[(1, 1, "no `[[rule]]`")],
        },
        Bad {
            what: "only comments",
            text: "# nothing here yet\n",
            errors: &[(1, 1, "no `[[rule]]`")],
        },
        Bad {
            what: "empty rule list",
            text: "rule = []\n",
            errors: &[(1, 8, "`rule` is empty")],
        },
        Bad {
            what: "rule is not a table array",
            text: "rule = 5\n",
            errors: &[(1, 8, "array of tables")],
        },
        Bad {
            what: "unknown key with did-you-mean",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ngroup = [\"clinicians\"]\n",
            errors: &[(4, 1, "did you mean `groups`")],
        },
        Bad {
            what: "misspelt mfa_max_age",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nmfa_maxage = \"12h\"\n",
            errors: &[(4, 1, "did you mean `mfa_max_age`")],
        },
        Bad {
            what: "rule without a name",
            text: "[[rule]]\neffect = \"allow\"\nroutes = [\"ehr\"]\n",
            errors: &[(1, 1, "no `name`")],
        },
        Bad {
            what: "empty name",
            text: "[[rule]]\nname = \"\"\neffect = \"allow\"\n",
            errors: &[(2, 8, "must not be empty")],
        },
        Bad {
            what: "reserved name",
            text: "[[rule]]\nname = \"default\"\neffect = \"allow\"\n",
            errors: &[(2, 8, "reserved")],
        },
        Bad {
            what: "duplicate names",
            text: "[[rule]]\nname = \"a\"\neffect = \"allow\"\n\n[[rule]]\nname = \"a\"\neffect = \"deny\"\n",
            errors: &[(6, 8, "duplicate rule name `a` (first used on line 2)")],
        },
        Bad {
            what: "missing effect",
            text: "[[rule]]\nname = \"r\"\nroutes = [\"ehr\"]\n",
            errors: &[(1, 1, "no `effect`")],
        },
        Bad {
            what: "misspelt effect",
            text: "[[rule]]\nname = \"r\"\neffect = \"alow\"\n",
            errors: &[(3, 10, "did you mean `allow`")],
        },
        Bad {
            what: "effect of the wrong type",
            text: "[[rule]]\nname = \"r\"\neffect = true\n",
            errors: &[(3, 10, "must be \"allow\" or \"deny\", found boolean")],
        },
        Bad {
            what: "unknown route with did-you-mean",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nroutes = [\"ehr\", \"imagng\"]\n",
            errors: &[(4, 18, "did you mean `imaging`")],
        },
        Bad {
            what: "empty routes",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nroutes = []\n",
            errors: &[(4, 10, "`routes` is empty")],
        },
        Bad {
            what: "routes as a string",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nroutes = \"ehr\"\n",
            errors: &[(4, 10, "must be an array")],
        },
        Bad {
            what: "group of the wrong type",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ngroups = [\"a\", 1]\n",
            errors: &[(4, 16, "each element of `groups`")],
        },
        Bad {
            what: "prefix too long",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsources = [\"10.0.0.0/33\"]\n",
            errors: &[(4, 12, "expected \"any\", a CIDR")],
        },
        Bad {
            what: "host bits set",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsources = [\"any\", \"10.0.0.1/8\"]\n",
            errors: &[(4, 19, "did you mean \"10.0.0.0/8\"")],
        },
        Bad {
            what: "!any",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsources = [\"!any\"]\n",
            errors: &[(4, 12, "would exclude every address")],
        },
        Bad {
            what: "not an address",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nsources = [\"intranet\", \"2001:db8::/129\"]\n",
            errors: &[
                (4, 12, "found \"intranet\""),
                (4, 24, "found \"2001:db8::/129\""),
            ],
        },
        Bad {
            what: "bad duration",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nmfa_max_age = \"12 hours\"\n",
            errors: &[(4, 15, "expected a duration")],
        },
        Bad {
            what: "duration as a number",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nmfa_max_age = 12\n",
            errors: &[(4, 15, "found integer")],
        },
        Bad {
            what: "misspelt time zone",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { time = \"06:00-21:00\", tz = \"America/New_Yrok\" }\n",
            errors: &[(4, 38, "did you mean \"America/New_York\"")],
        },
        Bad {
            what: "unknown time zone",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { time = \"06:00-21:00\", tz = \"Mars/Olympus\" }\n",
            errors: &[(4, 38, "unknown time zone \"Mars/Olympus\"")],
        },
        Bad {
            what: "hours without tz",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { days = \"mon-fri\" }\n",
            errors: &[(4, 9, "missing `tz`")],
        },
        Bad {
            what: "hours with only tz",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { tz = \"UTC\" }\n",
            errors: &[(4, 9, "needs `days`, `time` or both")],
        },
        Bad {
            what: "bad time range",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { time = \"6-21\", tz = \"UTC\" }\n",
            errors: &[(4, 18, "\"HH:MM-HH:MM\"")],
        },
        Bad {
            what: "empty time window",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { time = \"09:00-09:00\", tz = \"UTC\" }\n",
            errors: &[(4, 18, "starts and ends at the same time")],
        },
        Bad {
            what: "misspelt day in a range",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { days = \"mon-fry\", tz = \"UTC\" }\n",
            errors: &[(4, 18, "did you mean `fri`")],
        },
        Bad {
            what: "unknown day in a list",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { days = [\"mon\", \"funday\"], tz = \"UTC\" }\n",
            errors: &[(4, 26, "unknown day \"funday\"")],
        },
        Bad {
            what: "misspelt hours key",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nhours = { dayz = \"mon\", time = \"08:00-17:00\", tz = \"UTC\" }\n",
            errors: &[(4, 11, "did you mean `days`")],
        },
        Bad {
            what: "** in the middle of a pattern",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\npaths = [\"/a/**/b\"]\n",
            errors: &[(4, 10, "`**` may only be the last segment")],
        },
        Bad {
            what: "pattern without a leading slash",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\npaths = [\"/ok\", \"chart/*\"]\n",
            errors: &[(4, 17, "must start with `/`")],
        },
        Bad {
            what: "misspelt placeholder",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\npaths = [\"/room/{rom}\"]\n",
            errors: &[(4, 10, "did you mean `{room}`")],
        },
        Bad {
            what: "partial glob",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\npaths = [\"/img/*.dcm\"]\n",
            errors: &[(4, 10, "must be a whole segment")],
        },
        Bad {
            what: "misspelt method",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nmethods = [\"GET\", \"DELET\"]\n",
            errors: &[(4, 19, "did you mean `DELETE`")],
        },
        Bad {
            what: "misspelt device key",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ndevice = { managd = true }\n",
            errors: &[(4, 12, "did you mean `managed`")],
        },
        Bad {
            what: "device requirement set to false",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ndevice = { managed = true, screen_lock = false }\n",
            errors: &[(4, 42, "`screen_lock = false` is not a requirement")],
        },
        Bad {
            what: "bad max_checkin_age",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ndevice = { max_checkin_age = \"1 day\" }\n",
            errors: &[(4, 30, "expected a duration")],
        },
        Bad {
            what: "bad os_min version",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ndevice = { os_min = { macos = \"14.x\", ios = 17 } }\n",
            errors: &[(4, 31, "dotted numeric version"), (4, 45, "found integer")],
        },
        Bad {
            what: "os_min platform not listed",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\ndevice = { os_min = { macOS = \"14.4\", linux = \"6.1\" } }\n",
            errors: &[
                (4, 23, "did you mean `macos`"),
                (4, 39, "unknown platform `linux`"),
            ],
        },
        Bad {
            what: "visit_room other than own",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nvisit_room = \"mine\"\npaths = [\"/room/{room}\"]\n",
            errors: &[(4, 14, "must be \"own\"")],
        },
        Bad {
            what: "visit_room without paths",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nvisit_room = \"own\"\n",
            errors: &[(4, 14, "needs `paths`")],
        },
        Bad {
            what: "visit_room with a pattern that binds no room",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nvisit_room = \"own\"\npaths = [\"/room/{room}/**\", \"/static/**\"]\n",
            errors: &[(5, 9, "\"/static/**\" does not")],
        },
        Bad {
            what: "break_glass on a deny rule",
            text: "[[rule]]\nname = \"r\"\neffect = \"deny\"\nbreak_glass = true\n",
            errors: &[(4, 15, "only makes sense on an allow rule")],
        },
        Bad {
            what: "break_glass of the wrong type",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nbreak_glass = \"yes\"\n",
            errors: &[(4, 15, "true or false")],
        },
        Bad {
            what: "claim value not a list",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nclaims = { department = \"derm\" }\n",
            errors: &[(4, 25, "must be an array")],
        },
        Bad {
            what: "empty claims",
            text: "[[rule]]\nname = \"r\"\neffect = \"allow\"\nclaims = {}\n",
            errors: &[(4, 10, "`claims` is empty")],
        },
    ]
}

#[test]
fn every_malformed_policy_is_refused_at_the_right_place() {
    let all = cases();
    assert!(all.len() >= 30, "only {} malformed policies", all.len());
    let mut problems = Vec::new();
    for bad in &all {
        let d = refuse(bad.text);
        let got: Vec<(usize, usize)> = d.0.iter().map(|x| (x.line, x.column)).collect();
        let want: Vec<(usize, usize)> = bad.errors.iter().map(|e| (e.0, e.1)).collect();
        let messages_ok = d.0.len() == bad.errors.len()
            && d.0
                .iter()
                .zip(bad.errors)
                .all(|(x, e)| x.message.contains(e.2));
        if got != want || !messages_ok {
            problems.push(format!(
                "== {}: expected {:?}\n{}",
                bad.what,
                bad.errors,
                d.render()
            ));
        }
        for x in &d.0 {
            assert_eq!(x.file, "policy.toml");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let text = r#"# three rules, five mistakes
[[rule]]
name = "clinicians-ehr"
effect = "allw"
routes = ["ehr", "imagng"]
mfa_max_age = "12"

[[rule]]
name = "exports"
effect = "deny"
sources = ["!10.0.0.0/8", "10.1.2.3/16"]
paths = ["/export/**/x"]

[[rule]]
name = "clinicians-ehr"
effect = "allow"
"#;
    let d = refuse(text);
    let got: Vec<(usize, usize)> = d.0.iter().map(|x| (x.line, x.column)).collect();
    assert_eq!(
        got,
        vec![(4, 10), (5, 18), (6, 15), (11, 27), (12, 10), (15, 8)],
        "{}",
        d.render()
    );
    let rendered = d.render();
    assert!(rendered.ends_with("6 errors"), "{rendered}");
    assert!(
        rendered
            .contains("policy.toml:4:10: error: unknown effect \"allw\"; did you mean `allow`?")
    );
    assert!(
        rendered.contains("5 | routes = [\"ehr\", \"imagng\"]\n  |                  ^"),
        "{rendered}"
    );
}

#[test]
fn a_good_rule_after_a_bad_one_is_still_checked() {
    let text = format!(
        "{OK_HEAD}routes = [\"nope\"]\n\n[[rule]]\nname = \"s\"\neffect = \"allow\"\nroutes = [\"ehr\"]\nmethods = [\"GETT\"]\n"
    );
    let d = refuse(&text);
    assert_eq!(d.len(), 2, "{}", d.render());
    assert_eq!((d.0[1].line, d.0[1].column), (10, 12));
}

#[test]
fn unknown_routes_are_only_checked_with_a_route_list() {
    let text = format!("{OK_HEAD}routes = [\"anything\"]\n");
    assert!(Policy::from_str("policy.toml", &text, None).is_ok());
    assert!(Policy::from_str("policy.toml", &text, Some(ROUTES)).is_err());
}

#[test]
fn garbage_never_panics() {
    // Truncations and byte-level mutations of a valid policy: refused or accepted, never a panic.
    let base = include_str!("design_policy.toml");
    for cut in 0..base.len() {
        if base.is_char_boundary(cut) {
            let _ = Policy::from_str("p.toml", &base[..cut], Some(ROUTES));
        }
    }
    let bytes = base.as_bytes();
    for i in (0..bytes.len()).step_by(3) {
        for replacement in [b'"', b'[', b'=', b'\n', b'{', b'*', b'!', b'/'] {
            let mut m = bytes.to_vec();
            m[i] = replacement;
            if let Ok(s) = std::str::from_utf8(&m) {
                let _ = Policy::from_str("p.toml", s, Some(ROUTES));
            }
        }
    }
}
