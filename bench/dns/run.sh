#!/usr/bin/env bash
# dnsd against Knot, side by side, on the same bench.test zone, loopback only.
#
# usage: bench/dns/run.sh [NAMES=10000] [SECONDS=10] [ROUNDS=2]
# env:   PYTHON=.venv/bin/python       an interpreter that can import webgateway/dnsd (e.g. the venv's)
#        CLIENTS=10 OUTSTANDING=100   dnsperf -c / -q
#        WORKERS=1               dnsd [dns] workers (SO_REUSEPORT processes)
#        MODE=udp|tcp            dnsperf -m
#        MIX=exact|resolver      exact: queries.txt (exact names, no EDNS); resolver: three
#                                dnsperf at once, one per EDNS flavour (EDNS; EDNS+DO;
#                                EDNS+DO+client cookie), on resolver_K.txt (gen.py: every
#                                line in its own 0x20 case, the type spread of a real zone),
#                                after a warm-up asking each of its questions once per flavour
#        SERVER_CPUS / CLIENT_CPUS   taskset pinning (e.g. SERVER_CPUS=0 CLIENT_CPUS=1)
#        STATE=/tmp/webgateway-bench-dns   all files (zone, store, logs, dnsperf output)
#        DNSSEC=1                both sign the zone (dnsd: [dnssec] enabled, online; Knot:
#                                automatic signing, one ECDSAP256SHA256 CSK, NSEC, the signed
#                                zone kept in its journal) and every query sets DO=1 (-D);
#                                also: response sizes for the same questions (sizes.py), and
#                                each server restarted once its zone is signed
#
# Needs (installs nothing): knotd + knotc (apt: knot), dnsperf (apt: dnsperf),
# dig (apt: bind9-dnsutils), and webgateway importable by $PYTHON.
# Starts both servers in the background under setsid with their PIDs recorded, measures
# start-up time (launch -> first answer) and RSS, then runs dnsperf against each in turn,
# ROUNDS times, reading each server's CPU ticks from /proc before and after, and prints
# q/s, CPU µs per query and the dnsd/Knot ratios. Stops only the PIDs it started.
set -euo pipefail

NAMES=${1:-10000}; SECS=${2:-10}; ROUNDS=${3:-2}
CLIENTS=${CLIENTS:-10}; OUTSTANDING=${OUTSTANDING:-100}; WORKERS=${WORKERS:-1}; MODE=${MODE:-udp}
MIX=${MIX:-exact}
DNSSEC=${DNSSEC:-0}
DO=""; [[ $DNSSEC == 1 ]] && DO="-D"
STATE=${STATE:-/tmp/webgateway-bench-dns}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-$HERE/../../.venv/bin/python}
OUT="$STATE/z$NAMES"
SPIN=${SERVER_CPUS:+taskset -c $SERVER_CPUS}
CPIN=${CLIENT_CPUS:+taskset -c $CLIENT_CPUS}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in knotd knotc dnsperf dig taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install knot dnsperf bind9-dnsutils util-linux)"
done
"$PYTHON" -c 'import dnsd.service, webgateway.cli' 2>/dev/null \
  || die "$PYTHON cannot import webgateway (set PYTHON to the venv's python)"

mkdir -p "$OUT"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'from tests.support import free_port; print(free_port())' 2>/dev/null \
  || "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cd "$HERE/../.."
KPORT=$(free_port); DPORT=$(free_port)

log "generating $NAMES names (zone file for Knot, store for dnsd) in $OUT"
"$PYTHON" "$HERE/gen.py" "$OUT" "$NAMES" "$DPORT" >&2
sed -i "s/^workers = .*//; s/^\[dns\]/[dns]\nworkers = $WORKERS/" "$OUT/webgateway.toml"
SIGNING=""; LOAD=whole; JOURNAL=none
if [[ $DNSSEC == 1 ]]; then
  printf '[dnssec]\nenabled = true\n' >>"$OUT/webgateway.toml"
  rm -rf "$OUT/knot"  # a cold start: no keys, nothing signed
  # the signed zone kept in Knot's journal: a restart loads it instead of signing again
  LOAD=difference-no-serial; JOURNAL=all
  SIGNING=$'    dnssec-signing: on\n    dnssec-policy: bench'
