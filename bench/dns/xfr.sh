#!/usr/bin/env bash
# AXFR to a Knot secondary: from dnsd, and from a Knot primary of the same zone, side by side.
#
# usage: bench/dns/xfr.sh [NAMES=10000] [ROUNDS=3]
# env:   PYTHON=.venv/bin/python   STATE=/tmp/webgateway-bench-xfr
#
# Needs (installs nothing): knotd + knotc (apt: knot), dig, and webgateway importable by
# $PYTHON. bench/dns/gen.py writes the bench.test zone twice (zone file and store); dnsd and
# a Knot primary serve it on loopback with one TSIG key; each round starts a fresh Knot
# secondary of each primary in turn and reads the transfer time Knot itself logs ("AXFR,
# incoming ... finished, S seconds, M messages, B bytes") plus launch -> first answer of the
# last name. Then dnsd's peak RSS (VmHWM) against its RSS before the transfers. Only the
# PIDs it started are stopped.
set -euo pipefail

NAMES=${1:-10000}; ROUNDS=${2:-3}
STATE=${STATE:-/tmp/webgateway-bench-xfr}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-$HERE/../../.venv/bin/python}
OUT="$STATE/z$NAMES"
SECRET=$(head -c 32 /dev/urandom | base64)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for tool in knotd knotc dig; do command -v "$tool" >/dev/null || die "$tool is missing"; done

mkdir -p "$OUT"
PIDS=()
stop_pid() { kill -TERM -- "-$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true; }
cleanup() { local p; for p in "${PIDS[@]}"; do stop_pid "$p"; done; }
trap cleanup EXIT

cd "$HERE/../.."
free_port() { "$PYTHON" -c 'from tests.support import free_port; print(free_port())'; }
DPORT=$(free_port); KPORT=$(free_port)

log "generating $NAMES names in $OUT"
"$PYTHON" "$HERE/gen.py" "$OUT" "$NAMES" "$DPORT" >&2
sed -i 's/^\[dns\]$/[dns]\ntransfer_allow = ["127.0.0.0\/8"]/' "$OUT/webgateway.toml"
printf '[dns.tsig]\nname = "xfr"\nsecret = "%s"\n' "$SECRET" >> "$OUT/webgateway.toml"

knot_conf() {  # DIR LISTEN_PORT [PRIMARY_PORT] -> a primary of the zone file, or a secondary
  local dir=$1 port=$2 primary=${3:-}
  mkdir -p "$dir"
  {
    printf 'server:\n    rundir: "%s"\n    listen: 127.0.0.1@%s\n' "$dir" "$port"
    printf 'log:\n  - target: stderr\n    any: info\n'
    printf 'database:\n    storage: "%s"\n' "$dir"
    printf 'key:\n  - id: xfr\n    algorithm: hmac-sha256\n    secret: %s\n' "$SECRET"
    printf 'acl:\n  - id: xfr\n    address: 127.0.0.0/8\n    key: xfr\n    action: transfer\n'
    if [[ -n $primary ]]; then
      printf 'remote:\n  - id: primary\n    address: 127.0.0.1@%s\n    key: xfr\n' "$primary"
    fi
    printf 'template:\n  - id: default\n    storage: "%s"\n    zonefile-sync: -1\n' "$dir"
    printf '    journal-content: none\n'
    printf 'zone:\n  - domain: bench.test\n'
    if [[ -n $primary ]]; then
      printf '    master: primary\n    file: "%s/secondary.zone"\n' "$dir"
    else
      printf '    file: "%s/bench.test.zone"\n    acl: xfr\n' "$OUT"
    fi
  } > "$dir/knot.conf"
  knotc -c "$dir/knot.conf" conf-check >/dev/null
}

now() { date +%s.%N; }
wait_answer() {  # PORT NAME -> 0 once NAME A answers (20 ms polls, 300 s max)
  for _ in $(seq 15000); do
    dig +time=1 +tries=1 +short -p "$1" @127.0.0.1 "$2" A 2>/dev/null | grep -q 198.18 && return 0
    sleep 0.02
  done
  return 1
}
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

knot_conf "$OUT/primary" "$KPORT"
setsid knotd -c "$OUT/primary/knot.conf" >"$OUT/primary.log" 2>&1 </dev/null &
PIDS+=("$!")
setsid "$PYTHON" -m webgateway.cli dnsd --config "$OUT/webgateway.toml" >"$OUT/dnsd.log" 2>&1 \
  </dev/null &
DPID=$!; PIDS+=("$DPID")
LAST="h$((NAMES - 1)).bench.test"
wait_answer "$KPORT" "$LAST" || die "Knot primary did not answer ($OUT/primary.log)"
wait_answer "$DPORT" "$LAST" || die "dnsd did not answer ($OUT/dnsd.log)"
DRSS0=$(kib "$DPID" VmRSS); DHWM0=$(kib "$DPID" VmHWM)

printf '%-6s %-5s %10s %10s %9s %10s\n' primary round "xfr s" "answer s" messages bytes
for round in $(seq "$ROUNDS"); do
  for primary in knot dnsd; do
    port=$KPORT; [[ $primary == dnsd ]] && port=$DPORT
    dir="$OUT/sec-$primary-$round"; rm -rf "$dir"
    SPORT=$(free_port)
    knot_conf "$dir" "$SPORT" "$port"
    t0=$(now)
    setsid knotd -c "$dir/knot.conf" >"$dir.log" 2>&1 </dev/null &
    SPID=$!; PIDS+=("$SPID")
    wait_answer "$SPORT" "$LAST" || die "secondary of $primary did not load ($dir.log)"
    t1=$(now)
    line=$(grep -m1 'AXFR, incoming.*finished' "$dir.log") || die "no AXFR line in $dir.log"
    secs=$(sed -E 's/.*finished, ([0-9.]+) seconds.*/\1/' <<<"$line")
    msgs=$(sed -E 's/.* ([0-9]+) messages.*/\1/' <<<"$line")
    bytes=$(sed -E 's/.* ([0-9]+) bytes.*/\1/' <<<"$line")
    printf '%-6s %-5s %10s %10.3f %9s %10s\n' "$primary" "$round" "$secs" \
      "$(echo "$t1 - $t0" | bc)" "$msgs" "$bytes"
    stop_pid "$SPID"
  done
done
printf 'dnsd RSS before transfers %s MiB (peak so far %s MiB); peak after %s MiB\n' \
  "$((DRSS0 / 1024))" "$((DHWM0 / 1024))" "$(($(kib "$DPID" VmHWM) / 1024))"
