//! dermgate's data plane: listeners, TLS, canonical routing and forwarding.
//!
//! A request travels the named stages of [`pipeline`]: canonical form and
//! route ([`canonical`], [`route`]) → identify → decide → audit → forward
//! ([`forward`]). Configuration is read and validated once ([`config`]),
//! compiled into an immutable [`pipeline::Snapshot`] and swapped atomically.
//! See `ARCHITECTURE.md` at the repository root for the whole picture.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = dermgate_proxy::config::Config::load("dermgate.toml".as_ref())?;
//! let proxy = dermgate_proxy::server::Proxy::bind(&cfg).await?;
//! proxy.run(std::future::pending()).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod audit_verify;
pub mod break_glass;
pub mod canonical;
pub mod certs;
pub mod config;
pub mod forward;
pub mod h3;
pub mod health;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod pages;
pub mod pipeline;
pub mod policy;
pub mod proxy_protocol;
pub mod route;
pub mod server;
pub mod store;
pub mod syslog;
pub mod tls;
pub mod websocket;