fi

mkdir -p "$OUT/knot"
cat > "$OUT/knot/knot.conf" <<EOF
server:
    rundir: "$OUT/knot"
    listen: 127.0.0.1@$KPORT
log:
  - target: stderr
    any: info
database:
    storage: "$OUT/knot"
    journal-db-max-size: 8G
policy:
  - id: bench
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: off
    signing-threads: 2
template:
  - id: default
    storage: "$OUT/knot"
    zonefile-sync: -1
    zonefile-load: $LOAD
    journal-content: $JOURNAL
    journal-max-usage: 4G
zone:
  - domain: bench.test
    file: "$OUT/bench.test.zone"
$SIGNING
EOF
knotc -c "$OUT/knot/knot.conf" conf-check >/dev/null

now() { date +%s.%N; }
wait_answer() {  # PORT -> seconds until h1.bench.test A answers (signed with DNSSEC=1;
  local t0=$1 port=$2 want=198.18  # polls every 20 ms, 300 s max, 1200 s with DNSSEC=1)
  local tries=15000
  [[ $DNSSEC == 1 ]] && want="^A 13 " && tries=60000
  for _ in $(seq "$tries"); do
    if dig +time=1 +tries=1 +short +dnssec -p "$port" @127.0.0.1 h1.bench.test A 2>/dev/null | grep -q "$want"; then
      echo "$(now) - $t0" | bc; return 0
    fi
    sleep 0.02
  done
  return 1
}
group_pids() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g {print $1}'; }
rss_mib() { local t=0 p; for p in $(group_pids "$1"); do
  t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $((t / 1024)); }
ticks() { local t=0 p; for p in $(group_pids "$1"); do
  t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}' || echo 0))); done; echo "$t"; }

t0=$(now)
setsid $SPIN knotd -c "$OUT/knot/knot.conf" >"$OUT/knot.log" 2>&1 </dev/null &
KPID=$!; PIDS+=("$KPID")
KSTART=$(wait_answer "$t0" "$KPORT") || die "Knot did not answer (see $OUT/knot.log)"
t0=$(now)
setsid $SPIN "$PYTHON" -m webgateway.cli dnsd --config "$OUT/webgateway.toml" >"$OUT/dnsd.log" 2>&1 </dev/null &
DPID=$!; PIDS+=("$DPID")
DSTART=$(wait_answer "$t0" "$DPORT") || die "dnsd did not answer (see $OUT/dnsd.log)"
sleep 1
KRSS=$(rss_mib "$KPID"); DRSS=$(rss_mib "$DPID")
printf 'names=%s dnssec=%s start-up: knot %.2f s rss %s MiB | dnsd %.2f s rss %s MiB (workers=%s)\n' \
  "$NAMES" "$DNSSEC" "$KSTART" "$KRSS" "$DSTART" "$DRSS" "$WORKERS"
if [[ $DNSSEC == 1 ]]; then
  "$PYTHON" "$HERE/sizes.py" 127.0.0.1 "$KPORT" "$DPORT"
  stop_one() { kill -TERM -- "-$1" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; die "$1 did not stop"; }
  stop_one "$KPID"; stop_one "$DPID"
  # Knot restarts from its journal alone (the signed zone): the unsigned zone file is not
  # read again, so nothing is diffed against it and signed anew
  sed -i "s/zonefile-load: .*/zonefile-load: none/" "$OUT/knot/knot.conf"
  t0=$(now)
  setsid $SPIN knotd -c "$OUT/knot/knot.conf" >>"$OUT/knot.log" 2>&1 </dev/null &
  KPID=$!; PIDS+=("$KPID")
  KRE=$(wait_answer "$t0" "$KPORT") || die "Knot did not answer after its restart"
  t0=$(now)
  setsid $SPIN "$PYTHON" -m webgateway.cli dnsd --config "$OUT/webgateway.toml" >>"$OUT/dnsd.log" 2>&1 </dev/null &
  DPID=$!; PIDS+=("$DPID")
  DRE=$(wait_answer "$t0" "$DPORT") || die "dnsd did not answer after its restart"
  printf 'names=%s restart once signed (launch -> first signed answer): knot %.2f s | dnsd %.2f s\n' \
    "$NAMES" "$KRE" "$DRE"
  sleep 1
