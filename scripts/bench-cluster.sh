#!/usr/bin/env bash
# heraldbench against a local multi-gateway cluster (issue #5's target:
# fan-out across >= 8 gateway processes holding >= 150,000 connections,
# aggregate deliveries/s >= 70 % of the raw writer's in the same run).
#
#   GATEWAYS=8 N=150000 scripts/bench-cluster.sh      (make bench-cluster)
#   GATEWAYS=3 N=3000 scripts/bench-cluster.sh        a small proof
#
# It brings up the engines (scripts/deps.sh up; the ones it had to start are
# stopped again at the end, the others left alone) and the cluster
# (GATEWAYS=n scripts/cluster.sh up: 1 api, 1 router, DISPATCHERS
# dispatchers, n gateways; refused if a cluster is already running), runs
#
#   heraldbench connect fanout raw
#
# against it (N devices, device i on gateway i mod n; memory per connection
# from the gateways' summed RSS, CPU over every herald process; the raw
# writer as n processes), writes bin/heraldbench-cluster.{json,md} (OUT
# overrides the base name) and stops the cluster.
#
# Knobs (environment): GATEWAYS (8), N (150000, at most 19000 x GATEWAYS),
# MODES ("connect fanout raw"; the raw sustained ceiling runs only when
# broadcast-sustained is among them),
# DISPATCHERS (2), REPEATS (5 fan-out and raw rounds), HB_WINDOW (5s, the
# CPU window of connect), PER_WORKER (15000 connections per driver process,
# at most 18000), OUT (bin/heraldbench-cluster), HERALDBENCH_FLAGS (extra
# heraldbench flags), KEEP_CLUSTER=1 (leave the cluster up), REST_PORT
# (8080), GRPC_PORT (9090), DEVICE_PORT (5222): the cluster's public ports
# (see scripts/cluster.sh), to move when an all-in-one holds them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

gateways=${GATEWAYS:-8}
n=${N:-150000}
dispatchers=${DISPATCHERS:-2}
repeats=${REPEATS:-5}
hb_window=${HB_WINDOW:-5s}
per_worker=${PER_WORKER:-15000}
out=${OUT:-bin/heraldbench-cluster}
modes=${MODES:-connect fanout raw}
rest_port=${REST_PORT:-8080}
grpc_port=${GRPC_PORT:-9090}
device_port=${DEVICE_PORT:-5222}
cluster_dir="$root/.cluster"

log() { printf 'bench-cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

case "$gateways$n$dispatchers$repeats$per_worker$rest_port$grpc_port$device_port" in
*[!0-9]*) die "GATEWAYS, N, DISPATCHERS, REPEATS, PER_WORKER and the ports must be numbers" ;;
esac
[ "$n" -ge 1 ] || die "N must be at least 1"
[ "$n" -le $((19000 * gateways)) ] || die "N=$n is above 19,000 per gateway process (GATEWAYS=$gateways): raise GATEWAYS"
files=$(ulimit -n)
if [ "$files" != unlimited ] && [ "$files" -lt 20000 ]; then
	log "warning: open-file limit is $files; a gateway holds about ${files} - 1,000 connections"
fi

# Refuse to run over someone's cluster: its GATEWAYS may differ, and
# stopping it at the end would surprise its owner.
for pidf in "$cluster_dir"/run/*.pid; do
	[ -e "$pidf" ] || continue
	if kill -0 "$(cat "$pidf")" 2>/dev/null; then
		die "a cluster is already running ($(basename "$pidf" .pid)); stop it with scripts/cluster.sh down first"
	fi
done

# The cluster's public ports must be free (an all-in-one `make run` holds
# 8080, 9090 and 5222).
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$rest_port" "$grpc_port" $(seq "$device_port" $((device_port + gateways - 1))); do
	if in_use "$port"; then
		die "127.0.0.1:$port is in use (an all-in-one herald?): pick free ports with REST_PORT, GRPC_PORT, DEVICE_PORT"
	fi
done

# Engines: remember which were down, start all, stop only those at the end.
started_engines=()
while read -r engine state _; do
	[ "$state" = down ] && started_engines+=("$engine")
done < <(scripts/deps.sh status 2>/dev/null || true)
cluster_started=0
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local rc=$?
	if [ "$cluster_started" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
		log "stopping the cluster"
		scripts/cluster.sh down >/dev/null || true
	fi
	if [ "${#started_engines[@]}" -gt 0 ]; then
		log "stopping the engines this script started: ${started_engines[*]}"
		scripts/deps.sh down "${started_engines[@]}" >/dev/null || true
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
log "engines: scripts/deps.sh up${started_engines:+ (starting ${started_engines[*]})}"
scripts/deps.sh up >&2
log "cluster: GATEWAYS=$gateways DISPATCHERS=$dispatchers scripts/cluster.sh up"
cluster_started=1
GATEWAYS=$gateways DISPATCHERS=$dispatchers REST_PORT=$rest_port GRPC_PORT=$grpc_port DEVICE_PORT=$device_port \
	scripts/cluster.sh up >&2
go build -o bin/heraldbench ./cmd/heraldbench

addrs=() gw_pids=() all_pids=()
for i in $(seq 1 "$gateways"); do
	addrs+=("127.0.0.1:$((device_port + i - 1))")
	gw_pids+=("$(cat "$cluster_dir/run/gateway-$i.pid")")
done
for pidf in "$cluster_dir"/run/*.pid; do
	all_pids+=("$(cat "$pidf")")
done
join() { local IFS=,; echo "$*"; }
token=$(cat "$cluster_dir/data/admin-token")
t1=$(date +%s)
log "cluster up in $((t1 - t0)) s; running heraldbench against $gateways gateways, N=$n"

raw_batch=()
case " $modes " in *" broadcast-sustained "*) ;; *) raw_batch=(-raw-batch 0) ;; esac
rc=0
# shellcheck disable=SC2086
bin/heraldbench -preset quick \
	-api "http://127.0.0.1:$rest_port" -grpc "127.0.0.1:$grpc_port" -admin-token "$token" \
	-gateway "$(join "${addrs[@]}")" \
	-herald-pid "$(join "${all_pids[@]}")" -gateway-pids "$(join "${gw_pids[@]}")" \
	-n "$n" -repeats "$repeats" -hb-window "$hb_window" -per-worker "$per_worker" \
	-out "$out" "${raw_batch[@]}" ${HERALDBENCH_FLAGS:-} $modes || rc=$?
log "heraldbench done in $(($(date +%s) - t1)) s (whole run $(($(date +%s) - t0)) s); results in $out.json and $out.md"
exit "$rc"
