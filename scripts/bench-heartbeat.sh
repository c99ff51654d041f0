#!/usr/bin/env bash
# bench-heartbeat.sh: the heartbeat CPU of N idle sessions, three ways over
# the same window: /proc utime+stime (what heraldbench reports), a Go CPU
# profile (pprof) and, when perf is installed, perf's task-clock and a
# kernel+user profile. See docs/benchmarks.md, "Heartbeat CPU".
#
#   scripts/bench-heartbeat.sh [N] [window-seconds]     (defaults 19000, 30)
#
# Needs bin/herald and bin/heraldbench (make build; go build -o
# bin/heraldbench ./cmd/heraldbench). Writes into $OUT (default a temp dir).
set -euo pipefail

N=${1:-19000}
WINDOW=${2:-30}
OUT=${OUT:-$(mktemp -d /tmp/bench-heartbeat.XXXXXX)}
OPS=127.0.0.1:${OPS_PORT:-19300}
API=127.0.0.1:${API_PORT:-18080}
GRPC=127.0.0.1:${GRPC_PORT:-19090}
GW=127.0.0.1:${GW_PORT:-15222}
TOKEN=bench-heartbeat-token

mkdir -p "$OUT/data"
HERALD_ADMIN_TOKEN=$TOKEN HERALD_ETCD_CLIENT_ADDR=127.0.0.1:0 HERALD_ETCD_PEER_ADDR=127.0.0.1:0 \
	HERALD_GATEWAY_HEARTBEAT_MIN=30s \
	bin/herald -data-dir "$OUT/data" -ops-addr "$OPS" -api-http-addr "$API" -api-grpc-addr "$GRPC" \
	-gateway-addr "$GW" -log-level warn >"$OUT/herald.log" 2>&1 &
HERALD=$!
trap 'kill $HERALD 2>/dev/null || true; wait $HERALD 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
	grep -q "herald is ready" "$OUT/herald.log" && break
	sleep 0.5
done
grep -q "herald is ready" "$OUT/herald.log" || { echo "herald did not start:"; cat "$OUT/herald.log"; exit 1; }

bin/heraldbench -api "http://$API" -grpc "$GRPC" -gateway "$GW" -admin-token "$TOKEN" -herald-pid "$HERALD" \
	-n "$N" -hb-window "${WINDOW}s" -out "$OUT/heraldbench" connect >"$OUT/heraldbench.stdout" 2>"$OUT/heraldbench.stderr" &
BENCH=$!

# The loaded window starts when heraldbench says so; profile most of it.
until grep -q "sessions pinging every" "$OUT/heraldbench.stderr" 2>/dev/null; do
	kill -0 $BENCH 2>/dev/null || { cat "$OUT/heraldbench.stderr"; exit 1; }
	sleep 0.2
done
PROF=$((WINDOW - 4))
ticks() { awk '{i=index($0,")"); split(substr($0,i+2),f," "); print f[12]+f[13]}' /proc/$HERALD/stat; }
t0=$(ticks)
go tool pprof -proto -output "$OUT/herald.pprof" "http://$OPS/debug/pprof/profile?seconds=$PROF" >"$OUT/pprof.log" 2>&1 &
PPROF=$!
if command -v perf >/dev/null; then
	perf stat -e task-clock,context-switches,cpu-migrations -p $HERALD -- sleep "$PROF" 2>"$OUT/perf-stat.txt" &
	perf record -F 999 -g -o "$OUT/perf.data" -p $HERALD -- sleep "$PROF" >/dev/null 2>&1 || true
fi
wait $PPROF || true
t1=$(ticks)
wait $BENCH || true

echo "window: ${PROF} s"
echo "/proc utime+stime: $(awk -v a="$t0" -v b="$t1" -v w="$PROF" 'BEGIN{printf "%.2f s = %.2f %% of a core", (b-a)/100, (b-a)/w}')"
echo "pprof: $(go tool pprof -top "$OUT/herald.pprof" 2>/dev/null | grep -m1 'Total samples')"
[ -f "$OUT/perf-stat.txt" ] && grep -E "task-clock|context-switches|migrations" "$OUT/perf-stat.txt"
cat "$OUT/heraldbench.stdout"
echo "outputs in $OUT"
