//! `dermgate policy allow|deny`: add a rule, or change one in place, keeping
//! the comments, order and formatting of everything else (toml_edit). The
//! result is validated before it is returned, so the CLI never writes a policy
//! that would be refused.

use serde::Serialize;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::ast::Effect;
use crate::text::{Diagnostics, position};

/// What `policy allow` / `policy deny` asks for. Empty lists and `None` leave
/// the existing key of a changed rule as it is (and are left out of a new rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleEdit {
    /// The rule to add or change.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// `routes`.
    pub routes: Vec<String>,
    /// `groups`.
    pub groups: Vec<String>,
    /// `sources` (`any`, CIDRs, `!CIDR`).
    pub sources: Vec<String>,
    /// `methods`.
    pub methods: Vec<String>,
    /// `paths`.
    pub paths: Vec<String>,
    /// `mfa_max_age` (a duration such as `"12h"`).
    pub mfa_max_age: Option<String>,
}

impl RuleEdit {
    /// A new edit with only a name and an effect.
    pub fn new(name: &str, effect: Effect) -> RuleEdit {
        RuleEdit {
            name: name.to_string(),
            effect,
            routes: Vec::new(),
            groups: Vec::new(),
            sources: Vec::new(),
            methods: Vec::new(),
            paths: Vec::new(),
            mfa_max_age: None,
        }
    }
}

/// The edited policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    /// The whole new file.
    pub text: String,
    /// True when a rule was added, false when an existing one was changed.
    pub created: bool,
}

fn error(file: &str, text: &str, message: String) -> Diagnostics {
    Diagnostics(vec![position(file, text, 0, message)])
}

fn array(values: &[String]) -> Value {
    let mut a = Array::new();
    for v in values {
        a.push(v.as_str());
    }
    Value::Array(a)
}

/// Replaces (or adds) `key` in `table`, keeping the old value's surrounding
/// whitespace and trailing comment.
fn set(table: &mut Table, key: &str, mut value: Value) {
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *value.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(value));
}

fn apply(table: &mut Table, edit: &RuleEdit) {
    set(table, "effect", Value::from(edit.effect.as_str()));
    for (key, values) in [
        ("routes", &edit.routes),
        ("groups", &edit.groups),
        ("sources", &edit.sources),
        ("methods", &edit.methods),
        ("paths", &edit.paths),
    ] {
        if !values.is_empty() {
            set(table, key, array(values));
        }
    }
    if let Some(m) = &edit.mfa_max_age {
        set(table, "mfa_max_age", Value::from(m.as_str()));
    }
}

/// Adds the rule `edit.name` at the end of the policy, or changes it in place
/// when it exists. Returns the new text, validated (route names too, with
/// `known_routes`), or every problem the result would have.
pub fn upsert_rule(
    file: &str,
    text: &str,
    edit: &RuleEdit,
    known_routes: Option<&[&str]>,
) -> Result<Edited, Diagnostics> {
    // Syntax errors in the original are reported with the original's positions.
    crate::parse::parse(file, text)?;
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        error(file, text, format!("invalid TOML: {}", e.message()))
    })?;
    let created;
    let mut appended = None;
    match doc.get_mut("rule") {
        None => {
            // No rule yet: append the new table after whatever the file holds
            // (comments included), rendered on its own.
            let mut aot = ArrayOfTables::new();
            let mut t = Table::new();
            set(&mut t, "name", Value::from(edit.name.as_str()));
            apply(&mut t, edit);
            aot.push(t);
            let mut fresh = DocumentMut::new();
            fresh.insert("rule", Item::ArrayOfTables(aot));
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.trim().is_empty() {
                out.push('\n');
            }
            out.push_str(&fresh.to_string());
            appended = Some(out);
            created = true;
        }
        Some(Item::ArrayOfTables(aot)) => {
            let existing = aot
                .iter_mut()
                .find(|t| t.get("name").and_then(Item::as_str) == Some(edit.name.as_str()));
            match existing {
                Some(t) => {
                    apply(t, edit);
                    created = false;
                }
                None => {
                    let mut t = Table::new();
                    set(&mut t, "name", Value::from(edit.name.as_str()));
                    apply(&mut t, edit);
                    t.decor_mut().set_prefix("\n");
                    aot.push(t);
                    created = true;
                }
            }
        }
        Some(_) => {
            return Err(error(
                file,
                text,
                "`rule` is not written as `[[rule]]` tables; `policy allow`/`deny` edit only `[[rule]]` tables".to_string(),
            ));
        }
    }
    let mut out = appended.unwrap_or_else(|| doc.to_string());
    // A rule appended to a file without a final newline must start on its own line.
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let as_edited = format!("{file} (as edited)");
    crate::Policy::parse(&as_edited, &out, known_routes)?;
    Ok(Edited { text: out, created })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const POLICY: &str = r#"# Practice policy — reviewed 2026-01
