//! `dermgate check --config F`: every error at once, or a summary.

use std::path::Path;
use std::process::ExitCode;

use dermgate_proxy::config::{Config, ConfigError};

/// Loads the configuration and prints either all its errors or a summary.
pub fn run(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            print!("{}", cfg.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints a configuration error the way every command does.
pub fn report(e: &ConfigError) {
    match e {
        ConfigError::Invalid(d) => eprintln!("{}", d.render()),
        other => eprintln!("error: {other}"),
    }
}
