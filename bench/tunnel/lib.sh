# What the tunnel benches share (sourced by run.sh and workers.sh): a state folder whose
# processes are stopped by PID on exit, CPU ticks of process trees, the nginx backend, wrk.
# Expects PY, SECS; wrk_/measure also HTTPS and $STATE/hosts. WRK_EXTRA: more wrk options.
STATE=$(mktemp -d /tmp/wg-tunnel-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_tcp() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on :$1" >&2; return 1; }
bg() { local log=$1; shift; setsid "$@" >"$STATE/$log.log" 2>&1 & PIDS+=($!); echo $!; }
tree() { echo "$1"; for c in $(pgrep -P "$1" || true); do tree "$c"; done; }
ticks() {  # utime+stime of these processes and all their descendants, in clock ticks
  local t=0 p
  for root in "$@"; do for p in $(tree "$root"); do
    [[ -r /proc/$p/stat ]] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done; done
  echo "$t"
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

start_backend() {  # nginx with /1k.bin and /1m.bin; sets BACKEND
  BACKEND=$(free_port)
  mkdir -p "$STATE/www"
  head -c 1024 /dev/urandom >"$STATE/www/1k.bin"
  head -c 1048576 /dev/urandom >"$STATE/www/1m.bin"
  cat >"$STATE/nginx.conf" <<CONF
user root; daemon off; worker_processes 1; pid $STATE/nginx.pid; error_log $STATE/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; sendfile on;
  server { listen 127.0.0.1:$BACKEND; root $STATE/www; } }
CONF
  bg nginx nginx -c "$STATE/nginx.conf" >/dev/null
  wait_tcp "$BACKEND"
}

prepare_gateway() {  # SSH_R_PORT IDLE: config and store (bench/tunnel/prepare.py); sets HTTPS, API
  "$PY" bench/tunnel/prepare.py "$STATE" "$BACKEND" "$1" "$2"
  . "$STATE/ports.env"
  echo "127.0.0.1 viassh.gw.test viatunnel.gw.test direct.gw.test" >"$STATE/hosts"
}

start_gateway() {  # [PROXY_WORKERS=1]: webgateway run + the viatunnel node, serving; sets GW, NODE
  sed -i "/^workers = /d; s/^\[proxy\]$/[proxy]\nworkers = ${1:-1}/" "$STATE/webgateway.toml"
  GW=$(bg gateway "$PY" -m webgateway.cli run --config "$STATE/webgateway.toml")
  PIDS+=("$GW")  # $(bg ...) runs in a subshell: record the PID here
  wait_tcp "$HTTPS"; wait_tcp "$API"
  NODE=$(bg node "$PY" -m webgateway.cli tunnel --gateway "127.0.0.1:$HTTPS" --server-name gw.test \
    --ca "$STATE/ca.pem" --name viatunnel --token-file "$STATE/token" --to "127.0.0.1:$BACKEND")
  PIDS+=("$NODE")
  local ok=0
  for _ in $(seq 100); do
    ok=0
    for _ in $(seq 10); do  # new connections: every proxy process must serve it
      [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$STATE/ca.pem" \
            --resolve "viatunnel.gw.test:$HTTPS:127.0.0.1" "https://viatunnel.gw.test:$HTTPS/1k.bin") == 200 ]] &&
        ok=$((ok + 1))
    done
    [[ $ok == 10 ]] && return 0
    sleep 0.1
  done
  echo "viatunnel not served ($ok of 10)" >&2; return 1
}

stop_gateway() {  # the gateway (its workers go with it) and the node, by PID
  kill "$NODE" "$GW"
  while kill -0 "$GW" 2>/dev/null || kill -0 "$NODE" 2>/dev/null; do sleep 0.1; done
}

wrk_() { unshare -m sh -c "mount --bind '$STATE/hosts' /etc/hosts && exec wrk $*"; }

measure() {  # name url connections -> "req/s MiB/s cpu_ticks"
  local host=$1 path=$2 conns=$3; shift 3
  local t0 out t1
  t0=$(ticks "$@")
  out=$(wrk_ -t1 -c"$conns" -d"${SECS}s" ${WRK_EXTRA:-} "https://$host.gw.test:$HTTPS$path")
  t1=$(ticks "$@")
  local rps mibs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  mibs=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) v*=1024; else if (v ~ /KB/) v/=1024; else if (v ~ /MB/) v+=0; print v}' <<<"$out")
  echo "$rps $mibs $((t1 - t0))"
}
