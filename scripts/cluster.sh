#!/usr/bin/env bash
# Starts (up), stops (down) or lists (status) a local Herald cluster: 1 api,
# 1 router, DISPATCHERS dispatchers (default 2) and GATEWAYS gateways
# (default 2) as separate `herald -target=...` processes on the real engines
# of `make deps-up` (Kafka, Cassandra, Redis, etcd). The api listens on 8080
# (REST) and 9090 (gRPC) like the all-in-one, so heraldctl needs no flags.
# Gateway i (1-based) takes devices on 5222+i-1 (5222, 5223, ...), its
# gateway gRPC on 9191+i-1 and its ops endpoint on 9300+i; ops endpoints of
# the others: api 9100, router 9101, dispatcher j 9400+j. Devices can also ask the
# endpoint list (GET /v1/endpoints). Each gateway holds ~19,000 devices
# (20,000 open files per process). Logs: .cluster/logs/<node>.log; pids:
# .cluster/run/<node>.pid (with <node>.ops, its ops port).
#
#   GATEWAYS=8 scripts/cluster.sh up   8 gateways (5222-5229)
#   scripts/cluster.sh down            stops every node `up` started (pid files)
#   scripts/cluster.sh status          one line per started node
# ROUTER=etcd scripts/cluster.sh up  puts the routing table in etcd instead of Redis.
# REST_PORT (8080), GRPC_PORT (9090) and DEVICE_PORT (5222, gateway i takes
# DEVICE_PORT+i-1) move the public ports, e.g. when an all-in-one holds them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.cluster"
bin="$root/bin/herald"
router_backend=${ROUTER:-redis}
gateways=${GATEWAYS:-2}
dispatchers=${DISPATCHERS:-2}
rest_port=${REST_PORT:-8080}
grpc_port=${GRPC_PORT:-9090}
device_port=${DEVICE_PORT:-5222}
case "$gateways$dispatchers$rest_port$grpc_port$device_port" in *[!0-9]*) echo "cluster: GATEWAYS, DISPATCHERS and the ports must be numbers" >&2; exit 2 ;; esac
[ "$gateways" -ge 1 ] && [ "$gateways" -le 90 ] || { echo "cluster: GATEWAYS must be in [1, 90]" >&2; exit 2; }
[ "$dispatchers" -ge 1 ] && [ "$dispatchers" -le 90 ] || { echo "cluster: DISPATCHERS must be in [1, 90]" >&2; exit 2; }

common_env() {
	cat <<ENV
HERALD_STORE_BACKEND=cassandra
HERALD_STORE_CASSANDRA_HOSTS=127.0.0.1:9042
HERALD_STORE_CASSANDRA_KEYSPACE=herald
HERALD_QUEUE_BACKEND=kafka
HERALD_QUEUE_KAFKA_BROKERS=127.0.0.1:9092
HERALD_DISCOVERY_ETCD_ENDPOINTS=127.0.0.1:2379
HERALD_ROUTER_BACKEND=$router_backend
HERALD_ROUTER_REDIS_ADDR=127.0.0.1:6379
HERALD_ROUTER_ETCD_ENDPOINTS=127.0.0.1:2379
HERALD_ETCD_EMBEDDED=false
ENV
}

# node target ops-port extra-env...
nodes() {
	echo "api-1 api 9100 HERALD_API_HTTP_ADDR=127.0.0.1:$rest_port HERALD_API_GRPC_ADDR=127.0.0.1:$grpc_port"
	echo "router-1 router 9101"
	for j in $(seq 1 "$dispatchers"); do
		echo "dispatcher-$j dispatcher $((9400 + j))"
	done
	for i in $(seq 1 "$gateways"); do
		echo "gateway-$i gateway $((9300 + i)) HERALD_GATEWAY_ADDR=127.0.0.1:$((device_port + i - 1)) HERALD_DISCOVERY_GATEWAY_GRPC_ADDR=127.0.0.1:$((9191 + i - 1))"
	done
}

