# syntax=docker/dockerfile:1
# whisper-gateway-prometheus:2.42: Debian's Prometheus package, for compose's monitoring
# profile on hosts that cannot pull prom/prometheus. Where a registry answers, compose
# uses prom/prometheus as it is; this image takes the same command line (the binary is
# the entrypoint) and the same data folder, /prometheus, owned by nobody.
#
#   make images          # builds this on the offline base (scripts/base-image.sh)
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
USER root
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 65534 -g 65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
