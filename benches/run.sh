#!/usr/bin/env bash
# Reproduces every table in BENCHMARKS.md on this machine, in one go:
#   1. installs email-oauth2-proxy (PyPI `emailproxy`) into a venv (target/bench-venv)
#   2. runs the criterion codec micro-benchmarks
#   3. runs the load benchmark (benches/load): direct, bare TLS relay, authrelay and
#      email-oauth2-proxy against the same fast upstream, and rewrites the generated part of
#      BENCHMARKS.md (the hand-written notes around it are kept)
#      (and, where redis-server is installed, three replicas sharing a Redis store: login
#      latency against the file store, and the refresh storm)
#   4. runs the spool benchmark (benches/spool.rs): 20 KB messages accepted per second with
#      fsync by 64 clients, authrelay's spool against Postfix's smtpd (the interop stack's, when
#      it runs: tests/harness/start.sh)
#
#   bash benches/run.sh            the full run (about 10 minutes on 2 cores), writes BENCHMARKS.md
#   bash benches/run.sh --quick    the short form (smaller sizes, debug build; part of the test
#                                  command so the benchmark cannot rot); prints, leaves BENCHMARKS.md
#
# Needs python3 with venv (Debian: python3-venv) and network access to PyPI for step 1.
# Everything runs on 127.0.0.1; figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=""
[ "${1:-}" = "--quick" ] && quick=1

venv=target/bench-venv
if [ ! -x "$venv/bin/emailproxy" ]; then
  echo "==> installing email-oauth2-proxy into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check emailproxy
fi
peer=(--emailproxy "$venv/bin/emailproxy" --python "$venv/bin/python")

if [ -n "$quick" ]; then
  # The dev profile reuses the test build; figures from it are for checking, not for reading.
  cargo bench --profile dev --bench codecs -- --quick --noplot >/dev/null
  cargo bench --profile dev --bench load -- --quick "${peer[@]}" --criterion target/criterion
  cargo bench --profile dev --bench spool -- --quick
else
  cargo bench --bench codecs -- --noplot
  cargo bench --bench load -- "${peer[@]}" --criterion target/criterion --out BENCHMARKS.md
  cargo bench --bench spool
fi
