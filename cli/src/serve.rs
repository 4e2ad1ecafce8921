//! `dermgate serve --config F`: run the proxy until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;

use dermgate_proxy::config::{Config, LogConfig, LogFormat};
use dermgate_proxy::server::Proxy;

/// Sets up operational logging (never the audit trail) once per process.
pub fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "warn,dermgate={lvl},dermgate_proxy={lvl}",
        lvl = log.level
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Err means a subscriber is already set (demo sets one early); keep it.
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the proxy from a configuration file.
pub fn run(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            crate::check::report(&e);
            return ExitCode::FAILURE;
        }
    };
    init_logging(&cfg.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match start(&cfg).await {
            Ok(proxy) => {
                proxy.run(shutdown_signal()).await;
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// Binds the proxy for `cfg`, logging warnings and the listening address.
pub async fn start(cfg: &Config) -> Result<Proxy, ExitCode> {
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    match Proxy::bind(cfg).await {
        Ok(p) => {
            // Plain lines tests and scripts can rely on, whatever the log format.
            if let Some(addr) = p.local_addr() {
                eprintln!("dermgate listening on https://{addr} (tcp)");
            }
            if let Some(addr) = p.quic_addr() {
                eprintln!("dermgate listening on https://{addr} (udp, h3)");
            }
            if let Some(addr) = p.admin_addr() {
                eprintln!("dermgate admin on http://{addr}");
            }
            if let Some(addr) = p.redirect_addr() {
                eprintln!("dermgate redirecting http://{addr} to https");
            }
            Ok(p)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
