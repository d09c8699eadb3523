#!/usr/bin/env bash
# Side-by-side TLS proxy benchmark on loopback: webgateway's proxy vs nginx and haproxy,
# all in front of the same nginx backend serving /1k.bin and /1m.bin.
#
#   backend      :18081 http   nginx, 1 worker, sendfile
#   nginx-http   :18443 https  nginx http proxy (keepalive upstream pool)
#   nginx-stream :18447 https  nginx stream (TLS termination at L4)  <- the like-for-like peer
#   haproxy-tcp  :18448 https  haproxy mode tcp (TLS termination at L4)
#   webgateway   :18450 https  `webgateway proxy` (uvloop), route "localhost" -> backend
#   python-floor :18460 https  bench/proxy/floor.py: a bare Python TLS proxy, the least a
#                              Python design pays (FLOOR_OPTS="peek" default; "peek uv")
#
# For each: wrk 1 KiB keep-alive (req/s), wrk 1 MiB keep-alive (MiB/s), full TLS handshakes/s
# (hs_client.py: fresh TLS 1.3 handshake + SNI + GET per connection), and the server's own
# CPU time (utime+stime of the listening processes) per request / MiB / handshake.
# URLs use https://localhost so wrk sends SNI (the proxy routes by SNI).
# usage: bench/proxy/run.sh [SECONDS=8]
# env: WORKERS=1 (nginx workers / haproxy threads / proxy workers), SERVER_CPUS=0, CLIENT_CPUS=1,
#      CONNS=50, THREADS=2, HS_PROCS=4, ONLY="nginx-stream webgateway ..." (subset),
#      TESTS="1k 1m hs" (subset; "resume" adds TLS 1.3 resumed handshakes, "hs-together" full
#      handshakes on all peers at once), ROUNDS=1 (repeat the whole series, peers interleaved),
#      STATE=/tmp/wgbench-proxy (all files, logs, pids), PY=.venv/bin/python (scripts/setup --test makes it),
#      PURE_SRC=dir (sources without .so files, for the peer "webgateway-pure"),
#      FLOOR_OPTS="peek" (python-floor's options: "peek" parses the ClientHello, "uv" runs in uvloop)
# Stops every server it started (by recorded PID) on exit.
set -euo pipefail
secs=${1:-8}
HERE="$(cd "$(dirname "$0")" && pwd)"; REPO="$(cd "$HERE/../.." && pwd)"
STATE=${STATE:-/tmp/wgbench-proxy}; PY=${PY:-$REPO/.venv/bin/python}
WORKERS=${WORKERS:-1}; SERVER_CPUS=${SERVER_CPUS:-0}; CLIENT_CPUS=${CLIENT_CPUS:-1}
CONNS=${CONNS:-50}; THREADS=${THREADS:-2}; HS_PROCS=${HS_PROCS:-4}
ONLY=${ONLY:-"nginx-stream nginx-http haproxy-tcp webgateway"}; TESTS=${TESTS:-"1k 1m hs"}
mkdir -p "$STATE"/{run,www,certs,res}
RUN=$STATE/run; C=$STATE/certs; W=$STATE/www; RES=$STATE/res
SPIN="taskset -c $SERVER_CPUS"; CPIN="taskset -c $CLIENT_CPUS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
declare -A PORT=([nginx-stream]=18447 [nginx-http]=18443 [haproxy-tcp]=18448 [webgateway]=18450 [webgateway-pure]=18451 [python-floor]=18460)