admin_token() {
	if [ -n "${HERALD_ADMIN_TOKEN:-}" ]; then echo "$HERALD_ADMIN_TOKEN"; return; fi
	mkdir -p "$dir/data"
	[ -s "$dir/data/admin-token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/data/admin-token"
	cat "$dir/data/admin-token"
}

run_env() { # node target ops extra... -> env assignments
	local node=$1 target=$2 ops=$3
	shift 3
	common_env
	echo "HERALD_TARGET=$target"
	echo "HERALD_NODE_ID=$node"
	echo "HERALD_OPS_ADDR=127.0.0.1:$ops"
	echo "HERALD_DATA_DIR=$dir/data/$node"
	echo "HERALD_ADMIN_TOKEN=$token"
	printf '%s\n' "$@"
}

up() {
	"$root/scripts/deps.sh" up
	make -C "$root" build >/dev/null
	mkdir -p "$dir/logs" "$dir/run"
	token=$(admin_token)
	echo "cluster: migrating (keyspace, tables, topics)"
	env $(run_env migrate all 9299) "$bin" migrate >"$dir/logs/migrate.log" 2>&1 ||
		{ tail -n 20 "$dir/logs/migrate.log"; exit 1; }
	while read -r node target ops extra; do
		pidf="$dir/run/$node.pid"
		if [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
			echo "cluster: $node already running"
			continue
		fi
		# shellcheck disable=SC2086
		env $(run_env "$node" "$target" "$ops" $extra) setsid nohup "$bin" >"$dir/logs/$node.log" 2>&1 </dev/null &
		echo $! >"$pidf"
		echo "$ops" >"$dir/run/$node.ops"
	done < <(nodes)
	while read -r node target ops extra; do
		for _ in $(seq 1 300); do
			if curl -fsS "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1; then break; fi
			if ! kill -0 "$(cat "$dir/run/$node.pid")" 2>/dev/null; then
				echo "cluster: $node exited; log tail:" >&2
				tail -n 20 "$dir/logs/$node.log" >&2
				exit 1
			fi
			sleep 0.2
		done
		curl -fsS "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 || { echo "cluster: $node not ready" >&2; tail -n 20 "$dir/logs/$node.log" >&2; exit 1; }
		echo "cluster: $node ($target) ready, ops 127.0.0.1:$ops"
	done < <(nodes)
	echo "cluster: up. REST http://127.0.0.1:$rest_port  gRPC 127.0.0.1:$grpc_port  devices 127.0.0.1:$device_port-$((device_port + gateways - 1)) ($gateways gateways)"
	echo "cluster: admin token in $dir/data/admin-token (HERALD_ADMIN_TOKEN=\$(cat $dir/data/admin-token) heraldctl app create ...)"
}

down() {
	[ -d "$dir/run" ] || { echo "cluster: not running"; return; }
	for pidf in "$dir"/run/*.pid; do
		[ -e "$pidf" ] || continue
		pid=$(cat "$pidf")
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -KILL "$pid" 2>/dev/null || true
		fi
		rm -f "$pidf" "${pidf%.pid}.ops"
		echo "cluster: stopped $(basename "$pidf" .pid)"
	done
}

# status lists the nodes `up` started (pid files), whatever GATEWAYS is now;
# with none started, the nodes `up` would start.
status() {
	local pidf node ops s
	for pidf in "$dir"/run/*.pid; do
		[ -e "$pidf" ] || continue
		node=$(basename "$pidf" .pid)
		ops=$(cat "${pidf%.pid}.ops" 2>/dev/null || true)
		if [ -n "$ops" ] && curl -fsS "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1; then
			s=ready
		elif kill -0 "$(cat "$pidf")" 2>/dev/null; then
			s="running, not ready"
		else
			s=down
		fi
		printf '%-14s pid %-8s ops %-6s %s\n' "$node" "$(cat "$pidf")" "${ops:-?}" "$s"
	done | sort -V
	if ! compgen -G "$dir/run/*.pid" >/dev/null; then
		while read -r node target ops extra; do
			printf '%-14s %-11s down\n' "$node" "$target"
		done < <(nodes)
	fi
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
