#!/usr/bin/env bash
# Real engines for Herald's integration tests and local cluster, run as our
# own processes on loopback (no containers, no system services):
#
#   kafka      Apache Kafka (KRaft, broker+controller)  127.0.0.1:9092 (controller 9093)
#   cassandra  Apache Cassandra 5.0                     127.0.0.1:9042 (storage 7000)
#   redis      Debian's redis-server                    127.0.0.1:6379
#   etcd       Debian's etcd                            127.0.0.1:2379 (peer 2380)
#
# Usage: scripts/deps.sh up|down [--wipe]|status|clean [ENGINE...]
#
#   up      install what is missing (apt: etcd-server, redis-server, kcat,
#           etcd-client; Maven Central via mvn: the Kafka and Cassandra jars,
#           cached under .deps/cache), start every engine that is not
#           running and wait until all answer. Idempotent.
#   down    stop what `up` started (TERM, then KILL after a grace period);
#           keeps data. --wipe also removes the data.
#   status  one line per engine; exits 1 when any is down.
#   clean   down --wipe.
#   start, stop: the same as up, down (for one engine in outage tests:
#           `deps.sh stop kafka`, then `deps.sh start kafka`, which returns
#           once Kafka answers again).
# ENGINE is kafka, cassandra, redis or etcd; none means all four.
#
# Layout under .deps/ (HERALD_DEPS_DIR overrides): cache/ (jars), conf/
# (generated configs), data/<engine>/, logs/<engine>.log, run/<engine>.pid.
# Config templates: deploy/kafka/, deploy/cassandra-conf/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS_DIR=${HERALD_DEPS_DIR:-$ROOT/.deps}
CACHE=$DEPS_DIR/cache
CONF=$DEPS_DIR/conf
DATA=$DEPS_DIR/data
LOGS=$DEPS_DIR/logs
RUN=$DEPS_DIR/run

KAFKA_VERSION=${HERALD_KAFKA_VERSION:-4.1.1}
CASSANDRA_VERSION=${HERALD_CASSANDRA_VERSION:-5.0.6}

ENGINES=(redis etcd kafka cassandra)
declare -A ADDR=([kafka]=127.0.0.1:9092 [cassandra]=127.0.0.1:9042 [redis]=127.0.0.1:6379 [etcd]=127.0.0.1:2379)
# Seconds to wait for readiness after start, and for exit after TERM.
declare -A READY_TIMEOUT=([kafka]=180 [cassandra]=300 [redis]=30 [etcd]=60)
declare -A STOP_GRACE=([kafka]=30 [cassandra]=45 [redis]=10 [etcd]=15)
# The command each engine runs: a pid file whose process runs another
# executable is stale (the pid was reused). Symlinks are resolved (Debian's
# redis-server is a link to redis-check-rdb).
declare -A EXE=([kafka]=java [cassandra]=java [redis]=redis-server [etcd]=etcd)

log() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- install

