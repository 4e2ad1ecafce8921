#!/usr/bin/env bash
# The README's test command: installs what the tests need (idempotently), then
# builds once and runs every test — unit, property, end-to-end and the
# benchmarks in test mode — plus the lint gates.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
  echo "==> installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq "${need_apt[@]}"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> build (tests, benches and the binary in one invocation)"
cargo test --workspace --all-targets --no-run

echo "==> tests"
if command -v cargo-nextest >/dev/null 2>&1 || cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast --test-threads 2
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --all-targets --no-fail-fast -- --test-threads 2
  cargo test --workspace --doc
fi

echo "==> clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> all tests passed"
