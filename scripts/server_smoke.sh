#!/usr/bin/env bash
# Start rocmforge-server on a free loopback port with MODEL, wait until it is
# ready, run the given command with ROCMFORGE_URL set, then stop the server
# (SIGTERM: it drains and exits 0, which is checked too).
# usage: scripts/server_smoke.sh SERVER_BIN MODEL command...
set -euo pipefail
bin=$1 model=$2; shift 2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
"$bin" --model "$model" --backend cpu --port "$port" --threads 2 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
ROCMFORGE_URL="http://127.0.0.1:$port" "$@"
kill -TERM $pid
wait $pid || { echo "the server exited with $? after SIGTERM"; cat "$log"; exit 1; }