# Debian packages, installed only when a command is missing.
install_packages() {
	local pkgs=()
	command -v etcd >/dev/null 2>&1 || pkgs+=(etcd-server)
	command -v etcdctl >/dev/null 2>&1 || pkgs+=(etcd-client)
	command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
	command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
	command -v kcat >/dev/null 2>&1 || pkgs+=(kcat)
	command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
	command -v curl >/dev/null 2>&1 || pkgs+=(curl)
	command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
	[ -n "$(java17)" ] || pkgs+=(openjdk-17-jdk-headless)
	[ "${#pkgs[@]}" -eq 0 ] && return
	log "installing Debian packages: ${pkgs[*]}"
	local sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	# Debian may try to start system services on install; we never use
	# them (policy-rc.d usually blocks that in containers anyway).
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

# The java binary of a JDK/JRE 17 (JAVA_HOME first), or nothing.
java17() {
	local j
	for j in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/java-17-openjdk-amd64/bin/java \
		/usr/lib/jvm/java-17-openjdk-arm64/bin/java /usr/lib/jvm/java-17-openjdk/bin/java \
		"$(command -v java 2>/dev/null || true)"; do
		if [ -z "$j" ] || [ ! -x "$j" ]; then continue; fi
		if "$j" -version 2>&1 | head -1 | grep -q '"17\.'; then
			echo "$j"
			return
		fi
	done
}

# fetch_jars NAME VERSION-PROPERTY VERSION POM: the runtime jars of the
# POM's dependencies in $CACHE/NAME-VERSION-HASH/libs; prints that dir.
# The hash covers the POM so editing it refetches.
fetch_jars() {
	local name=$1 prop=$2 version=$3 pom=$4 hash dir tmp start
	hash=$(sha256sum "$pom" | cut -c1-10)
	dir=$CACHE/$name-$version-$hash/libs
	if [ -f "$dir/.complete" ]; then
		echo "$dir"
		return
	fi
	start=$SECONDS
	log "fetching $name $version and its dependencies from Maven Central (once)" >&2
	tmp=$dir.tmp.$$
	rm -rf "$tmp"
	mkdir -p "$tmp"
	if ! mvn -B -q -f "$pom" "-D$prop=$version" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$tmp" >"$LOGS/mvn-$name.log" 2>&1; then
		tail -n 30 "$LOGS/mvn-$name.log" >&2
		rm -rf "$tmp"
		die "could not fetch $name $version with Maven (log: $LOGS/mvn-$name.log)"
	fi
	touch "$tmp/.complete"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	log "fetched $name $version: $(find "$dir" -name '*.jar' | wc -l) jars in $((SECONDS - start))s" >&2
	echo "$dir"
}

# ---------------------------------------------------------------- process helpers

pidfile() { echo "$RUN/$1.pid"; }

# Prints the pid of our running engine, or nothing (and removes a stale pid file).
our_pid() {
	local f pid exe want
	f=$(pidfile "$1")
	[ -f "$f" ] || return 0
	pid=$(cat "$f" 2>/dev/null || true)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
		want=$(readlink -f "$(command -v "${EXE[$1]}" 2>/dev/null || echo "${EXE[$1]}")")
		if [ "$(basename "${exe% (deleted)}")" = "$(basename "$want")" ]; then
			echo "$pid"
			return
		fi
	fi
	rm -f "$f"
}

# ready ENGINE: does the engine answer its own protocol?
ready() {
	case $1 in
	redis) [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ] ;;
	etcd) curl -fsS --max-time 2 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"' ;;
	kafka) # a broker is registered and every partition has a leader
		local md
		md=$(kcat -L -b "${ADDR[kafka]}" -m 3 2>/dev/null) &&
			grep -q ' 1 brokers:' <<<"$md" && ! grep -q 'leader -1' <<<"$md" ;;
	cassandra) python3 "$ROOT/scripts/deps/cql.py" --host "${ADDR[cassandra]}" --timeout 3 --ready >/dev/null 2>&1 ;;
	esac
}

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# launch ENGINE CMD...: start detached from our session (so `make`
# returning or Ctrl-C does not stop it), output to logs/ENGINE.out.
launch() {
	local name=$1 f
	shift
	# Logs append across restarts; keep one previous generation past 64 MiB.
	for f in "$LOGS/$name.log" "$LOGS/$name.out"; do
		if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((64 << 20)) ]; then
			mv -f "$f" "$f.1"
		fi
	done
	# 9>&-: the engine must not inherit (and so hold) the deps lock.
	setsid nohup "$@" >"$LOGS/$name.out" 2>&1 </dev/null 9>&- &
	echo $! >"$(pidfile "$name")"
}

# ---------------------------------------------------------------- engines

start_redis() {
	mkdir -p "$DATA/redis"
	launch redis redis-server --bind 127.0.0.1 --port 6379 --protected-mode yes \
		--dir "$DATA/redis" --save "" --appendonly no --daemonize no \
		--logfile "$LOGS/redis.log"
}

start_etcd() {
	mkdir -p "$DATA/etcd"
	chmod 700 "$DATA/etcd"
	launch etcd etcd --name herald-dev --data-dir "$DATA/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster herald-dev=http://127.0.0.1:2380 --initial-cluster-state new \
		--initial-cluster-token herald-dev \
		--auto-compaction-mode periodic --auto-compaction-retention 1h \
		--logger zap --log-outputs "$LOGS/etcd.log"
}

