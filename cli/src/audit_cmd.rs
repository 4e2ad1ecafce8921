//! `dermgate audit verify`: is the trail intact, and if not, where is it broken;
//! `dermgate audit tail` and `dermgate audit report`: what it says (read by
//! [`crate::audit_read`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use dermgate_proxy::audit_verify;
use dermgate_proxy::config::Config;

use crate::audit_read::{self, Filter, Follower, Report};

/// `dermgate audit` subcommands.
#[derive(clap::Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain, the checkpoint signatures and the file sequence.
    #[command(
        after_help = "Examples:\n  dermgate audit verify --config dermgate.toml\n  dermgate audit verify audit/audit.000001.jsonl audit/audit.jsonl --pubkey secrets/audit-ed25519.pub\n\nExit codes: 0 intact (a crash's torn last line is reported, not counted as tampering), 1 tampering or loss found, 2 usage error."
    )]
    Verify {
        /// Files in order (default: the trail of `[audit] file` in --config).
        files: Vec<PathBuf>,
        /// The checkpoint public key (base64, as written to `[keys] dir`/audit-ed25519.pub).
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// The configuration naming the trail and the keys directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the last records, one line each, or follow the trail as it grows.
    ///
    /// Every kind but checkpoints unless --kind; --follow keeps printing new records, across
    /// rotation.
    #[command(
        after_help = "Examples:\n  dermgate audit tail --config dermgate.toml\n  dermgate audit tail --config dermgate.toml --decision deny -n 50\n  dermgate audit tail --config dermgate.toml --user alice --route imaging --follow\n  dermgate audit tail audit/audit.jsonl --json | jq .path\n\nColumns: time (UTC), kind, user, route, request (method and path, or the event name),\nresult (allow/deny, or status, bytes sent and time), reason.\nLines that are not records (torn by a crash, edited) are reported on stderr and skipped.\n\nExit codes: 0 ok, 1 the trail could not be read, 2 usage error."
    )]
    Tail {
        /// Files in order (default: the trail of `[audit] file` in --config).
        files: Vec<PathBuf>,
        /// The configuration naming the trail.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How many records to show.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
        /// Keep reading the current file as it grows (and after it rotates); Ctrl-C to stop.
        #[arg(long, short)]
        follow: bool,
        /// Only records of this user (subject).
        #[arg(long)]
        user: Option<String>,
        /// Only records of this route.
        #[arg(long)]
        route: Option<String>,
        /// Only decision records with this decision.
        #[arg(long, value_parser = ["allow", "deny"])]
        decision: Option<String>,
        /// Only records of this kind (repeatable).
        #[arg(long, value_parser = ["decision", "complete", "event", "checkpoint"])]
        kind: Vec<String>,
        /// Print the records as they are in the trail (JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Requests, denials and bytes sent per user, route and day; the top image exporters.
    ///
    /// Also denials by reason and upstream failures by reason. Image exporters are users by
    /// bytes sent on `integrity = true` routes.
    #[command(
        after_help = "Examples:\n  dermgate audit report --config dermgate.toml\n  dermgate audit report --since 30d --config dermgate.toml --json\n  dermgate audit report --since 2026-03-01T00:00:00Z audit/audit.000001.jsonl audit/audit.jsonl\n\nWithout --config every route counts as an export route.\n\nExit codes: 0 ok, 1 the trail could not be read, 2 usage error."
    )]
    Report {
        /// Files in order (default: the trail of `[audit] file` in --config).
        files: Vec<PathBuf>,
        /// The configuration naming the trail and the image (integrity) routes.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The period: a duration back from now (7d, 12h) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Reads a base64 Ed25519 public key file (`audit-ed25519.pub`).
pub fn read_pubkey(p: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| {
            format!(
                "{}: expected a base64 Ed25519 public key (32 bytes)",
                p.display()
            )
        })
}

/// Runs an audit subcommand.
pub fn run(cmd: AuditCmd) -> ExitCode {
    match cmd {
        AuditCmd::Verify {
            files,
            pubkey,
            config,
            json,
        } => verify(files, pubkey, config, json),
        AuditCmd::Tail {
            files,
            config,
            lines,
            follow,
            user,
            route,
            decision,
            kind,
            json,
        } => tail(
            files,
            config.as_deref(),
            lines,
            follow,
            &Filter {
                user,
                route,
                decision,
                kinds: kind,
            },
            json,
        ),
        AuditCmd::Report {
            files,
            config,
            since,
            json,
        } => report(files, config.as_deref(), &since, json),
    }
}

