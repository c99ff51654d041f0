#!/usr/bin/env bash
# Runs the README quickstart as a person would, in two "terminals": `make run`
# in the background, then heraldctl app create / device register / listen /
# send / status, and the offline part (send while listen is stopped, then
# listen again). Fails if any step's output is not what the README promises.
# Uses the default ports (8080, 9090, 5222, 9100, 2379, 2380) like the README.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
herald_pid=""
cleanup() {
  [ -n "$herald_pid" ] && kill "$herald_pid" 2>/dev/null && wait "$herald_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "quickstart: FAIL: $*" >&2
  echo "--- herald log (tail) ---" >&2
  tail -n 40 "$work/herald.log" >&2 || true
  exit 1
}

make -C "$root" build >/dev/null
ctl() { "$root/bin/heraldctl" "$@"; }
field() { awk -v k="$1:" '$1 == k {print $2}'; }

# Terminal 1: make run, with its data in the scratch directory.
cd "$work"
make -C "$root" run DATA_DIR="$work/data" >"$work/herald.log" 2>&1 &
herald_pid=$!
for _ in $(seq 1 300); do
  if curl -fsS http://127.0.0.1:9100/readyz >/dev/null 2>&1; then break; fi
  kill -0 "$herald_pid" 2>/dev/null || fail "make run exited"
  sleep 0.1
done
curl -fsS http://127.0.0.1:9100/readyz >/dev/null || fail "herald not ready after 30s"
grep -q "admin token:" "$work/herald.log" || fail "make run did not print the admin token"

# Terminal 2: heraldctl, run from the directory whose ./data holds the admin token.
out=$(ctl app create --name demo) || fail "app create"
export HERALD_APP_KEY=$(echo "$out" | field app_key)
export HERALD_APP_SECRET=$(echo "$out" | field app_secret)
[ -n "$HERALD_APP_KEY" ] && [ -n "$HERALD_APP_SECRET" ] || fail "app create printed no key/secret: $out"

out=$(ctl device register --device-id phone-1) || fail "device register"
token=$(echo "$out" | field device_token)
[ -n "$token" ] || fail "device register printed no token: $out"

# Online: listen, then send; listen prints the message as one JSON line.
ctl listen --device-id phone-1 --token "$token" --count 1 >"$work/listen1.out" &
listen_pid=$!
sleep 1
out=$(ctl send --device phone-1 --title "Hello" --body "First push") || fail "send"
id1=$(echo "$out" | field message_id)
[ -n "$id1" ] || id1=$(echo "$out" | tr -d '[:space:]')
for _ in $(seq 1 100); do kill -0 "$listen_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$listen_pid" 2>/dev/null && { kill "$listen_pid"; fail "listen did not get the message within 10s"; }
wait "$listen_pid" || fail "listen exited with an error"
grep -q "\"message_id\":\"$id1\"" "$work/listen1.out" || fail "listen output lacks $id1: $(cat "$work/listen1.out")"
grep -q '"title":"Hello"' "$work/listen1.out" || fail "listen output lacks the title: $(cat "$work/listen1.out")"
[ "$(wc -l <"$work/listen1.out")" -eq 1 ] || fail "listen printed more than one line"

for _ in $(seq 1 50); do
  st=$(ctl status "$id1") || fail "status"
  [ "$(echo "$st" | field delivered)" = "1" ] && break
  sleep 0.1
done
[ "$(echo "$st" | field delivered)" = "1" ] || fail "status does not count the delivery: $st"
[ "$(echo "$st" | field state)" = "done" ] || fail "status state is not done: $st"

# Offline: send while nobody listens; the message waits and arrives on reconnect.
out=$(ctl send --device phone-1 --title "Later" --body "While you were away") || fail "offline send"
id2=$(echo "$out" | field message_id)
[ -n "$id2" ] || id2=$(echo "$out" | tr -d '[:space:]')
st=$(ctl status "$id2")
[ "$(echo "$st" | field pending)" = "1" ] || fail "offline message not pending: $st"
timeout 20 "$root/bin/heraldctl" listen --device-id phone-1 --token "$token" --count 1 >"$work/listen2.out" ||
  fail "listen after reconnect did not get the stored message"
grep -q "\"message_id\":\"$id2\"" "$work/listen2.out" || fail "stored message not delivered: $(cat "$work/listen2.out")"

echo "quickstart: ok (online delivery, status, offline delivery on reconnect)"
