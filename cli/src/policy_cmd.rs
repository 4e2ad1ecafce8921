//! `dermgate policy show | validate | test | explain | diff | allow | deny`:
//! the admin's tools for the policy file. Everything here reads files and the
//! clock and prints; the work itself is done by `dermgate-policy`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dermgate_policy::text::{Diagnostics, Reader};
use dermgate_policy::{
    Cases, CompiledPolicy, Effect, Policy, RequestSpec, RuleEdit, Timestamp, diff, run_cases,
    upsert_rule,
};

/// The `policy` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Show the rules of a policy as a table (or as JSON).
    #[command(
        after_help = "Example:\n  dermgate policy show policy.toml\n  dermgate policy show policy.toml --json"
    )]
    Show {
        /// The policy file.
        file: PathBuf,
        /// Print the canonical rules as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy: exit 0, or every error with file:line:column and exit 1.
    #[command(
        after_help = "Example:\n  dermgate policy validate policy.toml --config dermgate.toml\n\nWith --config, route names must be routes of that configuration."
    )]
    Validate {
        /// The policy file.
        file: PathBuf,
        /// A dermgate.toml whose `[[route]]` names the policy may use.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a cases file against a policy: each case pass/fail, exit 1 on any failure.
    #[command(after_help = "Example:\n  dermgate policy test policy.toml policy-tests.toml")]
    Test {
        /// The policy file.
        file: PathBuf,
        /// The cases file (`[[case]]` with `expect`, optional `rule`, and `[case.request]`).
        cases: PathBuf,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explain the decision for one request: the deciding rule, and for every
    /// other rule the first condition that did not match.
    #[command(
        after_help = "Examples:\n  dermgate policy explain policy.toml --request '{ route = \"ehr\", method = \"GET\", path = \"/chart/42\", source = \"203.0.113.7\", user = \"alice\", groups = [\"clinicians\"], mfa_age = \"10m\" }'\n  dermgate policy explain policy.toml --request @request.toml --json"
    )]
    Explain {
        /// The policy file.
        file: PathBuf,
        /// The request as a one-line TOML inline table, or `@FILE` for a TOML file with the same fields.
        #[arg(long)]
        request: String,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What changes between two policies: rules added, removed or changed in
    /// meaning, and (with --cases) the cases whose decision changes.
    #[command(
        after_help = "Example:\n  dermgate policy diff policy.toml policy.new.toml --cases policy-tests.toml"
    )]
    Diff {
        /// The current policy.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
        /// A cases file to run against both.
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Print the differences as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add an allow rule, or change the named rule in place (comments and
    /// formatting kept; the result is validated before it is written).
    #[command(
        after_help = "Example:\n  dermgate policy allow policy.toml --rule nurses-imaging --route imaging --group nurses --mfa-max-age 12h --source 10.0.0.0/8"
    )]
    Allow {
        /// The policy file (created if missing).
        file: PathBuf,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Add a deny rule, or change the named rule in place (comments and
    /// formatting kept; the result is validated before it is written).
    #[command(
        after_help = "Example:\n  dermgate policy deny policy.toml --rule no-export-off-site --route imaging --path '/export/**' --source '!10.0.0.0/8'"
    )]
    Deny {
        /// The policy file (created if missing).
        file: PathBuf,
        #[command(flatten)]
        rule: RuleArgs,
    },
}

/// The rule that `policy allow` / `policy deny` writes. Each given list
/// replaces that key of an existing rule; keys not given are left as they are.
#[derive(clap::Args, Debug)]
pub struct RuleArgs {
    /// The rule's name.
    #[arg(long)]
    rule: String,
    /// A route (repeatable).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// A group (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// A source: `any`, a CIDR, or `!CIDR` (repeatable).
    #[arg(long = "source")]
    sources: Vec<String>,
    /// An HTTP method (repeatable).
    #[arg(long = "method")]
    methods: Vec<String>,
    /// A path pattern such as `/chart/**` (repeatable).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// MFA required, at most this long ago (such as `12h`).
    #[arg(long)]
    mfa_max_age: Option<String>,
    /// A dermgate.toml whose `[[route]]` names the policy may use.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Exit code for a usage error (unreadable file, malformed argument).
fn usage() -> ExitCode {
    ExitCode::from(2)
}

fn read(path: &Path) -> Result<String, ExitCode> {
    fs::read_to_string(path).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", path.display());
        usage()
    })
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// Reads, validates and compiles a policy; prints every error and gives exit 1.
fn load(path: &Path, known_routes: Option<&[&str]>) -> Result<CompiledPolicy, ExitCode> {
    let text = read(path)?;
    Policy::from_str(&name(path), &text, known_routes).map_err(|d| {
        eprintln!("{}", d.render());
        ExitCode::FAILURE
    })
}

