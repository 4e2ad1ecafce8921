#!/usr/bin/env bash
# The README's test command. Installs what the tests need (idempotently), then
# builds once and runs every test: unit, property, end-to-end (the real
# binary with real TLS, HTTP/2, HTTP/3 and WebSocket clients) and the
# benchmarks in test mode; then the fmt and clippy gates, and the policy
# fuzzers briefly when a nightly toolchain is available.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Real servers and clients the end-to-end tests start on loopback ports:
# openssl (TLS 1.2 client), redis-server (shared session store), chromium
# (headless browser login), node + npm (the oidc-provider IdP), rsyslog with
# its OpenSSL driver (the RFC 5425 syslog-over-TLS receiver).
need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
dpkg -s rsyslog-openssl >/dev/null 2>&1 || need_apt+=(rsyslog-openssl)
if ((${#need_apt[@]})); then
  step "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq "${need_apt[@]}"
fi
# The system redis-server package may start a daemon on 6379; the tests start
# their own on ephemeral ports and never touch it.

step "npm ci (tests/oidc: oidc-provider, playwright-core)"
(cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)

step "cargo fmt --check"
cargo fmt --all -- --check

# Tests and benches are built in one invocation so that both share one feature
# set (see DEPENDENCIES.md on cedar-policy) and one build.
step "build (tests, benches, binary)"
cargo test --workspace --all-targets --no-run

# criterion bench binaries take no libtest flags; the default thread count is the core count.
step "tests (unit, property, end-to-end, benches in test mode)"
cargo test --workspace --all-targets --no-fail-fast

step "doc tests"
cargo test --workspace --doc

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

# Fuzz targets need nightly; a machine without it skips them with a message.
if cargo +nightly --version >/dev/null 2>&1; then
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null 2>&1 || echo "cargo-fuzz could not be installed; skipping fuzzing"
  fi
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    step "fuzz: policy parser, cases parser, policy editor (briefly)"
    (cd policy/fuzz && cargo +nightly fuzz build && for t in policy_text cases_text policy_edit; do
      cargo +nightly fuzz run "$t" -- -max_total_time=10 -rss_limit_mb=2048 2>&1 | tail -n 2
    done)
  fi
else
  echo "no nightly toolchain: skipping the fuzz build"
fi

step "all tests passed"
