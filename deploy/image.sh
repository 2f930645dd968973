#!/usr/bin/env bash
# Builds the mqedge container image from this clone (Containerfile at the repository root).
#
#   bash deploy/image.sh [--binary PATH] [--tag NAME] [--engine podman|docker] [-- ENGINE_ARGS...]
#
# Without --binary it runs `cargo build --release --locked` first. It stages the binary and every
# shared library `ldd` says it links (libc, libm, libgcc_s, the loader) under target/image/root,
# adds /etc/passwd, /etc/group and /etc/nsswitch.conf for the unprivileged user 10001, and builds
# the image with target/image as the context. ENGINE_ARGS go before `build` (for example
# `--root DIR --runroot DIR --storage-driver vfs` to keep podman's storage elsewhere).
# The tag defaults to mqedge:VERSION, VERSION from Cargo.toml (the k8s manifests use mqedge:0.1.0).
set -euo pipefail
cd "$(dirname "$0")/.."

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
binary=""
tag="mqedge:${version}"
engine=""
engine_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --) shift; engine_args=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "deploy/image.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then engine=docker
  else echo "deploy/image.sh: neither podman nor docker is installed" >&2; exit 1
  fi
fi
if [ -z "$binary" ]; then
  cargo build --release --locked --bin mqedge
  binary="target/release/mqedge"
fi
[ -x "$binary" ] || { echo "deploy/image.sh: $binary is not an executable" >&2; exit 1; }

stage="target/image"
rm -rf "$stage"
mkdir -p "$stage/root/usr/local/bin" "$stage/root/etc" "$stage/data"
cp "$binary" "$stage/root/usr/local/bin/mqedge"
# every library the binary links, at the path the loader looks for it (linux-vdso has no file)
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$stage/root$(dirname "$lib")"
  cp -L "$lib" "$stage/root$lib"
done
printf 'root:x:0:0::/:/nonexistent\nmqedge:x:10001:10001::/var/lib/mqedge:/nonexistent\n' \
  > "$stage/root/etc/passwd"
printf 'root:x:0:\nmqedge:x:10001:\n' > "$stage/root/etc/group"
# glibc >= 2.34 has files and dns built in; this makes the lookup order explicit
printf 'hosts: files dns\n' > "$stage/root/etc/nsswitch.conf"
cp Containerfile "$stage/Containerfile"

"$engine" "${engine_args[@]}" build --build-arg "VERSION=${version}" -t "$tag" -f "$stage/Containerfile" "$stage"
echo "deploy/image.sh: built $tag with $engine"
