#!/usr/bin/env bash
# Profiles authrelay's relay CPU during the load benchmark's throughput phase (100 MiB SMTP
# DATA and IMAP FETCH through authrelay, the bare relay and direct, alternating), as summarized
# in BENCHMARKS.md ("Where the relay's CPU goes"):
#
#   bash benches/profile.sh [OUT_DIR]     (default target/profile)
#
# Needs perf (Debian: linux-perf) and kernel.perf_event_paranoid <= 2 (a process may profile
# its own children). Writes OUT_DIR/perf.data, prints the 20 symbols with the most self time,
# and, where inferno is installed (`cargo install inferno`), writes OUT_DIR/flamegraph.svg.
# Not part of the test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-target/profile}
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)"; exit 1; }

cargo bench --bench load --no-run
load=$(cargo bench --bench load --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="load" and m.get("executable"):
        print(m["executable"])')
"$load" --bench --only throughput --mib 400 --repeats 2 >"$out/bench.log" 2>&1 &
bench=$!
pid=""
for _ in $(seq 120); do
  pid=$(pgrep -f "authrelay run --config /tmp/.*/authrelay.toml" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.5
done
[ -n "$pid" ] || { echo "authrelay did not start; see $out/bench.log"; exit 1; }
sleep 3
# DWARF call graphs: the release build keeps no frame pointers.
perf record -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" -- sleep 30 >/dev/null 2>&1 || true
wait "$bench" || true
perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9]' | sed -n 1,20p || true
if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/stacks.folded"
  inferno-flamegraph --title "authrelay relay CPU, throughput phase" < "$out/stacks.folded" > "$out/flamegraph.svg"
  echo "flame graph: $out/flamegraph.svg"
fi
