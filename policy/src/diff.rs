//! `dermgate policy diff OLD NEW [--cases CASES]`: what changes between two
//! policies, semantically. Rules are compared by their canonical forms (so
//! reformatting, comments and reordered set values are not changes), and, when
//! cases are given, the cases whose decision changes are listed.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::ast::Effect;
use crate::cases::{Cases, run_cases};
use crate::compile::{CanonicalRule, CompiledPolicy};

/// The differences between two compiled policies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyDiff {
    /// Version of the old policy.
    pub old_version: String,
    /// Version of the new policy.
    pub new_version: String,
    /// Rules only in the new policy.
    pub added: Vec<String>,
    /// Rules only in the old policy.
    pub removed: Vec<String>,
    /// Rules in both whose meaning changed.
    pub changed: Vec<RuleChange>,
    /// The rules common to both appear in a different order (which can change
    /// which rule decides).
    pub reordered: bool,
    /// Cases whose decision or deciding rule differs (only with cases).
    pub cases: Vec<CaseChange>,
}

/// One rule whose meaning changed.
#[derive(Debug, Clone, Serialize)]
pub struct RuleChange {
    /// Rule name.
    pub name: String,
    /// The keys whose canonical value differs (`effect`, `groups`, ...).
    pub fields: Vec<String>,
}

/// One case whose outcome differs between the policies.
#[derive(Debug, Clone, Serialize)]
pub struct CaseChange {
    /// Case name.
    pub name: String,
    /// Effect and deciding rule under the old policy.
    pub old: (Effect, String),
    /// Effect and deciding rule under the new policy.
    pub new: (Effect, String),
}

impl PolicyDiff {
    /// True when the policies mean the same (and no case changes).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.reordered
            && self.cases.is_empty()
    }
}

fn field_values(r: &CanonicalRule) -> Vec<(&'static str, serde_json::Value)> {
    let j = |v: serde_json::Result<serde_json::Value>| v.unwrap_or(serde_json::Value::Null);
    vec![
        ("effect", j(serde_json::to_value(r.effect))),
        ("routes", j(serde_json::to_value(&r.routes))),
        ("methods", j(serde_json::to_value(&r.methods))),
        ("paths", j(serde_json::to_value(&r.paths))),
        ("visit_room", j(serde_json::to_value(&r.visit_room))),
        ("sources", j(serde_json::to_value(&r.sources))),
        ("groups", j(serde_json::to_value(&r.groups))),
        ("claims", j(serde_json::to_value(&r.claims))),
        ("mfa_max_age", j(serde_json::to_value(r.mfa_max_age_secs))),
        ("device", j(serde_json::to_value(&r.device))),
        ("hours", j(serde_json::to_value(&r.hours))),
        ("break_glass", serde_json::Value::Bool(r.break_glass)),
    ]
}

/// Compares `old` with `new`; with `cases`, runs them against both.
pub fn diff(old: &CompiledPolicy, new: &CompiledPolicy, cases: Option<&Cases>) -> PolicyDiff {
    let old_rules: HashMap<&str, &CanonicalRule> = old
        .canonical_rules()
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let new_rules: HashMap<&str, &CanonicalRule> = new
        .canonical_rules()
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let mut out = PolicyDiff {
        old_version: old.version().to_string(),
        new_version: new.version().to_string(),
        ..PolicyDiff::default()
    };
    for r in new.canonical_rules() {
        match old_rules.get(r.name.as_str()) {
            None => out.added.push(r.name.clone()),
            Some(o) if *o != r => {
                let fields = field_values(o)
                    .into_iter()
                    .zip(field_values(r))
                    .filter(|(a, b)| a.1 != b.1)
                    .map(|(a, _)| a.0.to_string())
                    .collect();
                out.changed.push(RuleChange {
                    name: r.name.clone(),
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for r in old.canonical_rules() {
        if !new_rules.contains_key(r.name.as_str()) {
            out.removed.push(r.name.clone());
        }
    }
    let common_old: Vec<&str> = old
        .canonical_rules()
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| new_rules.contains_key(n))
        .collect();
    let common_new: Vec<&str> = new
        .canonical_rules()
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| old_rules.contains_key(n))
        .collect();
    out.reordered = common_old != common_new;
    if let Some(cases) = cases {
        let before = run_cases(old, cases);
        let after = run_cases(new, cases);
        for (b, a) in before.into_iter().zip(after) {
            if b.effect != a.effect || b.rule != a.rule {
                out.cases.push(CaseChange {
                    name: a.name,
                    old: (b.effect, b.rule),
                    new: (a.effect, a.rule),
                });
            }
        }
    }
    out
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.old_version == self.new_version && self.cases.is_empty() {
            return writeln!(f, "no change in meaning (version {})", self.new_version);
        }
        writeln!(f, "version {} -> {}", self.old_version, self.new_version)?;
        for n in &self.added {
            writeln!(f, "+ rule `{n}` added")?;
        }
        for n in &self.removed {
            writeln!(f, "- rule `{n}` removed")?;
        }
        for c in &self.changed {
            writeln!(f, "~ rule `{}` changed: {}", c.name, c.fields.join(", "))?;
        }
        if self.reordered {
            writeln!(f, "~ rule order changed")?;
        }
        for c in &self.cases {
            writeln!(
                f,
                "! case `{}`: {} by `{}` -> {} by `{}`",
                c.name, c.old.0, c.old.1, c.new.0, c.new.1
            )?;
        }
        Ok(())
    }
}
