//! `dermgate`: the proxy binary and admin CLI. One module per command.

mod admin_client;
mod audit_cmd;
mod audit_read;
mod check;
mod demo;
mod dev_idp;
mod evidence;
mod identity_cmd;
mod policy_cmd;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates (headers, futures, buffers), and
/// glibc's malloc costs several times more instructions per call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dermgate",
    version,
    about = "Zero-trust access proxy for dermatology practices",
    after_help = "Examples:\n  dermgate demo\n  dermgate check --config dermgate.toml\n  dermgate serve --config dermgate.toml\n  dermgate certs dev --out certs --name ehr.example-derm.com\n\nExit codes: 0 ok, 1 refused or failed check, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    #[command(after_help = "Example:\n  dermgate serve --config /etc/dermgate/dermgate.toml")]
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration: every error with file:line:column, exit 1; or a summary, exit 0.
    #[command(after_help = "Example:\n  dermgate check --config dermgate.toml")]
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Segmentation policy: show, validate, test, explain, diff, allow, deny, apply.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCli,
    },
    /// The tamper-evident audit trail.
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// The HIPAA evidence report, measured from the audit trail and the configuration.
    ///
    /// Under 45 CFR 164.312 (a)-(e): requests over TLS 1.3 and HTTP/3, sessions with MFA,
    /// upstream legs, key ages and rotations, break-the-glass uses, denials by reason, public
    /// routes, the audit chain's verification, certificate expiry, the oldest record held.
    #[command(
        after_help = "Examples:\n  dermgate evidence --config dermgate.toml\n  dermgate evidence --since 90d --config dermgate.toml --json > evidence.json\n  dermgate evidence --config dermgate.toml --html evidence.html   (one page; prints on A4)\n\nExit codes: 0 every measure passed (exceptions are listed, not failures), 1 a measure failed\n(a request not over TLS 1.3, a broken audit chain, an expired certificate, no audit trail),\n2 usage error."
    )]
    Evidence {
        /// The configuration (the trail, keys, routes and certificates it names).
        #[arg(long, short)]
        config: PathBuf,
        /// The period: a duration back from now (30d, 12h) or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
        /// Print the report as JSON (for a GRC tool).
        #[arg(long, conflicts_with = "html")]
        json: bool,
        /// Write the report as one self-contained HTML page to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Live sessions: list, revoke (every replica sees it within a second).
    Sessions {
        #[command(subcommand)]
        cmd: identity_cmd::SessionsCmd,
    },
    /// TOTP second factor: enroll a user, check a code.
    Totp {
        #[command(subcommand)]
        cmd: identity_cmd::TotpCmd,
    },
    /// Session cookie keys.
    Keys {
        #[command(subcommand)]
        cmd: identity_cmd::KeysCmd,
    },
    /// Run a self-contained demo: dev certificates, demo backends and the proxy.
    #[command(after_help = "Example:\n  dermgate demo --state-dir ./demo-state")]
    Demo {
        /// Where certificates, configuration and uploads are kept.
        #[arg(long, default_value = "demo-state")]
        state_dir: PathBuf,
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum PolicyCli {
    /// Validate a policy, run the `[policy] tests` cases, and swap it into the running
    /// proxy through its admin API. An invalid policy is refused; the running one stays.
    #[command(after_help = "Example:\n  dermgate policy apply policy.toml --config dermgate.toml")]
    Apply {
        /// The policy file to apply.
        file: PathBuf,
        /// The proxy's configuration (admin address and token).
        #[arg(long, short)]
        config: PathBuf,
    },
    #[command(flatten)]
    Other(policy_cmd::PolicyCmd),
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Development CA, server certificate (localhost, 127.0.0.1, ::1 and --name), device CA and
    /// one device certificate. DEVELOPMENT ONLY.
    #[command(
        after_help = "Example:\n  dermgate certs dev --out certs --name ehr.localhost --name img.localhost"
    )]
    Dev {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dermgate_proxy::tls::install_default_provider();
    match cli.cmd {
        Cmd::Serve { config } => serve::run(&config),
        Cmd::Check { config } => check::run(&config),
        Cmd::Certs {
            cmd: CertsCmd::Dev { out, names },
        } => match dermgate_proxy::certs::generate_dev(&out, &names) {
            Ok(c) => {
                println!(
                    "development certificates (DEV ONLY) written to {}:",
                    out.display()
                );
                for p in [
                    &c.ca_cert,
                    &c.server_cert,
                    &c.server_key,
                    &c.device_ca_cert,
                    &c.device_cert,
                    &c.device_key,
                ] {
                    println!("  {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dermgate certs dev: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Demo { state_dir, listen } => demo::run(&state_dir, listen),
        Cmd::Sessions { cmd } => identity_cmd::sessions(cmd),
        Cmd::Totp { cmd } => identity_cmd::totp_cmd(cmd),
        Cmd::Keys { cmd } => identity_cmd::keys(cmd),
        Cmd::Policy {
            cmd: PolicyCli::Apply { file, config },
        } => policy_apply(&file, &config),
        Cmd::Policy {
            cmd: PolicyCli::Other(cmd),
        } => policy_cmd::run(cmd),
        Cmd::Audit { cmd } => audit_cmd::run(cmd),
        Cmd::Evidence {
            config,
            since,
            json,
            html,
        } => evidence::run(&config, &since, json, html.as_deref()),
    }
}

/// `dermgate policy apply F --config C`: the running proxy validates, tests and
/// swaps; this command reports what it said.
fn policy_apply(file: &std::path::Path, config: &std::path::Path) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match admin_client::call(
        config,
        http::Method::POST,
        "/admin/v1/policy",
        bytes::Bytes::from(text),
    ) {
        Ok(body) => {
            println!("applied {}: {}", file.display(), body.trim());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refused: {e}");
            ExitCode::FAILURE
        }
    }
}
