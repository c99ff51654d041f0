#!/usr/bin/env bash
# Starts (up), stops (down) or lists (status) a local Herald cluster: 1 api,
# 1 router, 2 dispatchers and 2 gateways as separate `herald -target=...`
# processes on the real engines of `make deps-up` (Kafka, Cassandra, Redis,
# etcd). The api listens on 8080 (REST) and 9090 (gRPC) like the all-in-one,
# so heraldctl needs no flags; devices connect to 5222 or 5223, or ask the
# endpoint list (GET /v1/endpoints). Logs: .cluster/logs/<node>.log.
# ROUTER=etcd scripts/cluster.sh up  puts the routing table in etcd instead of Redis.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.cluster"
bin="$root/bin/herald"
router_backend=${ROUTER:-redis}

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
	cat <<NODES
api-1 api 9100 HERALD_API_HTTP_ADDR=127.0.0.1:8080 HERALD_API_GRPC_ADDR=127.0.0.1:9090
router-1 router 9101
dispatcher-1 dispatcher 9102
dispatcher-2 dispatcher 9103
gateway-1 gateway 9104 HERALD_GATEWAY_ADDR=127.0.0.1:5222 HERALD_DISCOVERY_GATEWAY_GRPC_ADDR=127.0.0.1:9191
gateway-2 gateway 9105 HERALD_GATEWAY_ADDR=127.0.0.1:5223 HERALD_DISCOVERY_GATEWAY_GRPC_ADDR=127.0.0.1:9192
NODES
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
	env $(run_env migrate all 9199) "$bin" migrate >"$dir/logs/migrate.log" 2>&1 ||
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
	echo "cluster: up. REST http://127.0.0.1:8080  gRPC 127.0.0.1:9090  devices 127.0.0.1:5222 127.0.0.1:5223"
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
		rm -f "$pidf"
		echo "cluster: stopped $(basename "$pidf" .pid)"
	done
}

status() {
	while read -r node target ops extra; do
		if curl -fsS "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1; then s=ready; else s=down; fi
		printf '%-14s %-11s %s\n' "$node" "$target" "$s"
	done < <(nodes)
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
