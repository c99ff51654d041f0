#!/usr/bin/env bash
# Looks at a running Herald cluster (`make cluster-up`) from the outside,
# through the engines' own tools and none of Herald's code:
#
#   Kafka      kcat: the topics, the last records of herald.push (values
#              decoded by protoc against proto/herald/internal/v1/envelope.proto)
#              and of each herald.upstream.* topic (JSON values)
#   Redis      redis-cli: the route keys herald:route:* with value and TTL
#   etcd       etcdctl: the gateway registrations under /herald/gateways/
#   Cassandra  the DataStax Java driver shipped in Cassandra's jars
#              (scripts/deps/CqlQuery.java): rows of herald.inbox with TTL
#
# Usage: scripts/blackbox.sh [-n N]    N records/keys/rows per view (default 10)
# Exits 1, saying which, when an engine cannot be reached or a view fails.
# Addresses: HERALD_TEST_KAFKA, HERALD_TEST_REDIS, HERALD_TEST_ETCD,
# HERALD_TEST_CASSANDRA (as in pkg/enginetest), defaults as scripts/deps.sh.
# Names (defaults as the cluster's config): BLACKBOX_TOPIC_PREFIX=herald.,
# BLACKBOX_REDIS_PREFIX=herald:, BLACKBOX_ETCD_PREFIX=/herald/gateways/,
# BLACKBOX_KEYSPACE=herald.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps_dir=${HERALD_DEPS_DIR:-$root/.deps}
kafka=${HERALD_TEST_KAFKA:-127.0.0.1:9092}
redis=${HERALD_TEST_REDIS:-127.0.0.1:6379}
etcd=${HERALD_TEST_ETCD:-127.0.0.1:2379}
cassandra=${HERALD_TEST_CASSANDRA:-127.0.0.1:9042}
kafka=${kafka%%,*} etcd=${etcd%%,*} cassandra=${cassandra%%,*}
topic_prefix=${BLACKBOX_TOPIC_PREFIX:-herald.}
redis_prefix=${BLACKBOX_REDIS_PREFIX:-herald:}
etcd_prefix=${BLACKBOX_ETCD_PREFIX:-/herald/gateways/}
keyspace=${BLACKBOX_KEYSPACE:-herald}
push_topic=${topic_prefix}push
n=10
while [ $# -gt 0 ]; do
	case $1 in
	-n) n=${2:?-n needs a number}; shift 2 ;;
	*) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
case $n in '' | *[!0-9]*) echo "blackbox: -n wants a number" >&2; exit 2 ;; esac

failed=()
heading() { printf '\n=== %s\n' "$*"; }
fail() { # fail VIEW MESSAGE
	echo "blackbox: FAILED: $1: $2" >&2
	failed+=("$1")
}
need() {
	command -v "$1" >/dev/null 2>&1 || { echo "blackbox: $1 not found (install $2, or run scripts/deps.sh up)" >&2; exit 1; }
}
need kcat kcat
need redis-cli redis-tools
need etcdctl etcd-client
need python3 python3
need java openjdk-17-jre-headless

# ---------------------------------------------------------------- Kafka

# kafka_records TOPIC DECODER: the last n records of TOPIC across its
# partitions, oldest first, each as a header line then the decoded value.
# kcat frames each record as "REC partition offset timestamp keylen vallen\n"
# + key + value + "\n"; the Python reader cuts on those lengths, so binary
# values are safe, and keeps the n newest by timestamp.
kafka_records() {
	local topic=$1 decoder=$2
	kcat -C -b "$kafka" -t "$topic" -o "-$n" -e -q -f 'REC %p %o %T %K %S\n%k%s\n' 2>&1 |
		python3 -c '
import subprocess, sys
n, decoder, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = sys.stdin.buffer.read()
recs, pos = [], 0
while pos < len(data):
    nl = data.find(b"\n", pos)
    head = data[pos:nl].decode(errors="replace")
    parts = head.split()
    if nl < 0 or len(parts) != 6 or parts[0] != "REC":
        sys.stderr.write("kcat: " + data[pos:].decode(errors="replace"))
        sys.exit(1)
    p, o, ts, kl, vl = (int(x) for x in parts[1:])
    kl, vl = max(kl, 0), max(vl, 0)
    key = data[nl + 1:nl + 1 + kl]
    val = data[nl + 1 + kl:nl + 1 + kl + vl]
    pos = nl + 1 + kl + vl + 1
    recs.append((ts, p, o, key, val))
recs.sort()
recs = recs[-n:] if n else []
if not recs:
    print("(no records)")
for ts, p, o, key, val in recs:
    print("partition %d offset %d ts %d key %s (%d bytes)" % (p, o, ts, key.decode(errors="replace"), len(val)))
    if decoder == "envelope":
        out = subprocess.run(["protoc", "--decode=herald.internal.v1.Envelope", "-I", root + "/proto",
                              "herald/internal/v1/envelope.proto"], input=val, capture_output=True)
        text = out.stdout.decode(errors="replace") if out.returncode == 0 else "(protoc: %s)\n%s\n" % (
            out.stderr.decode(errors="replace").strip(), val.hex())
    else:
        text = val.decode(errors="replace") + "\n"
    for line in text.rstrip("\n").split("\n"):
        print("    " + line)
' "$n" "$decoder" "$root"
}

