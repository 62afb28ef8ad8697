#!/bin/bash
# Envoy's admin API for the kubelet's probes and preStop hook, with bash alone:
# the envoyproxy/envoy image has no curl, and the admin stays on 127.0.0.1
# (it can stop Envoy), so an httpGet probe (which dials the pod IP) cannot reach it.
#
#   envoy-admin.sh ready    exit 0 when GET /ready is 200 (LIVE: Envoy has its config
#                           and is not draining): the readiness probe
#   envoy-admin.sh live     exit 0 when the admin answers at all (503 DRAINING is alive)
#   envoy-admin.sh active   print the requests in flight on the gateway listener
#   envoy-admin.sh drain    the preStop hook: POST /healthcheck/fail (readiness fails, so
#                           the pod leaves the Service; responses carry Connection: close),
#                           then wait at least DRAIN_MIN_S seconds and until no request is
#                           in flight; the kubelet sends SIGTERM when it returns
#                           (terminationGracePeriodSeconds bounds it)
#
# ENVOY_ADMIN_PORT must be the gateway config's envoy_admin.port.
set -u
port=${ENVOY_ADMIN_PORT:-9901}
STATUS=""

request() {  # METHOD PATH: body on stdout, STATUS set; returns 0 for HTTP 200
  local line
  STATUS=""
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 2
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
    "$1" "$2" >&3
  if ! IFS= read -r -t 5 STATUS <&3; then
    exec 3<&-
    return 2
  fi
  while IFS= read -r -t 5 line <&3 && [[ $line != $'\r' ]]; do :; done
  while IFS= read -r -t 5 line <&3 || [[ -n $line ]]; do printf '%s\n' "${line%$'\r'}"; done
  exec 3<&-
  [[ $STATUS == "HTTP/1."?" 200 "* ]]
}

active() {  # requests in flight on the listener (its HCM stat_prefix is "gateway")
  local body
  body=$(request GET "/stats?filter=http.gateway.downstream_rq_active") || return 2
  if [[ $body =~ http\.gateway\.downstream_rq_active:\ ([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    echo 0  # no listener yet: nothing in flight
  fi
}

case "${1:-}" in
  ready) request GET /ready >/dev/null ;;
  live)
    request GET /ready >/dev/null
    [[ $STATUS == "HTTP/1."* ]]
    ;;
  active) active ;;
  drain)
    start=$SECONDS
    request POST /healthcheck/fail >/dev/null || echo "healthcheck/fail: ${STATUS:-no answer}" >&2
    min=${DRAIN_MIN_S:-15}
    while :; do
      n=$(active) || break  # the admin is gone: so is Envoy, nothing to wait for
      if ((n == 0 && SECONDS - start >= min)); then
        break
      fi
      sleep 1
    done
    ;;
  *)
    echo "usage: $0 ready|live|active|drain" >&2
    exit 64
    ;;
esac
