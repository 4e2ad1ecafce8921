//! `policy allow` on any text: an edited policy, or diagnostics; never a panic,
//! and never an edited text that does not validate.
#![no_main]

use dermgate_policy::{Effect, Policy, RuleEdit, upsert_rule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut edit = RuleEdit::new("fuzz", Effect::Allow);
    edit.routes = vec!["ehr".into()];
    edit.groups = vec!["clinicians".into()];
    if let Ok(out) = upsert_rule("fuzz.toml", text, &edit, None) {
        assert!(Policy::from_str("fuzz.toml", &out.text, None).is_ok());
    }
});
