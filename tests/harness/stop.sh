#!/usr/bin/env bash
# Stops the processes start.sh started (by pid file). Keeps logs and maildirs.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${HARNESS_RUN:-$HERE/run}"
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]; }
for name in postfix dovecot graph idp; do
  f="$RUN/pids/$name.pid"
  [ -s "$f" ] || continue
  pid="$(tr -dc '0-9' < "$f")"
  if [ -n "$pid" ] && alive "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid"
  fi
  rm -f "$f"
done
exit 0
