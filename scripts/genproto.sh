#!/usr/bin/env bash
# Regenerates the checked-in protobuf Go code with pinned generator versions.
# protoc comes from Debian's protobuf-compiler package; the Go plugins are
# installed into ./bin/tools at the versions below.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1
tools="$PWD/bin/tools"
mkdir -p "$tools"
if ! command -v protoc >/dev/null 2>&1; then
  echo "genproto: protoc missing; installing Debian's protobuf-compiler" >&2
  apt-get install -y -qq protobuf-compiler >/dev/null
fi
want_go="protoc-gen-go $PROTOC_GEN_GO_VERSION"
if [ "$("$tools/protoc-gen-go" --version 2>/dev/null)" != "$want_go" ]; then
  GOBIN="$tools" GOWORK=off GOFLAGS= go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if [ "$("$tools/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]; then
  GOBIN="$tools" GOWORK=off GOFLAGS= go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi
export PATH="$tools:$PATH"
gen() { # gen <out-module-dir> <module-path> <proto files...>
  local out=$1 mod=$2; shift 2
  protoc -I proto \
    --go_out="$out" --go_opt=module="$mod" \
    --go-grpc_out="$out" --go-grpc_opt=module="$mod" \
    "$@"
}
gen api github.com/heraldpush/herald/api proto/herald/device/v1/device.proto proto/herald/v1/herald.proto
gen . github.com/heraldpush/herald proto/herald/internal/v1/envelope.proto proto/herald/internal/v1/gateway.proto
echo "genproto: done"