heading "Kafka $kafka: topics (kcat -L)"
if meta=$(kcat -L -b "$kafka" -m 5 2>&1); then
	printf '%s\n' "$meta" | sed -n 's/^ *topic "\([^"]*\)" with \([0-9]*\) partitions:.*/\1 (\2 partitions)/p' | sort
	topics=$(printf '%s\n' "$meta" | sed -n 's/^ *topic "\([^"]*\)".*/\1/p' | sort)
	heading "Kafka: last $n records of $push_topic (values: protoc --decode=herald.internal.v1.Envelope)"
	if ! grep -qxF "$push_topic" <<<"$topics"; then
		fail "kafka $push_topic" "topic $push_topic does not exist (run make cluster-up)"
	elif command -v protoc >/dev/null 2>&1; then
		kafka_records "$push_topic" envelope || fail "kafka $push_topic" "kcat could not read the topic"
	else
		echo "(protoc not installed: values shown as raw text)"
		kafka_records "$push_topic" raw || fail "kafka $push_topic" "kcat could not read the topic"
	fi
	up=$(awk -v p="${topic_prefix}upstream." 'index($0, p) == 1' <<<"$topics")
	if [ -z "$up" ]; then
		heading "Kafka: ${topic_prefix}upstream.* topics"
		echo "(none yet: devices have sent no upstream message)"
	fi
	for t in $up; do
		heading "Kafka: last $n records of $t (JSON values)"
		kafka_records "$t" raw || fail "kafka $t" "kcat could not read the topic"
	done
else
	printf '%s\n' "$meta" | tail -n 3 >&2
	fail "kafka" "cannot reach Kafka at $kafka"
fi

# ---------------------------------------------------------------- Redis

heading "Redis $redis: route keys ${redis_prefix}route:* (first $n; value \"<conn id> <node>\", TTL)"
rhost=${redis%:*} rport=${redis##*:}
if pong=$(redis-cli -h "$rhost" -p "$rport" ping 2>&1) && [ "$pong" = PONG ]; then
	total=0
	shown=0
	while IFS= read -r key; do
		[ -n "$key" ] || continue
		total=$((total + 1))
		[ "$shown" -lt "$n" ] || continue
		shown=$((shown + 1))
		val=$(redis-cli -h "$rhost" -p "$rport" --raw get "$key")
		ttl=$(redis-cli -h "$rhost" -p "$rport" pttl "$key")
		printf '%s = %s (ttl %ss)\n' "$key" "$val" "$((ttl / 1000))"
	done < <(redis-cli -h "$rhost" -p "$rport" --scan --pattern "${redis_prefix}route:*")
	echo "($total route keys)"
else
	echo "$pong" >&2
	fail "redis" "cannot reach Redis at $redis"
fi

# ---------------------------------------------------------------- etcd

heading "etcd $etcd: gateway registrations under $etcd_prefix (etcdctl)"
if out=$(ETCDCTL_API=3 etcdctl --endpoints "$etcd" --dial-timeout 3s --command-timeout 5s \
	get --prefix "$etcd_prefix" 2>&1); then
	if [ -z "$out" ]; then
		echo "(no gateway registered)"
	else
		# Key and value lines alternate.
		printf '%s\n' "$out" | paste - - | awk -F'\t' '{ print $1; print "    " $2 }'
		leases=$(ETCDCTL_API=3 etcdctl --endpoints "$etcd" --dial-timeout 3s get --prefix "$etcd_prefix" -w fields 2>/dev/null |
			awk -F' : ' '/"Lease"/ { print $2 }' | sort -u)
		for l in $leases; do
			[ "$l" != 0 ] || continue
			ETCDCTL_API=3 etcdctl --endpoints "$etcd" --dial-timeout 3s lease timetolive "$(printf '%x' "$l")" 2>/dev/null
		done
	fi
else
	printf '%s\n' "$out" | tail -n 3 >&2
	fail "etcd" "cannot reach etcd at $etcd"
fi

# ---------------------------------------------------------------- Cassandra

heading "Cassandra $cassandra: $keyspace.inbox with TTL (first $n rows; DataStax Java driver from Cassandra's jars)"
libs=""
for d in "$deps_dir"/cache/cassandra-*/libs; do
	if [ -f "$d/.complete" ]; then libs=$d; fi
done
if [ -z "$libs" ]; then
	fail "cassandra" "no Cassandra jars under $deps_dir/cache (run scripts/deps.sh up)"
elif ! (exec 3<>"/dev/tcp/${cassandra%:*}/${cassandra##*:}") 2>/dev/null; then
	fail "cassandra" "cannot reach Cassandra at $cassandra"
elif ! java -Dlogback.configurationFile="$root/deploy/cassandra-conf/logback-tools.xml" -cp "$libs/*" \
	"$root/scripts/deps/CqlQuery.java" -h "$cassandra" \
	"SELECT app_id, device_id, message_id, collapse_id, expires_at, TTL(body) AS ttl_s, body FROM $keyspace.inbox LIMIT $n" 2>&1; then
	fail "cassandra" "query of $keyspace.inbox failed"
fi

echo
if [ "${#failed[@]}" -gt 0 ]; then
	echo "blackbox: ${#failed[@]} view(s) failed: ${failed[*]}" >&2
	exit 1
fi
echo "blackbox: all views shown"
