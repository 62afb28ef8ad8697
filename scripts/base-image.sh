#!/usr/bin/env bash
# Makes the offline base image, localhost/whisper-gateway-base:<tag>, from Debian's
# packages (debootstrap), for machines that reach no container registry. It carries
# Debian 12's Python 3.11 with venv, the same Python as the python:3.11-slim default.
#
#   scripts/base-image.sh            # prints the image name; builds it only when missing
#
# Cached twice: the image (the tag is a digest of this script) and the root file
# system as a tarball under $WHISPER_GATEWAY_CACHE/images, so a wiped image store
# costs an import (seconds), not a debootstrap (minutes). ENGINE: podman or docker.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
CACHE=${WHISPER_GATEWAY_CACHE:-$HOME/.cache/whisper-gateway}/images
digest=$(sha256sum "$0" | cut -c1-12)
image=localhost/whisper-gateway-base:$SUITE-$digest
tarball=$CACHE/base-$SUITE-$digest.tar

if "$ENGINE" image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

# The mirror apt already uses here (deb822 or one-line sources), else Debian's own.
mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | head -n 1 | awk '{print $2}')
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | grep -v security | head -n 1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

mkdir -p "$CACHE"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "base-image: debootstrap is missing (scripts/system-deps.sh containers)" >&2; exit 1; }
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root" "$tarball.part"' EXIT
  echo "base-image: debootstrap $SUITE from $(mirror) (about a minute, once)" >&2
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # An image needs no package lists, no apt cache and no documentation.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
quiet=()
[ "$ENGINE" = podman ] && quiet=(-q)  # docker import has no -q, and prints only the id
"$ENGINE" import "${quiet[@]}" --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
# An earlier script's base is no longer built on: drop its tag (an image still built on
# it keeps the layers) and its tarball.
for old in $("$ENGINE" images --format '{{.Repository}}:{{.Tag}}' "${image%%:*}"); do
  [ "$old" = "$image" ] || "$ENGINE" rmi "$old" >/dev/null 2>&1 || true
done
find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "${tarball##*/}" -delete
echo "$image"
