#!/usr/bin/env bash
# Installs the few system tools the tests drive (curl, ip, lua, wrk) when missing;
# with `containers`, also what the container tier needs: podman with runc (its default
# runtime, crun, fails on cgroup v1 hosts), netavark and aardvark-dns for compose
# networks and names, and debootstrap for the offline base image. Skipped where a
# Docker engine answers (docker compose then runs the tier).
set -euo pipefail
need=()
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v lua5.1 >/dev/null || need+=(lua5.1)
command -v wrk >/dev/null || need+=(wrk)  # bench.throughput (the smoke test runs it)
if [ "${1:-}" = containers ] && ! docker info >/dev/null 2>&1; then
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v netavark >/dev/null || [ -x /usr/lib/podman/netavark ] || need+=(netavark aardvark-dns)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system tools: ${need[*]} (install them, or run as root)" >&2
  fi
fi
