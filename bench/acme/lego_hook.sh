#!/bin/sh
# lego "exec" DNS provider hook:  <hook> present|cleanup <fqdn.> <value>
# Forwards to the bench's small TXT API, which writes into our store (dnsd serves it).
set -e
case "$1" in
  present) curl -sf -X POST -d "{\"host\":\"$2\",\"value\":\"$3\"}" "$TXT_API/set-txt" ;;
  cleanup) curl -sf -X POST -d "{\"host\":\"$2\"}" "$TXT_API/clear-txt" ;;
  *) exit 0 ;;
esac
