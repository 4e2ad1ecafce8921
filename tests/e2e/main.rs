//! End-to-end tests: the real `dermgate` binary, real TLS clients (rustls,
//! openssl), HTTP/1.1 and HTTP/2, a real TLS upstream. Run by the README's
//! test command.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod alerts;
mod audit;
mod canonical;
mod check;
mod common;
mod dataplane;
mod demo;
mod evidence;
mod forwarding;
mod identity;
mod operations;
mod policy;
mod store;
mod streaming;
mod tls;