start_kafka() {
	local libs=$1 java=$2 id
	mkdir -p "$DATA/kafka" "$CONF/kafka"
	sed "s#@DATA_DIR@#$DATA/kafka#g" "$ROOT/deploy/kafka/server.properties" >"$CONF/kafka/server.properties"
	local jvm=(-Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.xml" -Dkafka.logs.dir="$LOGS"
		-Djava.awt.headless=true -cp "$libs/*")
	# One cluster id per data dir, generated once and kept.
	if [ ! -s "$DATA/kafka-cluster-id" ]; then
		"$java" "${jvm[@]}" kafka.tools.StorageTool random-uuid >"$DATA/kafka-cluster-id.tmp"
		mv "$DATA/kafka-cluster-id.tmp" "$DATA/kafka-cluster-id"
	fi
	id=$(cat "$DATA/kafka-cluster-id")
	if [ ! -f "$DATA/kafka/meta.properties" ]; then
		log "kafka: formatting storage (cluster id $id)"
		"$java" "${jvm[@]}" kafka.tools.StorageTool format --ignore-formatted \
			-t "$id" -c "$CONF/kafka/server.properties" >"$LOGS/kafka-format.log" 2>&1 ||
			{ cat "$LOGS/kafka-format.log" >&2; die "kafka: storage format failed"; }
	fi
	launch kafka "$java" -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
		-XX:+ExitOnOutOfMemoryError "${jvm[@]}" kafka.Kafka "$CONF/kafka/server.properties"
}

start_cassandra() {
	local libs=$1 java=$2 opts=()
	mkdir -p "$DATA/cassandra" "$CONF/cassandra"
	sed "s#@DATA_DIR@#$DATA/cassandra#g" "$ROOT/deploy/cassandra-conf/cassandra.yaml" >"$CONF/cassandra/cassandra.yaml"
	mapfile -t opts < <(grep -Ev '^[[:space:]]*(#|$)' "$ROOT/deploy/cassandra-conf/jvm17-server.options")
	launch cassandra "$java" "${opts[@]}" -XX:+ExitOnOutOfMemoryError \
		-Dcassandra.config="file://$CONF/cassandra/cassandra.yaml" \
		-Dcassandra.storagedir="$DATA/cassandra" -Dcassandra.logdir="$LOGS" \
		-Dlogback.configurationFile="$ROOT/deploy/cassandra-conf/logback.xml" \
		-cp "$libs/*" org.apache.cassandra.service.CassandraDaemon
}

log_tail() { # log_tail ENGINE: the end of the engine's logs, for a failure report
	local f
	for f in "$LOGS/$1.out" "$LOGS/$1.log"; do
		[ -s "$f" ] || continue
		echo "--- last lines of $f" >&2
		tail -n 40 "$f" >&2
	done
}

# ---------------------------------------------------------------- commands