/// `dermgate audit tail`.
fn tail(
    files: Vec<PathBuf>,
    config: Option<&Path>,
    n: usize,
    follow: bool,
    filter: &Filter,
    json: bool,
) -> ExitCode {
    let src = match audit_read::source(files, config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (found, scan) = match audit_read::last_matching(&src.files, filter, n) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    audit_read::report_skipped(&scan.skipped);
    let mut out = std::io::stdout().lock();
    let shown = if json {
        found
            .iter()
            .map(|(_, raw)| format!("{raw}\n"))
            .collect::<String>()
    } else {
        let rows: Vec<Vec<String>> = found.iter().map(|(e, _)| audit_read::tail_row(e)).collect();
        if follow {
            // Rows that come later cannot be measured now: fixed columns.
            let head: Vec<String> = audit_read::TAIL_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect();
            std::iter::once(head)
                .chain(rows)
                .map(|r| audit_read::fixed_row(&r))
                .collect()
        } else if rows.is_empty() {
            "no matching records\n".to_string()
        } else {
            audit_read::table(&audit_read::TAIL_HEADERS, &rows, &[], 60)
        }
    };
    if out
        .write_all(shown.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        // The reader went away (a closed pipe): nothing more to say.
        return ExitCode::SUCCESS;
    }
    if !follow {
        return ExitCode::SUCCESS;
    }
    let Some(current) = src.current else {
        return ExitCode::SUCCESS;
    };
    // Go on where the read stopped, when it read the current file.
    let offset = if src.files.last() == Some(&current) {
        scan.end_offset
    } else {
        0
    };
    let mut follower = Follower::new(&current, offset);
    let name = current.display().to_string();
    loop {
        let lines = match follower.poll() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut text = String::new();
        for raw in lines {
            match audit_read::parse_line(&raw) {
                Ok(e) if filter.matches(&e) => {
                    if json {
                        text.push_str(&String::from_utf8_lossy(&raw));
                        text.push('\n');
                    } else {
                        text.push_str(&audit_read::fixed_row(&audit_read::tail_row(&e)));
                    }
                }
                Ok(_) => {}
                Err(why) => eprintln!("{name}: skipped a line: {why}"),
            }
        }
        if !text.is_empty()
            && out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
        {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(audit_read::FOLLOW_EVERY);
    }
}

/// `dermgate audit report`.
fn report(files: Vec<PathBuf>, config: Option<&Path>, since: &str, json: bool) -> ExitCode {
    let now = jiff::Timestamp::now();
    let since = match audit_read::parse_since(since, now) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let src = match audit_read::source(files, config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let export_routes = src.config.as_ref().map(audit_read::integrity_routes);
    let mut rep = Report::new(since, now, export_routes);
    let scan = match audit_read::scan(&src.files, Some(since), |e, _| rep.add(e)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    audit_read::report_skipped(&scan.skipped);
    rep.finish(scan);
    if json {
        match serde_json::to_string_pretty(&rep) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", rep.render());
    }
    ExitCode::SUCCESS
}

/// `dermgate audit verify`.
fn verify(
    mut files: Vec<PathBuf>,
    pubkey: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let mut pubkey_path = pubkey;
    if let Some(c) = &config {
        match Config::load(c) {
            Ok(cfg) => {
                let Some(a) = cfg.audit else {
                    eprintln!("error: {}: no [audit] is configured", c.display());
                    return ExitCode::from(2);
                };
                if files.is_empty() {
                    files = audit_verify::trail_files(&a.file);
                }
                if pubkey_path.is_none() {
                    pubkey_path = Some(a.keys_dir.join("audit-ed25519.pub"));
                }
            }
            Err(e) => {
                crate::check::report(&e);
                return ExitCode::from(2);
            }
        }
    }
    if files.is_empty() {
        eprintln!("error: name the audit files, or --config to use the configured trail");
        return ExitCode::from(2);
    }
    let key = match pubkey_path.as_deref().map(read_pubkey).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match audit_verify::verify(&files, key.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        for f in &report.problems {
            println!("{}:{}: {}: {}", f.file, f.line, f.kind, f.detail);
        }
        for f in &report.notes {
            println!("{}:{}: note: {}: {}", f.file, f.line, f.kind, f.detail);
        }
        println!(
            "{}: {} records in {} file(s), {} checkpoint(s) verified{}",
            if report.intact() {
                "intact"
            } else {
                "NOT INTACT"
            },
            report.records,
            report.files,
            report.checkpoints_verified,
            if key.is_none() {
                " (no public key: signatures not checked)"
            } else {
                ""
            }
        );
    }
    if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