fi

TCK=$(getconf CLK_TCK)
declare -A QPS CPU
FLAVOURS=("-e" "-D" "-D -E 10:0123456789abcdef")  # MIX=resolver: one dnsperf each
perf() {  # PORT FILE OUT EXTRA-FLAGS CLIENTS OUTSTANDING
  # shellcheck disable=SC2086
  timeout $((SECS + 30)) $CPIN dnsperf -s 127.0.0.1 -p "$1" -m "$MODE" -d "$2" $4 $DO \
    -l "$SECS" -c "$5" -q "$6" -T 1 -t 2 >"$3" 2>&1
}
run_one() {  # NAME PORT PGID ROUND
  local raw="$OUT/dnsperf_$1_$4.txt" c0 c1 k pids=()
  c0=$(ticks "$3")
  if [[ $MIX == resolver ]]; then
    for k in 0 1 2; do
      perf "$2" "$OUT/resolver_$k.txt" "$raw.$k" "${FLAVOURS[$k]}" \
        $(( (CLIENTS + 2) / 3 )) $(( (OUTSTANDING + 2) / 3 )) & pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || die "dnsperf failed: $raw.*"; done
    cat "$raw".0 "$raw".1 "$raw".2 >"$raw"
  else
    perf "$2" "$OUT/queries.txt" "$raw" "" "$CLIENTS" "$OUTSTANDING" || die "dnsperf failed: $raw"
  fi
  c1=$(ticks "$3")
  awk -v n="$1" -v r="$4" -v cpu="$((c1 - c0))" -v tck="$TCK" '
    /Queries per second:/ {qps+=$4} /Queries completed:/ {done+=$3} /Queries lost:/ {lost+=$3}
    /Response codes:/ {sub(/^ *Response codes: */,""); rc=rc "; " $0}
    END {printf "%s round=%s qps=%.0f cpu_us/q=%.2f lost=%s [%s]\n", n, r, qps, cpu*1e6/tck/done, lost, substr(rc, 3)}' "$raw"
}
if [[ $MIX == resolver ]]; then  # both servers see every question once in each flavour first
  for port in "$KPORT" "$DPORT"; do
    warm=()
    for k in 0 1 2; do
      perf "$port" "$OUT/resolver_pool.txt" "$OUT/warm_${port}_$k.txt" "${FLAVOURS[$k]} -n 1" 4 40 &
      warm+=($!)
    done
    for k in "${warm[@]}"; do wait "$k" || die "warm-up dnsperf failed: $OUT/warm_${port}_*.txt"; done
  done
fi
for r in $(seq "$ROUNDS"); do
  for s in knot dnsd; do
    if [[ $s == knot ]]; then line=$(run_one knot "$KPORT" "$KPID" "$r"); else line=$(run_one dnsd "$DPORT" "$DPID" "$r"); fi
    echo "$line"
    QPS[$s]="${QPS[$s]:-} $(sed 's/.*qps=\([0-9]*\).*/\1/' <<<"$line")"
    CPU[$s]="${CPU[$s]:-} $(sed 's/.*cpu_us\/q=\([0-9.]*\).*/\1/' <<<"$line")"
  done
done
mean() { tr ' ' '\n' <<<"$1" | awk 'NF {s+=$1; n++} END {printf "%.2f", s/n}'; }
kq=$(mean "${QPS[knot]}"); dq=$(mean "${QPS[dnsd]}"); kc=$(mean "${CPU[knot]}"); dc=$(mean "${CPU[dnsd]}")
printf 'SUMMARY names=%s dnssec=%s mix=%s mode=%s clients=%s workers=%s: knot %.0f q/s %.2f us/q | dnsd %.0f q/s %.2f us/q | ratio q/s %.2fx, knot/dnsd CPU per query %.2fx\n' \
  "$NAMES" "$DNSSEC" "$MIX" "$MODE" "$CLIENTS" "$WORKERS" "$kq" "$kc" "$dq" "$dc" "$(echo "$dq / $kq" | bc -l)" "$(echo "$kc / $dc" | bc -l)"
