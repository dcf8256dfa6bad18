#!/bin/sh
# Creates the appliance's certificates with `floe cert` into DIR (mounted
# into every node at /certs): a CA, one certificate per node and one
# client certificate for operators and the chaos suite.
#
#   deploy/certs.sh DIR [FLOE]
#   FLOE: a floe binary on this machine; default: run it from the image
#   floe:local with DIR mounted as a volume.
# Existing files are kept (floe cert refuses to overwrite them).
set -eu
dir=${1:?usage: deploy/certs.sh DIR [FLOE]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
run() {
  if [ -n "$binary" ]; then
    "$binary" cert "$@" 2>&1
  else
    docker run --rm --network none -v "$dir:/certs" floe:local cert "$@" 2>&1
  fi
}
binary=${2:-}
if [ -n "$binary" ]; then base=$dir; else base=/certs; fi
[ -f "$dir/ca/ca.pem" ] || run create-ca --out "$base/ca"
for id in 1 2 3; do
  [ -f "$dir/node$id/node.pem" ] || run create-node --ca-dir "$base/ca" --node-id "$id" --san "node$id.cluster" --out "$base/node$id"
done
[ -f "$dir/client/client.pem" ] || run create-client --ca-dir "$base/ca" --name operator --out "$base/client"
# The node reads its key as root inside the container; the host user needs
# the client key. Keep keys private to the owner.
chmod 600 "$dir"/ca/*key* "$dir"/node*/*key* "$dir"/client/*key* 2>/dev/null || true
echo "certificates in $dir"