/// The routes of a dermgate.toml: `(name, public)` of every `[[route]]`.
fn config_routes(path: &Path) -> Result<Vec<(String, bool)>, ExitCode> {
    let text = read(path)?;
    let file = name(path);
    let mut r = Reader::new(&file, &text);
    let mut routes = Vec::new();
    if let Some(doc) = r.parse()
        && let Some(v) = doc.get_ref().get("route")
    {
        for (_, t) in r.table_array(v, "route") {
            let Some(n) = t.get("name").and_then(|n| r.str(n, "name", "a route name")) else {
                continue;
            };
            let public = t
                .get("public")
                .and_then(|p| r.bool(p, "public"))
                .unwrap_or(false);
            routes.push((n.to_string(), public));
        }
    }
    let d: Diagnostics = r.finish();
    if !d.is_empty() {
        eprintln!("{}", d.render());
        return Err(ExitCode::FAILURE);
    }
    Ok(routes)
}

fn print_json(value: serde_json::Result<serde_json::Value>) -> ExitCode {
    match value.and_then(|v| serde_json::to_string_pretty(&v)) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one `policy` subcommand: exit 0 ok, 1 refused or failed, 2 usage error.
pub fn run(cmd: PolicyCmd) -> ExitCode {
    let result = match cmd {
        PolicyCmd::Show { file, json } => show(&file, json),
        PolicyCmd::Validate { file, config } => validate(&file, config.as_deref()),
        PolicyCmd::Test { file, cases, json } => test(&file, &cases, json),
        PolicyCmd::Explain {
            file,
            request,
            json,
        } => explain(&file, &request, json),
        PolicyCmd::Diff {
            old,
            new,
            cases,
            json,
        } => diff_cmd(&old, &new, cases.as_deref(), json),
        PolicyCmd::Allow { file, rule } => edit(&file, Effect::Allow, rule),
        PolicyCmd::Deny { file, rule } => edit(&file, Effect::Deny, rule),
    };
    result.unwrap_or_else(|code| code)
}

fn show(file: &Path, json: bool) -> Result<ExitCode, ExitCode> {
    let p = load(file, None)?;
    if json {
        let rules: Vec<serde_json::Value> = p
            .canonical_rules()
            .iter()
            .zip(p.rules())
            .map(|(c, r)| {
                let mut v = serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("line".into(), r.line.into());
                }
                v
            })
            .collect();
        return Ok(print_json(Ok(serde_json::json!({
            "file": p.file(),
            "version": p.version(),
            "rules": rules,
        }))));
    }
    println!(
        "{} — {} rule{}, version {}",
        p.file(),
        p.rules().len(),
        if p.rules().len() == 1 { "" } else { "s" },
        p.version()
    );
    let width = p
        .rules()
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "\n  {:>4}  {:<width$}  {:<6}  conditions",
        "line", "rule", "effect"
    );
    for r in p.rules() {
        let conditions = r.conditions();
        let mut lines = conditions.iter().map(|(k, v)| format!("{k}: {v}"));
        let first = lines
            .next()
            .unwrap_or_else(|| "(none: matches every request)".to_string());
        println!(
            "  {:>4}  {:<width$}  {:<6}  {first}",
            r.line, r.name, r.effect
        );
        for more in lines {
            println!("  {:>4}  {:<width$}  {:<6}  {more}", "", "", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(file: &Path, config: Option<&Path>) -> Result<ExitCode, ExitCode> {
    let routes = config.map(config_routes).transpose()?;
    let names: Option<Vec<&str>> = routes
        .as_ref()
        .map(|r| r.iter().map(|(n, _)| n.as_str()).collect());
    let p = load(file, names.as_deref())?;
    println!(
        "{}: ok — {} rule{}, version {}",
        p.file(),
        p.rules().len(),
        if p.rules().len() == 1 { "" } else { "s" },
        p.version()
    );
    if let Some(routes) = &routes {
        let public: Vec<&str> = routes
            .iter()
            .filter(|(_, public)| *public)
            .map(|(n, _)| n.as_str())
            .collect();
        for rule in p.weak_allow_rules(&public) {
            eprintln!(
                "warning: allow rule `{rule}` reaches a non-public route without requiring MFA (mfa_max_age) or a visit room"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn test(file: &Path, cases_file: &Path, json: bool) -> Result<ExitCode, ExitCode> {
    let p = load(file, None)?;
    let text = read(cases_file)?;
    let cases = Cases::parse(&name(cases_file), &text, Timestamp::now()).map_err(|d| {
        eprintln!("{}", d.render());
        ExitCode::FAILURE
    })?;
    let results = run_cases(&p, &cases);
    let failed = results.iter().filter(|r| !r.passed).count();
    let passed = results.len() - failed;
    if json {
        print_json(serde_json::to_value(&results).map(|cases| {
            serde_json::json!({
                "policy_version": p.version(),
                "passed": passed,
                "failed": failed,
                "cases": cases,
            })
        }));
    } else {
        for r in &results {
            println!("{r}");
        }
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn explain(file: &Path, request: &str, json: bool) -> Result<ExitCode, ExitCode> {
    let p = load(file, None)?;
    let (req_name, text) = match request.strip_prefix('@') {
        Some(path) => (path.to_string(), read(Path::new(path))?),
        None => ("--request".to_string(), request.to_string()),
    };
    let spec = RequestSpec::parse(&req_name, &text, Timestamp::now()).map_err(|d| {
        eprintln!("{}", d.render());
        usage()
    })?;
    let e = p.explain(&spec.facts());
    if json {
        return Ok(print_json(serde_json::to_value(&e)));
    }
    print!("{e}");
    Ok(ExitCode::SUCCESS)
}

fn diff_cmd(
    old: &Path,
    new: &Path,
    cases: Option<&Path>,
    json: bool,
) -> Result<ExitCode, ExitCode> {
    let a = load(old, None)?;
    let b = load(new, None)?;
    let cases = match cases {
        None => None,
        Some(path) => {
            let text = read(path)?;
            Some(
                Cases::parse(&name(path), &text, Timestamp::now()).map_err(|d| {
                    eprintln!("{}", d.render());
                    ExitCode::FAILURE
                })?,
            )
        }
    };
    let d = diff(&a, &b, cases.as_ref());
    if json {
        return Ok(print_json(serde_json::to_value(&d)));
    }
    print!("{d}");
    Ok(ExitCode::SUCCESS)
}

fn edit(file: &Path, effect: Effect, args: RuleArgs) -> Result<ExitCode, ExitCode> {
    let routes = args.config.as_deref().map(config_routes).transpose()?;
    let names: Option<Vec<&str>> = routes
        .as_ref()
        .map(|r| r.iter().map(|(n, _)| n.as_str()).collect());
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return Err(usage());
        }
    };
    let no_conditions = args.routes.is_empty()
        && args.groups.is_empty()
        && args.sources.is_empty()
        && args.methods.is_empty()
        && args.paths.is_empty()
        && args.mfa_max_age.is_none();
    let rule_edit = RuleEdit {
        name: args.rule,
        effect,
        routes: args.routes,
        groups: args.groups,
        sources: args.sources,
        methods: args.methods,
        paths: args.paths,
        mfa_max_age: args.mfa_max_age,
    };
    let edited = upsert_rule(&name(file), &text, &rule_edit, names.as_deref()).map_err(|d| {
        eprintln!("{}", d.render());
        eprintln!("{} was not changed", file.display());
        ExitCode::FAILURE
    })?;
    if edited.created && no_conditions {
        eprintln!(
            "error: a new rule needs at least one condition (--route, --group, --source, --method, --path or --mfa-max-age); without one it would {} every request",
            effect
        );
        return Err(usage());
    }
    if let Err(e) = write_atomic(file, &edited.text) {
        eprintln!("error: cannot write {}: {e}", file.display());
        return Err(ExitCode::FAILURE);
    }
    let version = Policy::from_str(&name(file), &edited.text, None)
        .map(|p| p.version().to_string())
        .unwrap_or_default();
    println!(
        "{} rule `{}` ({effect}) in {}; policy version {version}",
        if edited.created { "added" } else { "changed" },
        rule_edit.name,
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Replaces `path` with `text` atomically: a temporary file in the same
/// directory, synced, given the old file's permissions, then renamed over it.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy.toml".to_string());
    let tmp = dir.join(format!(".{base}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = fs::metadata(path) {
            fs::set_permissions(&tmp, meta.permissions())?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
