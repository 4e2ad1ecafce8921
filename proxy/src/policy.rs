//! The segmentation policy in the running proxy: load, test, swap, watch.
//!
//! A policy is loaded through the same stages everywhere (`check`, start,
//! file change, `dermgate policy apply`): parse and validate against the
//! configured route names, compile, then run the `[policy] tests` cases if
//! configured. Only a policy that passes all of it is swapped in (one atomic
//! pointer store); otherwise the refusal is logged and the running policy
//! stays. Requests read the current policy with a lock-free load.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dermgate_policy::{Cases, CompiledPolicy, Diagnostics, Policy, Timestamp, run_cases};

use crate::config::PolicyConfig;
use crate::pipeline::Shared;

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy or cases file could not be read.
    #[error("{0}")]
    Read(String),
    /// The policy (or its cases file) is invalid; every problem is listed.
    #[error("{}", .0.render())]
    Invalid(Diagnostics),
    /// The policy is valid but its tests fail.
    #[error("policy tests failed:\n{0}")]
    TestsFailed(String),
}

impl PolicyError {
    /// As diagnostics (for `dermgate check`).
    pub fn into_diagnostics(self, config_file: &str) -> Diagnostics {
        match self {
            Self::Invalid(d) => d,
            other => Diagnostics(vec![dermgate_policy::text::position(
                config_file,
                "",
                0,
                other.to_string(),
            )]),
        }
    }
}

/// Loads, validates, compiles and tests a policy. `text` replaces the file's
/// contents (for `apply`); the cases file is always read from disk.
pub fn load(
    cfg: &PolicyConfig,
    text: Option<&str>,
    routes: &[&str],
) -> Result<CompiledPolicy, PolicyError> {
    let name = cfg.file.display().to_string();
    let owned;
    let text = match text {
        Some(t) => t,
        None => {
            owned = std::fs::read_to_string(&cfg.file)
                .map_err(|e| PolicyError::Read(format!("{name}: cannot read: {e}")))?;
            &owned
        }
    };
    let policy = Policy::from_str(&name, text, Some(routes)).map_err(PolicyError::Invalid)?;
    if let Some(tests) = &cfg.tests {
        let tname = tests.display().to_string();
        let ttext = std::fs::read_to_string(tests)
            .map_err(|e| PolicyError::Read(format!("{tname}: cannot read: {e}")))?;
        let cases = Cases::parse(&tname, &ttext, Timestamp::now()).map_err(PolicyError::Invalid)?;
        let failed: Vec<String> = run_cases(&policy, &cases)
            .into_iter()
            .filter(|r| !r.passed)
            .map(|r| format!("  {r}"))
            .collect();
        if !failed.is_empty() {
            return Err(PolicyError::TestsFailed(failed.join("\n")));
        }
    }
    Ok(policy)
}

/// Writes `text` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy"),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Applies a new policy text: load it, and only if it passes, write the file
/// and swap it in. Returns the new version.
pub fn apply(shared: &Shared, text: &str) -> Result<String, PolicyError> {
    let Some(cfg) = &shared.policy_cfg else {
        return Err(PolicyError::Read(
            "no [policy] is configured on this proxy".into(),
        ));
    };
    let routes = shared.route_names();
    let refs: Vec<&str> = routes.iter().map(String::as_str).collect();
    match load(cfg, Some(text), &refs) {
        Ok(policy) => {
            write_atomic(&cfg.file, text).map_err(|e| {
                PolicyError::Read(format!("{}: cannot write: {e}", cfg.file.display()))
            })?;
            let version = policy.version().to_string();
            swap(shared, policy, "apply");
            Ok(version)
        }
        Err(e) => {
            tracing::warn!(target: "dermgate::audit", event = "policy_refused", trigger = "apply", error = %e, "policy refused; the running policy stays");
            shared.audit_event("policy_refused", None, Some(format!("apply: {e}")), None);
            Err(e)
        }
    }
}

fn swap(shared: &Shared, policy: CompiledPolicy, trigger: &str) {
    let version = policy.version().to_string();
    let old = shared.policy.swap(Some(Arc::new(policy)));
    if old.as_ref().map(|p| p.version()) != Some(version.as_str()) {
        tracing::info!(target: "dermgate::audit", event = "policy_applied", trigger, version = %version, "policy applied");
        shared.audit_event(
            "policy_apply",
            None,
            Some(trigger.to_string()),
            Some(&version),
        );
    }
}

/// Watches the policy and tests files; a valid change is swapped in, an
/// invalid one is refused and logged while the running policy stays.
pub async fn watch(shared: Arc<Shared>) {
    let Some(cfg) = shared.policy_cfg.clone() else {
        return;
    };
    let stamp = |cfg: &PolicyConfig| -> Vec<Option<SystemTime>> {
        std::iter::once(&cfg.file)
            .chain(cfg.tests.iter())
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut last = stamp(&cfg);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stamp(&cfg);
        if now == last {
            continue;
        }
        last = now;
        let routes = shared.route_names();
        let refs: Vec<&str> = routes.iter().map(String::as_str).collect();
        match load(&cfg, None, &refs) {
            Ok(policy) => swap(&shared, policy, "file change"),
            Err(e) => {
                tracing::warn!(target: "dermgate::audit", event = "policy_refused", trigger = "file change", error = %e, "policy refused; the running policy stays");
                shared.audit_event(
                    "policy_refused",
                    None,
                    Some(format!("file change: {e}")),
                    None,
                );
            }
        }
    }
}