[[rule]]
name = "clinicians-ehr"   # the main rule
effect = "allow"
routes = ["ehr"]          # only the EHR
groups = ["clinicians"]
mfa_max_age = "12h"

# Off-site exports are never allowed.
[[rule]]
name = "no-bulk-export-off-site"
effect = "deny"
routes = ["imaging"]
paths = ["/export/**"]
sources = ["!10.0.0.0/8"]
"#;

    #[test]
    fn adds_a_rule_at_the_end_keeping_everything_else() {
        let mut e = RuleEdit::new("nurses-imaging", Effect::Allow);
        e.routes = vec!["imaging".into()];
        e.groups = vec!["nurses".into()];
        e.mfa_max_age = Some("8h".into());
        let out = upsert_rule("p.toml", POLICY, &e, Some(&["ehr", "imaging"])).unwrap();
        assert!(out.created);
        assert!(out.text.starts_with(POLICY), "{}", out.text);
        let added = &out.text[POLICY.len()..];
        assert_eq!(
            added,
            "\n[[rule]]\nname = \"nurses-imaging\"\neffect = \"allow\"\nroutes = [\"imaging\"]\ngroups = [\"nurses\"]\nmfa_max_age = \"8h\"\n"
        );
    }

    #[test]
    fn changes_a_rule_in_place_keeping_comments() {
        let mut e = RuleEdit::new("clinicians-ehr", Effect::Allow);
        e.routes = vec!["ehr".into(), "imaging".into()];
        e.sources = vec!["10.0.0.0/8".into()];
        let out = upsert_rule("p.toml", POLICY, &e, Some(&["ehr", "imaging"])).unwrap();
        assert!(!out.created);
        let expected = POLICY
            .replace(
                "routes = [\"ehr\"]          # only the EHR",
                "routes = [\"ehr\", \"imaging\"]          # only the EHR",
            )
            .replace(
                "mfa_max_age = \"12h\"\n",
                "mfa_max_age = \"12h\"\nsources = [\"10.0.0.0/8\"]\n",
            );
        assert_eq!(out.text, expected);
    }

    #[test]
    fn flips_effect() {
        let e = RuleEdit::new("no-bulk-export-off-site", Effect::Allow);
        let out = upsert_rule("p.toml", POLICY, &e, None).unwrap();
        assert!(
            out.text
                .contains("name = \"no-bulk-export-off-site\"\neffect = \"allow\"\n")
        );
    }

    #[test]
    fn refuses_an_invalid_result() {
        let mut e = RuleEdit::new("x", Effect::Allow);
        e.routes = vec!["ehrr".into()];
        e.sources = vec!["10.0.0.300/8".into()];
        let d = upsert_rule("p.toml", POLICY, &e, Some(&["ehr", "imaging"])).unwrap_err();
        assert_eq!(d.len(), 2, "{}", d.render());
        assert!(
            d.0[0].message.contains("did you mean `ehr`"),
            "{}",
            d.render()
        );
        assert!(d.0[0].file.contains("as edited"));
    }

    #[test]
    fn creates_the_first_rule() {
        let e = RuleEdit::new("all", Effect::Allow);
        let out = upsert_rule("p.toml", "# empty so far\n", &e, None).unwrap();
        assert_eq!(
            out.text,
            "# empty so far\n\n[[rule]]\nname = \"all\"\neffect = \"allow\"\n"
        );
        let out = upsert_rule("p.toml", "", &e, None).unwrap();
        assert_eq!(out.text, "[[rule]]\nname = \"all\"\neffect = \"allow\"\n");
    }

    #[test]
    fn refuses_syntax_errors_with_positions() {
        let e = RuleEdit::new("x", Effect::Allow);
        let d = upsert_rule("p.toml", "[[rule]\nname = 1\n", &e, None).unwrap_err();
        assert_eq!(d.0[0].line, 1);
    }
}
