//! dermgate's segmentation policy: language, validation, compiler and evaluator.
//!
//! The policy file (`policy.toml`, see DESIGN.md "The files a user writes")
//! says which requests may reach which backend. This crate turns its text into
//! decisions in four named stages:
//!
//! 1. [`parse()`]: TOML text → spanned syntax tree ([`SyntaxTree`]).
//! 2. [`validate()`]: syntax tree → [`Policy`], reporting *every* problem at once
//!    with file:line:column, what was expected and a did-you-mean.
//! 3. [`compile()`]: [`Policy`] → [`CompiledPolicy`], immutable and `Send + Sync`,
//!    with everything precomputed (rule index by route, group and first path
//!    segment, CIDR tries, path patterns, time zones) and a content-hash
//!    [`version`](CompiledPolicy::version).
//! 4. [`CompiledPolicy::evaluate`]: [`RequestFacts`] → [`Decision`].
//!
//! Around them: [`CompiledPolicy::explain`] (why each rule did or did not
//! match), [`cases`] (policy tests), [`mod@diff`] (what changes between two
//! policies) and [`edit`] (add or change a rule in place, comments kept).
//!
//! The crate is pure: no I/O, no clock, no sockets. The request's time and
//! source address are inputs, so every decision is reproducible.
//!
//! ```
//! use dermgate_policy::{Policy, RequestFacts, Decision};
//!
//! let text = r#"
//! [[rule]]
//! name = "clinicians-ehr"
//! effect = "allow"
//! routes = ["ehr"]
//! groups = ["clinicians"]
//! mfa_max_age = "12h"
//! "#;
//! let policy = Policy::from_str("policy.toml", text, Some(&["ehr", "imaging"]))?;
//! let groups = vec!["clinicians".to_string()];
//! let mut req = RequestFacts {
//!     route: "ehr",
//!     method: "GET",
//!     path: "/chart/42",
//!     source: "203.0.113.7".parse()?,
//!     user: Some("alice"),
//!     groups: &groups,
//!     claims: None,
//!     mfa_age: Some(std::time::Duration::from_secs(600)),
//!     time: "2026-03-02T14:00:00Z".parse()?,
//!     device: None,
//!     visit_room: None,
//!     break_glass: false,
//! };
//! assert_eq!(policy.evaluate(&req), Decision::Allow { rule: "clinicians-ehr", break_glass: false });
//!
//! req.mfa_age = None;
//! let denied = policy.evaluate(&req);
//! assert_eq!(denied.rule(), "default");
//! assert_eq!(denied.reason(), Some(dermgate_policy::DenyReason::MfaRequired));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ast;
pub mod cases;
pub mod cidr;
pub mod compile;
pub mod decision;
pub mod diff;
pub mod edit;
pub mod error;
pub mod eval;
pub mod parse;
pub mod text;

pub use ast::{Effect, Policy, Rule};
pub use cases::{Case, CaseResult, Cases, RequestSpec, run_cases};
pub use cidr::SourceSet;
pub use compile::{CanonicalRule, CompiledPolicy, compile};
pub use decision::{Condition, Decision, DenyReason, DeviceFacts, DeviceFailure, RequestFacts};
pub use diff::{PolicyDiff, diff};
pub use edit::{RuleEdit, upsert_rule};
pub use error::ValueError;
pub use eval::{Explanation, RuleExplanation};
pub use parse::{SyntaxTree, parse, validate};
pub use text::{Diagnostic, Diagnostics};

/// Re-exported so callers build [`RequestFacts::time`] without naming jiff themselves.
pub use jiff::Timestamp;

impl Policy {
    /// Runs every stage up to a compiled policy: parse, validate (with
    /// `known_routes`, route names are checked too), compile.
    #[allow(clippy::should_implement_trait)] // three arguments; not `FromStr`
    pub fn from_str(
        file: &str,
        text: &str,
        known_routes: Option<&[&str]>,
    ) -> Result<CompiledPolicy, Diagnostics> {
        let tree = parse(file, text)?;
        let policy = validate(&tree, known_routes)?;
        Ok(compile(policy))
    }

    /// Parses and validates without compiling.
    pub fn parse(
        file: &str,
        text: &str,
        known_routes: Option<&[&str]>,
    ) -> Result<Policy, Diagnostics> {
        let tree = parse(file, text)?;
        validate(&tree, known_routes)
    }

    /// Compiles this policy (stage three).
    pub fn compile(self) -> CompiledPolicy {
        compile(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn compiled_policy_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<CompiledPolicy>();
        check::<Explanation>();
    }
}
