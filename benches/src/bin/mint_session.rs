//! `mint_session --config dermgate.toml --user U --group G` — creates a session
//! (MFA done now) in the configured store and prints its sealed cookie value.
//! BENCHMARK ONLY (`benches/load/compare.sh`): load generators cannot sign in
//! through a browser. Run it before the proxy starts (an embedded store is
//! locked by a running proxy).

use std::process::ExitCode;

use clap::Parser;
use dermgate_proxy::config::Config;
use dermgate_proxy::identity::IdentityService;
use dermgate_proxy::identity::session::{SessionRecord, now};

#[derive(Parser)]
struct Args {
    /// The proxy's configuration (with `[oidc]`, `[store]`, `[keys]`).
    #[arg(long)]
    config: std::path::PathBuf,
    /// Session subject.
    #[arg(long, default_value = "load-test")]
    user: String,
    /// Session group.
    #[arg(long, default_value = "clinicians")]
    group: String,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let cfg = Config::load(&a.config).map_err(|e| e.to_string())?;
        let id = cfg
            .identity
            .clone()
            .ok_or("no [oidc] in the configuration")?;
        let svc = IdentityService::start(&cfg, &id)
            .await
            .map_err(|e| e.to_string())?;
        let t = now();
        let s = svc
            .sessions
            .create(SessionRecord {
                sub: a.user,
                groups: vec![a.group],
                amr: vec!["pwd".into(), "otp".into()],
                auth_time: t,
                mfa_time: Some(t),
                mfa_method: Some("bench".into()),
                device: None,
                created: t,
                last_seen: t,
                sid: None,
                id_token: None,
                email: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        svc.seal_cookie(&s).map_err(|e| e.to_string())
    });
    match result {
        Ok(cookie) => {
            println!("{cookie}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint_session: {e}");
            ExitCode::FAILURE
        }
    }
}