# pick NAME...: sets want to the named engines (all when none), checked.
pick() {
	local e
	want=("$@")
	[ $# -gt 0 ] || want=("${ENGINES[@]}")
	for e in "${want[@]}"; do
		[ -n "${ADDR[$e]:-}" ] || die "unknown engine $e (want one of: ${ENGINES[*]})"
	done
}

cmd_up() {
	local start=$SECONDS want
	pick "$@"
	mkdir -p "$CACHE" "$CONF" "$DATA" "$LOGS" "$RUN"
	exec 9>"$RUN/lock"
	flock 9 # one `up`/`down` at a time (parallel make targets, two shells)

	local todo=() e pid
	for e in "${want[@]}"; do
		pid=$(our_pid "$e")
		if [ -n "$pid" ] && ready "$e"; then
			log "$e: up on ${ADDR[$e]} (pid $pid)"
		elif [ -n "$pid" ]; then
			todo+=("$e") # still starting: wait below
		elif ready "$e"; then
			log "$e: already answering on ${ADDR[$e]} (not started by this script); using it"
		elif port_open "${ADDR[$e]}"; then
			die "$e: ${ADDR[$e]} is taken by another process that does not answer as $e"
		else
			todo+=("$e")
		fi
	done
	[ "${#todo[@]}" -gt 0 ] || return 0

	install_packages
	local java
	java=$(java17)
	[ -n "$java" ] || die "no Java 17 found (set JAVA_HOME)"

	local kafka_libs="" cassandra_libs="" started=()
	for e in "${todo[@]}"; do
		[ -z "$(our_pid "$e")" ] || continue
		case $e in
		kafka) kafka_libs=$(fetch_jars kafka kafka.version "$KAFKA_VERSION" "$ROOT/deploy/kafka/pom.xml") || exit 1 ;;
		cassandra) cassandra_libs=$(fetch_jars cassandra cassandra.version "$CASSANDRA_VERSION" "$ROOT/deploy/cassandra-conf/pom.xml") || exit 1 ;;
		esac
	done
	for e in "${todo[@]}"; do
		[ -z "$(our_pid "$e")" ] || continue
		log "$e: starting on ${ADDR[$e]}"
		case $e in
		redis) start_redis ;;
		etcd) start_etcd ;;
		kafka) start_kafka "$kafka_libs" "$java" ;;
		cassandra) start_cassandra "$cassandra_libs" "$java" ;;
		esac
		started+=("$e")
	done

	# Wait for all of them together; report progress every 15 s.
	local -A since=()
	local pending=("${todo[@]}") next=() t0=$SECONDS reported=$SECONDS
	for e in "${todo[@]}"; do since[$e]=$SECONDS; done
	while [ "${#pending[@]}" -gt 0 ]; do
		next=()
		for e in "${pending[@]}"; do
			if ready "$e"; then
				log "$e: ready on ${ADDR[$e]} ($((SECONDS - since[$e]))s)"
			elif [ -z "$(our_pid "$e")" ]; then
				log_tail "$e"
				die "$e: exited before it was ready (logs: $LOGS/$e.*)"
			elif [ $((SECONDS - since[$e])) -ge "${READY_TIMEOUT[$e]}" ]; then
				log_tail "$e"
				die "$e: not ready after ${READY_TIMEOUT[$e]}s (still running, pid $(our_pid "$e"); logs: $LOGS/$e.*)"
			else
				next+=("$e")
			fi
		done
		pending=("${next[@]+"${next[@]}"}")
		if [ "${#pending[@]}" -gt 0 ]; then
			if [ $((SECONDS - reported)) -ge 15 ]; then
				log "waiting for ${pending[*]} ($((SECONDS - t0))s)"
				reported=$SECONDS
			fi
			sleep 1
		fi
	done
	log "up: ${want[*]} ($((SECONDS - start))s; started ${started[*]:-none}; logs in $LOGS)"
}

cmd_down() {
	local wipe=0 e pid want
	if [ "${1:-}" = --wipe ]; then
		wipe=1
		shift
	fi
	pick "$@"
	mkdir -p "$RUN"
	exec 9>"$RUN/lock"
	flock 9
	local -A pids=()
	for e in "${want[@]}"; do
		pid=$(our_pid "$e")
		[ -n "$pid" ] || continue
		log "$e: stopping (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		pids[$e]=$pid
	done
	local t0=$SECONDS
	for e in "${!pids[@]}"; do
		pid=${pids[$e]}
		while kill -0 "$pid" 2>/dev/null; do
			if [ $((SECONDS - t0)) -ge "${STOP_GRACE[$e]}" ]; then
				log "$e: still running after ${STOP_GRACE[$e]}s, killing"
				kill -KILL "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.2
		done
		rm -f "$(pidfile "$e")"
		log "$e: stopped"
	done
	[ "${#pids[@]}" -gt 0 ] || log "${want[*]}: nothing of ours was running"
	if [ "$wipe" -eq 1 ]; then
		for e in "${want[@]}"; do
			log "$e: removing data"
			rm -rf "${DATA:?}/$e" "${CONF:?}/$e"
			[ "$e" != kafka ] || rm -f "$DATA/kafka-cluster-id"
		done
	fi
}

cmd_status() {
	local e pid state rc=0 how
	for e in "${ENGINES[@]}"; do
		pid=$(our_pid "$e")
		if ready "$e"; then
			state=up
			how=${pid:+pid $pid}
			how=${how:-not ours}
		elif [ -n "$pid" ]; then
			state=starting
			how="pid $pid"
			rc=1
		else
			state=down
			how=""
			rc=1
		fi
		printf '%-10s %-9s %-15s %s\n' "$e" "$state" "${ADDR[$e]}" "$how"
	done
	return "$rc"
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case $cmd in
up | start) cmd_up "$@" ;;
down | stop) cmd_down "$@" ;;
status) cmd_status ;;
clean) cmd_down --wipe "$@" ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
