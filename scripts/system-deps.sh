#!/usr/bin/env bash
# Installs the few system tools the tests drive (curl, ip, lua, wrk) when missing.
set -euo pipefail
need=()
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v lua5.1 >/dev/null || need+=(lua5.1)
command -v wrk >/dev/null || need+=(wrk)  # bench.throughput (the smoke test runs it)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system tools: ${need[*]} (install them, or run as root)" >&2
  fi
fi
