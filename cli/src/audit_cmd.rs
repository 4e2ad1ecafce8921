//! `dermgate audit verify`: is the trail intact, and if not, where is it broken.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use dermgate_proxy::audit_verify;
use dermgate_proxy::config::Config;

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
}

fn read_pubkey(p: &Path) -> Result<Vec<u8>, String> {
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
    let AuditCmd::Verify {
        mut files,
        pubkey,
        config,
        json,
    } = cmd;
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
