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
# usage: [TTFB_ROUNDS=5] bench/tunnel/run.sh [SECS=5] [IDLE=1000]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
IDLE=${2:-1000}
PY=${PYTHON:-.venv/bin/python}
for t in nginx /usr/sbin/sshd ssh ssh-keygen wrk curl unshare; do
  command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 2; }
done
. bench/tunnel/lib.sh

start_backend

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
prepare_gateway "$SSH_R" "$IDLE"
start_gateway 1

ttfb() {  # host -> curl's time_starttransfer (s), one line per new connection, 200 of them
  # after one warm-up connection whose time is dropped: curl's first one also loads its CA
  # file and TLS library (3-5 ms on every path alike), which is curl's start, not the path's
  local host=$1 cfg="$STATE/urls-$1"
  : >"$cfg"
  for _ in $(seq 201); do
    printf 'url = "https://%s.gw.test:%s/1k.bin"\noutput = "/dev/null"\n' "$host" "$HTTPS" >>"$cfg"
  done
  curl -s --cacert "$STATE/ca.pem" --resolve "$host.gw.test:$HTTPS:127.0.0.1" \
    -H 'Connection: close' -w '%{time_starttransfer}\n' -K "$cfg" | tail -n +2
}
pct() {  # file of seconds -> "p50 p99" in ms
  "$PY" -c 'import sys; v=sorted(float(x)*1000 for x in open(sys.argv[1]) if x.strip()); print(f"{v[len(v)//2]:.2f} {v[int(len(v)*0.99)-1]:.2f}")' "$1"
}
host_of() { case $1 in direct) echo direct ;; ssh) echo viassh ;; tunnel) echo viatunnel ;; esac; }

echo "# tunnel bench: ${SECS}s per run, $(nproc) cores, gateway pid $GW, node $NODE, sshd $SSHD, ssh $SSHC"
# First-byte times are taken in TTFB_ROUNDS rounds of 200 new connections per path, the
# paths alternated within each round, so a change of the box's load falls on all three alike
# and each p99 rests on TTFB_ROUNDS * 200 samples, not on the 2nd-worst of 200.
TTFB_ROUNDS=${TTFB_ROUNDS:-5}
for path in direct ssh tunnel; do : >"$STATE/ttfb-$path"; done
for _ in $(seq "$TTFB_ROUNDS"); do
  for path in direct ssh tunnel; do ttfb "$(host_of $path)" >>"$STATE/ttfb-$path"; done
done

printf '%-10s %-9s %12s %12s %12s %12s %10s %10s\n' path run req/s MiB/s "cpu µs/req" "cpu ms/MiB" "ttfb p50" "ttfb p99"
for path in direct ssh tunnel; do
  host=$(host_of $path)
  case $path in
    direct) procs=("$GW") ;;  # no tunnel: the proxy's own baseline
    ssh) procs=("$GW" "$SSHD" "$SSHC") ;;
    tunnel) procs=("$GW" "$NODE") ;;
  esac
  read -r rps _ tk < <(measure "$host" /1k.bin 16 "${procs[@]}")
  us=$("$PY" -c "print(f'{$tk / $HZ * 1e6 / ($rps * $SECS):.1f}')")
  read -r _ mibs tk2 < <(measure "$host" /1m.bin 4 "${procs[@]}")
  ms=$("$PY" -c "print(f'{$tk2 / $HZ * 1e3 / ($mibs * $SECS):.2f}')")
  read -r p50 p99 < <(pct "$STATE/ttfb-$path")
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