start() { # name cmd...
  local n=$1; shift
  setsid "$@" >"$RUN/$n.log" 2>&1 </dev/null & echo $! >"$RUN/$n.pid"
}
stop_all() {
  local f pid
  for f in "$RUN"/*.pid; do
    [[ -s $f ]] || continue; pid=$(<"$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  done
}
trap stop_all EXIT
wait_tcp() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# --- payloads and a throw-away CA -> intermediate -> EC P-256 leaf for localhost. Every server
# sends leaf + intermediate (chain.pem), as with a real CA's full chain (what certd writes); a
# leaf alone would make OpenSSL build the chain on every handshake where nginx does not.
[[ -s $W/1k.bin ]] || head -c 1024 /dev/urandom >"$W/1k.bin"
[[ -s $W/1m.bin ]] || head -c 1048576 /dev/urandom >"$W/1m.bin"
if [[ ! -s $C/chain.pem ]]; then
  ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" -keyout "$C/$2.key" "${@:3}" 2>/dev/null; }
  ec "bench CA" ca -x509 -days 30 -out "$C/ca.pem" -addext basicConstraints=critical,CA:TRUE
  ec "bench intermediate" int -out "$C/int.csr"
  openssl x509 -req -in "$C/int.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial -days 30 \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n') -out "$C/int.pem" 2>/dev/null
  ec localhost leaf -out "$C/leaf.csr"
  openssl x509 -req -in "$C/leaf.csr" -CA "$C/int.pem" -CAkey "$C/int.key" -CAcreateserial -days 30 \
    -extfile <(printf 'subjectAltName=DNS:localhost\n') -out "$C/leaf.pem" 2>/dev/null
  chmod 600 "$C"/*.key; cat "$C/leaf.pem" "$C/int.pem" >"$C/chain.pem"; cat "$C/chain.pem" "$C/leaf.key" >"$C/leaf.bundle.pem"
fi

ngx_head() { cat <<X
daemon off; pid $1/nginx.pid; error_log $1/error.log warn; worker_rlimit_nofile 20000;
events { worker_connections 8192; }
X
}
ngx_http() { cat <<X
access_log off; keepalive_requests 1000000; keepalive_timeout 65s;
client_body_temp_path $1/b; proxy_temp_path $1/p; fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;
X
}
# --- backend
D=$RUN/backend.d; mkdir -p "$D"
{ ngx_head "$D"; echo "worker_processes 1;"; echo "http { $(ngx_http "$D") sendfile on; tcp_nopush on;
  default_type application/octet-stream; server { listen 127.0.0.1:18081 backlog=4096; root $W; location / {} } }"; } >"$D/nginx.conf"
start backend taskset -c "$CLIENT_CPUS" nginx -p "$D" -c "$D/nginx.conf"
# --- nginx (http + stream)
D=$RUN/nginx.d; mkdir -p "$D"
{ echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"; ngx_head "$D"; echo "worker_processes $WORKERS;"
  cat <<X
http { $(ngx_http "$D")
  upstream be { server 127.0.0.1:18081; keepalive 64; }
  server { listen 127.0.0.1:18443 ssl backlog=4096; ssl_certificate $C/chain.pem; ssl_certificate_key $C/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_conf_command NumTickets 1;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
stream { server { listen 127.0.0.1:18447 ssl backlog=4096; ssl_certificate $C/chain.pem;
  ssl_certificate_key $C/leaf.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_conf_command NumTickets 1;
  proxy_pass 127.0.0.1:18081; } }
X
} >"$D/nginx.conf"
start nginx $SPIN nginx -p "$D" -c "$D/nginx.conf"
# --- haproxy (tcp mode)
cat >"$RUN/haproxy.cfg" <<X
global
    nbthread $WORKERS
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    mode tcp
    bind 127.0.0.1:18448 ssl crt $C/leaf.bundle.pem
    default_backend be
backend be
    mode tcp
    server s1 127.0.0.1:18081
X
start haproxy $SPIN haproxy -db -f "$RUN/haproxy.cfg"
# --- webgateway proxy: config, store seeded with one name, the domain "localhost" and its cert.
# "webgateway-pure" is a second proxy run from PURE_SRC, a copy of the sources without the
# modules compiled in place with mypyc, to compare compiled and interpreted side by side.
wg_start() { # name https-port http-port cwd state-dir
G=$RUN/$5; mkdir -p "$G"
cat >"$G/webgateway.toml" <<X
[zone]
name = "gw.test"
gateway_ipv4 = ["127.0.0.1"]
gateway_ipv6 = ["::1"]
nameservers = { "ns1.gw.test" = ["127.0.0.1"] }
[proxy]
https_listen = ["127.0.0.1:$2"]
http_listen = ["127.0.0.1:$3"]
workers = $WORKERS
[api]
allow_loopback_backends = true   # the backend is nginx on 127.0.0.1:18081
[store]
path = "$G/wg.db"
certs_dir = "$G/certs"
[log]
level = "warning"
X
rm -f "$G"/wg.db*
(cd "$4" && "$PY" - "$G/wg.db" "$C/chain.pem" "$C/leaf.key") <<'X'
import asyncio, sys
from pathlib import Path
from webgateway.sqlite_store import SqliteStore
from webgateway.model import Name, Domain, DomainState, Certificate, CertState
from webgateway.keyseal import KeySeal, slot
from webgateway.addresses import parse_hostport
async def main():
    s = SqliteStore(Path(sys.argv[1])); await s.open()
    o = await s.create_owner("bench", "bench-hash")
    await s.put_name(Name("bench", o.id, (parse_hostport("127.0.0.1:18081"),)), 10)
    await s.put_domain(Domain("localhost", "bench", o.id, "x"), 10)  # a claim: pending
    await s.verify_claim("x", "bench")
    await s.set_domain_state("localhost", DomainState.ACTIVE, "bench")
    chain, key = Path(sys.argv[2]).read_text(), Path(sys.argv[3]).read_bytes()
    await s.put_certificate(Certificate("localhost", ("localhost",), CertState.VALID, chain,
                                        KeySeal().seal(slot("cert", "localhost"), key)))
    await s.close()
asyncio.run(main())
X
(cd "$4" && start "$1" $SPIN "$PY" -m webgateway.cli proxy --config "$G/webgateway.toml")
}
[[ " $ONLY " == *" webgateway "* ]] && wg_start webgateway 18450 18480 "$PWD" wg  # the caller's directory: PYTHONPATH=tree keeps working
[[ " $ONLY " == *" webgateway-pure "* ]] && wg_start webgateway-pure 18451 18481 "${PURE_SRC:?PURE_SRC=copy of the sources without .so files}" wg-pure
[[ " $ONLY " == *" python-floor "* ]] && start python-floor $SPIN "$PY" "$HERE/floor.py" 18460 18081 "$C/chain.pem" "$C/leaf.key" ${FLOOR_OPTS:-peek}
wait_tcp 18081; for n in $ONLY; do wait_tcp "${PORT[$n]}" || { log "$n did not start"; cat "$RUN"/*.log >&2; exit 1; }; done
for n in $ONLY; do
  curl -sf -o /dev/null --cacert "$C/ca.pem" "https://localhost:${PORT[$n]}/1k.bin" || { log "$n does not serve"; exit 1; }
done
log "all up; ${secs}s per run, server CPU $SERVER_CPUS, clients CPU $CLIENT_CPUS, WORKERS=$WORKERS"

TCK=$(getconf CLK_TCK)
pids_of() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' '; }
ticks() { local p t=0; for p in $1; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12+$13}'))); done; echo "$t"; }
out=$RES/summary.txt; : >"$out"
for round in $(seq "${ROUNDS:-1}"); do
for n in $ONLY; do
  port=${PORT[$n]}; pids=$(pids_of "$port"); url="https://localhost:$port"
  for tag in 1k 1m; do
    [[ " $TESTS " == *" $tag "* ]] || continue
    c0=$(ticks "$pids")
    $CPIN wrk -t "$THREADS" -c "$CONNS" -d "${secs}s" "$url/$tag.bin" >"$RES/${n}_$tag.txt" 2>&1 || true
    c1=$(ticks "$pids")
    awk -v n="$n" -v tag="$tag" -v cpu=$((c1 - c0)) -v tck="$TCK" -v d="$secs" '
      function mib(s) { v=s+0; if (s ~ /GB/) v*=1024; else if (s ~ /KB/) v/=1024; else if (s !~ /MB/) v/=1048576; return v }
      / requests in / {r=$1} /Requests\/sec:/ {rps=$2} /Transfer\/sec:/ {t=mib($2)} /Socket errors/ {e=$0}
      END { cs=cpu/tck; if (tag=="1k") printf "%-13s 1k-keepalive req/s=%-8.0f cpu_us/req=%-7.1f srv_cpu=%3.0f%% %s\n", n, rps, (r>0)?cs*1e6/r:0, cs*100/d, e;
            else printf "%-13s 1m-keepalive MiB/s=%-8.1f cpu_us/MiB=%-7.0f srv_cpu=%3.0f%% %s\n", n, t, (t>0)?cs*1e6/(t*d):0, cs*100/d, e }' \
      "$RES/${n}_$tag.txt" | tee -a "$out"
  done
  for tag in hs resume; do
    [[ " $TESTS " == *" $tag "* ]] || continue
    mode=$([[ $tag == resume ]] && echo resume || echo new)
    c0=$(ticks "$pids"); t0=$(date +%s.%N)
    read -r hs errs reused < <($CPIN "$PY" "$HERE/hs_client.py" 127.0.0.1 "$port" localhost "$secs" "$HS_PROCS" /1k.bin "$mode")
    wall=$(echo "$(date +%s.%N) - $t0" | bc); c1=$(ticks "$pids")
    awk -v n="$n" -v hs="$hs" -v e="$errs" -v r="$reused" -v tag="$tag" -v w="$wall" -v cpu=$((c1 - c0)) -v tck="$TCK" -v d="$secs" 'BEGIN {
        cs=cpu/tck; printf "%-13s %-12s conn/s=%-7.0f cpu_us/conn=%-7.0f srv_cpu=%3.0f%% errors=%d resumed=%d\n", n, (tag=="hs")?"full-hs":"resumed-hs", hs/d, (hs>0)?cs*1e6/hs:0, cs*100/w, e, r }' | tee -a "$out"
  done
done
# "hs-together": full handshakes on every peer at the same time (one hs_client.py each), so a
# change of load on the shared machine weighs on all of them alike.
if [[ " $TESTS " == *" hs-together "* ]]; then
  declare -A C0=(); for n in $ONLY; do C0[$n]=$(ticks "$(pids_of "${PORT[$n]}")"); done
  clients=()
  for n in $ONLY; do
    $CPIN "$PY" "$HERE/hs_client.py" 127.0.0.1 "${PORT[$n]}" localhost "$secs" "$HS_PROCS" /1k.bin new >"$RES/${n}_together.txt" &
    clients+=($!)
  done
  wait "${clients[@]}"  # not a bare wait: the servers are background jobs too
  for n in $ONLY; do
    read -r hs errs _ <"$RES/${n}_together.txt"; c1=$(ticks "$(pids_of "${PORT[$n]}")")
    awk -v n="$n" -v hs="$hs" -v e="$errs" -v cpu=$((c1 - C0[$n])) -v tck="$TCK" -v d="$secs" 'BEGIN {
        printf "%-15s hs-together  conn/s=%-7.0f cpu_us/conn=%-7.0f errors=%d\n", n, hs/d, (hs>0)?cpu/tck*1e6/hs:0, e }' | tee -a "$out"
  done
fi
done
log "raw output in $RES"
