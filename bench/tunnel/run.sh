#!/usr/bin/env bash
# Reverse tunnels side by side: webgateway's tunnel vs OpenSSH `ssh -R`, same proxy in front.
#
#   client --TLS--> webgateway proxy --+-- viassh:    TCP -> sshd -R listener -> ssh channel -> ssh -> nginx
#                                      +-- viatunnel: pooled tunnel connection -> node -> nginx
#
# Both paths start at the same proxy (TLS terminated there) and end at the same nginx, so the
# difference is the tunnel: webgateway's (gateway + node) against ssh's (sshd + ssh), with
# the gateway's CPU counted on both sides. Figures: 1 KiB keep-alive req/s and CPU µs per
# request; 1 MiB MiB/s and CPU ms per MiB; new-connection time to first byte p50/p99;
# gateway RSS with IDLE idle tunnels (and sshd's RSS per ssh -R tunnel).
# Needs (installs nothing): nginx, sshd + ssh (openssh-server), wrk, curl, unshare, root
# (wrk resolves the names through a private /etc/hosts bind-mounted in its own mount
# namespace). Everything on loopback; every process started here is stopped by PID.
# usage: bench/tunnel/run.sh [SECS=5] [IDLE=1000]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
IDLE=${2:-1000}
PY=${PYTHON:-.venv/bin/python}
for t in nginx /usr/sbin/sshd ssh ssh-keygen wrk curl unshare; do
  command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 2; }
done
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

# --- the backend: nginx with /1k.bin and /1m.bin
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

# --- the ssh -R peer: a private sshd and one ssh client forwarding R -> nginx
SSHD_PORT=$(free_port); SSH_R=$(free_port)
ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$STATE/client_key"
cp "$STATE/client_key.pub" "$STATE/authorized_keys"; chmod 600 "$STATE/authorized_keys"
mkdir -p /run/sshd
cat >"$STATE/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $STATE/host_key
PidFile $STATE/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
LogLevel ERROR
CFG
SSHD=$(bg sshd /usr/sbin/sshd -D -e -f "$STATE/sshd_config")
PIDS+=("$SSHD")  # $(bg ...) runs in a subshell: record the PID here
wait_tcp "$SSHD_PORT"
SSHC=$(bg ssh ssh -N -p "$SSHD_PORT" -i "$STATE/client_key" -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes \
  -R "127.0.0.1:$SSH_R:127.0.0.1:$BACKEND" root@127.0.0.1)
PIDS+=("$SSHC")  # $(bg ...) runs in a subshell: record the PID here
wait_tcp "$SSH_R"

# --- the gateway and its node
"$PY" bench/tunnel/prepare.py "$STATE" "$BACKEND" "$SSH_R" "$IDLE"
. "$STATE/ports.env"
GW=$(bg gateway "$PY" -m webgateway.cli run --config "$STATE/webgateway.toml")
PIDS+=("$GW")  # $(bg ...) runs in a subshell: record the PID here
wait_tcp "$HTTPS"; wait_tcp "$API"
NODE=$(bg node "$PY" -m webgateway.cli tunnel --gateway "127.0.0.1:$HTTPS" --server-name gw.test \
  --ca "$STATE/ca.pem" --name viatunnel --token-file "$STATE/token" --to "127.0.0.1:$BACKEND")
PIDS+=("$NODE")  # $(bg ...) runs in a subshell: record the PID here
for _ in $(seq 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$STATE/ca.pem" \
        --resolve "viatunnel.gw.test:$HTTPS:127.0.0.1" "https://viatunnel.gw.test:$HTTPS/1k.bin") == 200 ]] && break
  sleep 0.1
done
echo "127.0.0.1 viassh.gw.test viatunnel.gw.test direct.gw.test" >"$STATE/hosts"
wrk_() { unshare -m sh -c "mount --bind '$STATE/hosts' /etc/hosts && exec wrk $*"; }

measure() {  # name url connections -> "req/s MiB/s cpu_ticks"
  local host=$1 path=$2 conns=$3; shift 3
  local t0 out t1
  t0=$(ticks "$@")
  out=$(wrk_ -t1 -c"$conns" -d"${SECS}s" "https://$host.gw.test:$HTTPS$path")
  t1=$(ticks "$@")
  local rps mibs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  mibs=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) v*=1024; else if (v ~ /KB/) v/=1024; else if (v ~ /MB/) v+=0; print v}' <<<"$out")
  echo "$rps $mibs $((t1 - t0))"
}

