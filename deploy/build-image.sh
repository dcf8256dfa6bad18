#!/bin/sh
# Builds the image floe:local from a floe binary built on this machine,
# without pulling anything from a registry: the image is FROM scratch and
# holds the binary plus the shared libraries `ldd` lists (loader included).
#
#   deploy/build-image.sh [BINARY] [TAG]
#   BINARY defaults to target/release/floe; TAG to floe:local.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-$here/../target/release/floe}
tag=${2:-floe:local}
[ -x "$binary" ] || { echo "error: $binary is not an executable; build it first (cargo build --release --bin floe)" >&2; exit 1; }
command -v docker >/dev/null || { echo "error: docker not found" >&2; exit 1; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/floe-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
root=$stage/rootfs
mkdir -p "$root/usr/local/bin" "$root/data" "$root/tmp" "$root/certs"
cp "$binary" "$root/usr/local/bin/floe"

# Every library ldd resolves ("name => /path (addr)"), and the loader
# ("/lib64/ld-linux-x86-64.so.2 (addr)"), copied to the same path.
ldd "$binary" | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# A loader reached through a symlinked /lib64 must exist under both names.
for loader in /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1; do
  if [ -e "$loader" ] && [ ! -e "$root$loader" ]; then
    mkdir -p "$root$(dirname "$loader")"
    cp -L "$loader" "$root$loader"
  fi
done
cp "$here/Dockerfile" "$stage/Dockerfile"
docker build --quiet --tag "$tag" "$stage" >/dev/null
echo "built $tag from $binary"
