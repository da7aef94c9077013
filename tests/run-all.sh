#!/usr/bin/env bash
# Runs every test authrelay has, on a fresh Debian machine as root:
#   1. installs what the tests need (Dovecot, Postfix and the mail clients with apt-get; cargo-fuzz)
#   2. starts the loopback interop stack (tests/harness/start.sh)
#   3. formatting and clippy, unit tests, in-process integration tests, real-server interop tests,
#      and the short form of the benchmarks (figures printed, not asserted)
#   4. the container image built with podman and run against the stack (tests/container.rs)
#   5. every fuzz target for FUZZ_SECONDS (default 20) each, from the committed seed corpora
# Env: FUZZ_SECONDS=N, SKIP_FUZZ=1, SKIP_CONTAINER=1, KEEP_STACK=1 (leave Dovecot/Postfix running afterwards),
#      SOAK_SECS=N (the soak test's length, default 20).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
step() { printf '\n==> %s\n' "$*"; }

step "interop stack (installs Debian packages on first use)"
bash tests/harness/start.sh
if [ -z "${KEEP_STACK:-}" ]; then
  trap 'bash tests/harness/stop.sh >/dev/null 2>&1 || true' EXIT
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "supply chain: cargo deny check licenses bans sources"
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked
# advisories need the RustSec database from GitHub, which these machines cannot reach: see deny.toml.
cargo deny check licenses bans sources

step "cargo test (unit, integration, interop, fault matrix, hostile input, soak ${SOAK_SECS:-20}s)"
cargo test --all-targets --locked

if [ -z "${SKIP_CONTAINER:-}" ]; then
  step "container image: podman build of the Dockerfile, then the image run against the stack"
  # Base images pulled or made locally (tests/container/build.sh); state in /var/tmp/authrelay-container.
  AUTHRELAY_CONTAINER_TESTS=1 cargo test --locked --test container -- --nocapture
fi

step "benchmarks, short form (benches/run.sh --quick; the full run: bash benches/run.sh)"
bash benches/run.sh --quick

if [ -z "${SKIP_FUZZ:-}" ]; then
  step "fuzz targets, ${FUZZ_SECONDS}s each"
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  work="$(mktemp -d)"
  fuzz_failed=0
  for target in $(cd fuzz && cargo fuzz list); do
    mkdir -p "$work/$target"
    # New inputs go to a scratch corpus; the committed seeds in fuzz/corpus are only read.
    if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "$work/$target" "corpus/$target" \
          -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1) > "$work/$target.log" 2>&1; then
      printf 'fuzz %-14s ok: %s\n' "$target" "$(grep -m1 -o 'Done [0-9]* runs' "$work/$target.log")"
    else
      fuzz_failed=1
      printf 'fuzz %-14s FAILED\n' "$target"; tail -40 "$work/$target.log"
    fi
  done
  rm -rf "$work"
  [ "$fuzz_failed" = 0 ]
fi
step "all tests passed"
