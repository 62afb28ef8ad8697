# syntax=docker/dockerfile:1
# whisper-gateway:0.1.0: the control plane (`python -m control_plane`), its `bootstrap`
# tool and the long-audio splitter (`python -m long_audio`), from a regular
# (non-editable) `pip install .[splitter]`.
#
#   docker build -f docker/gateway.Dockerfile -t whisper-gateway:0.1.0 .
#
# Build context: the repository root; .dockerignore lets in only pyproject.toml and
# the five packages. compose/docker-compose.yml builds it the same way.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY control_plane ./control_plane
COPY gateway_supervisor ./gateway_supervisor
COPY health ./health
COPY long_audio ./long_audio
COPY whisper_backend ./whisper_backend
RUN pip install ".[splitter]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# uid 10001, not root. /bootstrap is where `bootstrap --output` writes: a named volume
# mounted there starts with this owner, so the non-root user can write into it.
RUN groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 /bootstrap \
    && install -d /etc/whisper-gateway
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/gateway
# xDS (ADS) and the admin API, as set in the mounted config (compose/gateway.yaml).
EXPOSE 18000 19000
# The config is mounted here (read-only); the image carries none of its own.
CMD ["python", "-m", "control_plane", "--config", "/etc/whisper-gateway/gateway.yaml"]