ttfb() {  # host -> "p50 p99" in ms over 200 new connections
  local host=$1 cfg="$STATE/urls-$1"
  : >"$cfg"
  for _ in $(seq 200); do
    printf 'url = "https://%s.gw.test:%s/1k.bin"\noutput = "/dev/null"\n' "$host" "$HTTPS" >>"$cfg"
  done
  curl -s --cacert "$STATE/ca.pem" --resolve "$host.gw.test:$HTTPS:127.0.0.1" \
    -H 'Connection: close' -w '%{time_starttransfer}\n' -K "$cfg" |
    "$PY" -c 'import sys,statistics as s; v=sorted(float(x)*1000 for x in sys.stdin if x.strip()); print(f"{v[len(v)//2]:.2f} {v[int(len(v)*0.99)-1]:.2f}")'
}

echo "# tunnel bench: ${SECS}s per run, $(nproc) cores, gateway pid $GW, node $NODE, sshd $SSHD, ssh $SSHC"
printf '%-10s %-9s %12s %12s %12s %12s %10s %10s\n' path run req/s MiB/s "cpu µs/req" "cpu ms/MiB" "ttfb p50" "ttfb p99"
for path in direct ssh tunnel; do
  case $path in
    direct) host=direct; procs=("$GW") ;;  # no tunnel: the proxy's own baseline
    ssh) host=viassh; procs=("$GW" "$SSHD" "$SSHC") ;;
    tunnel) host=viatunnel; procs=("$GW" "$NODE") ;;
  esac
  read -r rps _ tk < <(measure "$host" /1k.bin 16 "${procs[@]}")
  us=$("$PY" -c "print(f'{$tk / $HZ * 1e6 / ($rps * $SECS):.1f}')")
  read -r _ mibs tk2 < <(measure "$host" /1m.bin 4 "${procs[@]}")
  ms=$("$PY" -c "print(f'{$tk2 / $HZ * 1e3 / ($mibs * $SECS):.2f}')")
  read -r p50 p99 < <(ttfb "$host")
  printf '%-10s %-9s %12s %12s %12s %12s %10s %10s\n' "$path" "" "$rps" "$mibs" "$us" "$ms" "$p50" "$p99"
done

# --- idle tunnels: gateway RSS before and with IDLE idle tunnels held open
rss0=$(rss_kib "$GW")
bg idle "$PY" bench/tunnel/idle.py "$HTTPS" "$STATE/ca.pem" "$STATE/idle-tokens" "$STATE/idle-ready" >/dev/null
for _ in $(seq 600); do [[ -s $STATE/idle-ready ]] && break; sleep 0.1; done
held=$(cat "$STATE/idle-ready" 2>/dev/null || echo 0)
rss1=$(rss_kib "$GW")
echo "gateway RSS: $((rss0 / 1024)) MiB -> $((rss1 / 1024)) MiB with $held idle tunnels:" \
  "$(( (rss1 - rss0) / 1024 )) MiB, $(( (rss1 - rss0) * 1000 / (held > 0 ? held : 1) / 1024 )) MiB per 1,000"
sshd_kib=0
for p in $(tree "$SSHD"); do [[ $p == "$SSHD" ]] || sshd_kib=$((sshd_kib + $(rss_kib "$p"))); done
echo "sshd: $((sshd_kib / 1024)) MiB of session processes for its 1 ssh -R tunnel" \
  "(x1,000 = $((sshd_kib * 1000 / 1024 / 1024)) GiB; not started: that many would swamp this box)"
