#!/usr/bin/env bash
# certd vs lego (exec DNS provider) against one local Pebble validating through our dnsd.
# usage: bench/acme/run.sh [-n 50] [-m 200] [-p 20] [--concurrency 4] [--skip-lego]
#        bench/acme/run.sh --claims [-m 200] [--concurrency 4]   (claims proved via CNAME at Knot)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}   # scripts/setup --test makes it
command -v pebble >/dev/null || { echo "needs the pebble Debian package" >&2; exit 1; }
exec timeout 1200 "$PY" bench/acme/bench.py "$@"
