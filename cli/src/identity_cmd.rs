//! `dermgate sessions`, `dermgate totp`, `dermgate keys`: live identity state.
//!
//! Each command goes through the running proxy's admin API (address and token
//! from `--config`). Only when no proxy answers does it open the store itself
//! (an embedded store is locked by a running proxy, so the two never write at
//! once).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use http::Method;

use dermgate_proxy::config::Config;
use dermgate_proxy::identity::ops::{self, Enrolled, RevokeRequest, SessionView};
use dermgate_proxy::identity::{open_store, session::Sessions, totp};

use crate::admin_client::{self, AdminError};

/// `dermgate sessions …`
#[derive(Subcommand)]
pub enum SessionsCmd {
    /// List live sessions.
    #[command(
        after_help = "Example:\n  dermgate sessions list --user dr.lee --config dermgate.toml"
    )]
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The proxy's configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// End one session (by the id `list` shows) or all of a user's sessions, on every replica.
    #[command(
        after_help = "Examples:\n  dermgate sessions revoke --id 3f2a9c0d1e2b4a5c --config dermgate.toml\n  dermgate sessions revoke --user dr.lee --config dermgate.toml"
    )]
    Revoke {
        /// A session id from `sessions list`.
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        id: Option<String>,
        /// Every session of this user.
        #[arg(long)]
        user: Option<String>,
        /// The proxy's configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `dermgate totp …`
#[derive(Subcommand)]
pub enum TotpCmd {
    /// Enroll (or re-enroll) a user: prints the otpauth URI and a QR code for the terminal.
    #[command(after_help = "Example:\n  dermgate totp enroll --user dr.lee --config dermgate.toml")]
    Enroll {
        /// The user (the IdP's subject).
        #[arg(long)]
        user: String,
        /// The proxy's configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a code for a user (counts towards the lockout, and uses the code up).
    #[command(
        after_help = "Example:\n  dermgate totp verify --user dr.lee 123456 --config dermgate.toml"
    )]
    Verify {
        /// The user.
        #[arg(long)]
        user: String,
        /// The 6-digit code.
        code: String,
        /// The proxy's configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `dermgate keys …`
#[derive(Subcommand)]
pub enum KeysCmd {
    /// Add a session cookie key; cookies sealed with older keys stay valid until they expire.
    #[command(after_help = "Example:\n  dermgate keys rotate --config dermgate.toml")]
    Rotate {
        /// The proxy's configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// Through the admin API; `offline` runs when no proxy answers.
fn live<T: serde::de::DeserializeOwned>(
    config: &Path,
    method: Method,
    path: &str,
    body: serde_json::Value,
    offline: impl AsyncFnOnce(&Config) -> Result<T, String>,
) -> Result<T, String> {
    let body = Bytes::from(body.to_string());
    match admin_client::call(config, method, path, body) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("admin API answer: {e}")),
        Err(AdminError::Unreachable { .. } | AdminError::NotConfigured(_)) => {
            let cfg = Config::load(config).map_err(|e| e.to_string())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            eprintln!("(no running proxy answered; using the store directly)");
            rt.block_on(offline(&cfg))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn sessions_of(cfg: &Config) -> Result<Sessions, String> {
    let id = cfg.identity.as_ref().ok_or_else(|| {
        format!(
            "{}: no [oidc] section: there are no sessions",
            cfg.file.display()
        )
    })?;
    let store = open_store(&id.store).await.map_err(|e| e.to_string())?;
    Ok(Sessions::new(store, id.session.absolute))
}

async fn totp_of(cfg: &Config) -> Result<(totp::Totp, Sessions), String> {
    let sessions = sessions_of(cfg).await?;
    let id = cfg.identity.as_ref().ok_or("no [oidc]")?;
    let key = dermgate_proxy::keys::totp_key(&id.keys_dir).map_err(|e| e.to_string())?;
    Ok((totp::Totp::new(key), sessions))
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Runs `dermgate sessions …`.
pub fn sessions(cmd: SessionsCmd) -> ExitCode {
    match cmd {
        SessionsCmd::List { user, json, config } => {
            let path = match &user {
                Some(u) => format!(
                    "/admin/v1/sessions?user={}",
                    form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>()
                ),
                None => "/admin/v1/sessions".to_string(),
            };
            let u = user.clone();
            let list: Vec<SessionView> = match live(
                &config,
                Method::GET,
                &path,
                serde_json::Value::Null,
                async move |cfg| {
                    let s = sessions_of(cfg).await?;
                    ops::list(&s, u.as_deref()).await.map_err(|e| e.to_string())
                },
            ) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!("no live sessions");
            } else {
                println!(
                    "{:<18} {:<24} {:<12} {:<8} {:<8} groups",
                    "ID", "USER", "MFA", "AGE", "IDLE"
                );
                let now = dermgate_proxy::identity::session::now();
                for s in &list {
                    println!(
                        "{:<18} {:<24} {:<12} {:<8} {:<8} {}",
                        s.id,
                        s.user,
                        s.mfa.as_deref().unwrap_or("none"),
                        ago(now.saturating_sub(s.created)),
                        ago(s.idle_for),
                        s.groups.join(",")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        SessionsCmd::Revoke { id, user, config } => {
            let req = RevokeRequest { id, user };
            let body = serde_json::json!({ "id": req.id, "user": req.user });
            let r2 = req.clone();
            let out: serde_json::Value = match live(
                &config,
                Method::POST,
                "/admin/v1/sessions/revoke",
                body,
                async move |cfg| {
                    let s = sessions_of(cfg).await?;
                    let n = ops::revoke(&s, &r2).await.map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({ "revoked": n }))
                },
            ) {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            let n = out
                .get("revoked")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            println!("revoked {n} session(s)");
            if n == 0 {
                eprintln!("no matching live session");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}

/// Runs `dermgate totp …`.
pub fn totp_cmd(cmd: TotpCmd) -> ExitCode {
    match cmd {
        TotpCmd::Enroll { user, config } => {
            let u = user.clone();
            let e: Enrolled = match live(
                &config,
                Method::POST,
                "/admin/v1/totp/enroll",
                serde_json::json!({ "user": user }),
                async move |cfg| {
                    let (t, s) = totp_of(cfg).await?;
                    ops::totp_enroll(&t, s.store(), &u)
                        .await
                        .map_err(|e| e.to_string())
                },
            ) {
                Ok(e) => e,
                Err(e) => return fail(e),
            };
            println!("TOTP enrolled for {}", e.user);
            println!("otpauth URI: {}", e.uri);
            println!("key (type it in if you cannot scan): {}", e.secret);
            match totp::qr_terminal(&e.uri) {
                Ok(q) => println!("{q}"),
                Err(err) => eprintln!("(cannot draw the QR code: {err})"),
            }
            ExitCode::SUCCESS
        }
        TotpCmd::Verify { user, code, config } => {
            let (u, c) = (user.clone(), code.clone());
            let out: serde_json::Value = match live(
                &config,
                Method::POST,
                "/admin/v1/totp/verify",
                serde_json::json!({ "user": user, "code": code }),
                async move |cfg| {
                    let (t, s) = totp_of(cfg).await?;
                    let v = ops::totp_verify(&t, s.store(), &u, &c)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({ "result": ops::verdict_label(v) }))
                },
            ) {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            let result = out
                .get("result")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            println!("{result}");
            if result == "accepted" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs `dermgate keys …`.
pub fn keys(cmd: KeysCmd) -> ExitCode {
    match cmd {
        KeysCmd::Rotate { config } => {
            let out: serde_json::Value = match live(
                &config,
                Method::POST,
                "/admin/v1/keys/rotate",
                serde_json::Value::Null,
                async move |cfg| {
                    let id = cfg
                        .identity
                        .as_ref()
                        .ok_or("no [oidc]: there are no session keys")?;
                    let kid = dermgate_proxy::keys::CookieKeys::rotate(
                        &id.session.keys_file,
                        id.session.absolute,
                    )
                    .map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({ "kid": kid }))
                },
            ) {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            println!(
                "new session cookie key {}; cookies sealed with older keys stay valid until they expire",
                out.get("kid")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
    }
}
