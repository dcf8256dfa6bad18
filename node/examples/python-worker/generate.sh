#!/usr/bin/env bash
# Generates the Python gRPC stubs for floe's API into gen/ (or $1).
# Usage: ./generate.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_dir="$here/../../api/proto"
out="${1:-$here/gen}"
mkdir -p "$out"
python3 -m grpc_tools.protoc \
  -I "$proto_dir" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  "$proto_dir/floe.proto"
echo "generated floe_pb2.py and floe_pb2_grpc.py in $out" >&2
