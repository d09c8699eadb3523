#!/usr/bin/env bash
# Tunnel traffic with [proxy] workers = 1 vs 2: the main process holds the tunnels, and the
# workers hand it every tunnel connection they accept (proxy/handoff.py). Same gateway
# state, same node, same nginx; the gateway restarted with the other worker count.
#
# Per run, wrk 1 KiB on 16 connections for SECS s: keep-alive (one hand-off per connection,
# then nothing) and Connection: close (a new connection, so a hand-off, per request);
# `direct` (an ordinary name, no tunnel) is the peer: what the workers buy where nothing is
# handed off. CPU: gateway (main + workers) + node, from /proc, per request.
# Needs nginx, wrk, curl, unshare, root (see run.sh). usage: bench/tunnel/workers.sh [SECS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
PY=${PYTHON:-.venv/bin/python}
for t in nginx wrk curl unshare; do
  command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 2; }
done
. bench/tunnel/lib.sh
start_backend
prepare_gateway "$BACKEND" 0  # viassh unused: it points at nginx too

echo "# ${SECS}s per run, $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg) at start"
printf '%-8s %-8s %-11s %10s %12s\n' workers name connection req/s "cpu µs/req"
for workers in 1 2; do
  start_gateway "$workers"
  for host in viatunnel direct; do
    for conn in keep-alive close; do
      if [[ $conn == close ]]; then WRK_EXTRA="-H 'Connection: close'"; else WRK_EXTRA=""; fi
      read -r rps _ tk < <(measure "$host" /1k.bin 16 "$GW" "$NODE")
      us=$("$PY" -c "print(f'{$tk / $HZ * 1e6 / ($rps * $SECS):.0f}')")
      printf '%-8s %-8s %-11s %10s %12s\n' "$workers" "$host" "$conn" "$rps" "$us"
    done
  done
  echo "#   handed off: $(curl -s -H "authorization: Bearer $(cat "$STATE/admin.token")" \
    "http://127.0.0.1:$API/metrics" | awk '/^webgateway_proxy_handoffs_total\{.*sent/ {s+=$2} END {print s+0}')," \
    "load average $(cut -d' ' -f1 /proc/loadavg)"
  stop_gateway
done
