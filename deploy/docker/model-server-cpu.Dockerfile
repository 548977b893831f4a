# syntax=docker/dockerfile:1.7
# Milo Voice model server without a GPU: the PyTriton host on the CPU, serving the weights mounted
# at /models (the embedded default that `make setup` writes, or the production profile's). The
# compose stack built and run on machines without a registry (deploy/compose.local.yml) uses it.
#
#   deploy/containers/images.sh model-server-cpu
#
# BASE_IMAGE: Debian bookworm with python3 and its venv module, of the Python that the wheels in
# build/container-wheels were made for (images.sh gathers there the CPU build of torch and
# llama-cpp-python built once on the host: the registry has neither). PIP_EXTRA_INDEX_URL may name
# an index with CPU torch wheels (https://download.pytorch.org/whl/cpu) where one answers.

ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# espeak-ng: the embedded voices' phonemes; libttspico-utils: SVOX Pico, the embedded French voice
# (Debian's non-free component, enabled as `make setup` does); libgomp1: llama.cpp's threads;
# libpython, where the base has none: Triton's Python backend stub links to it.
RUN for list in /etc/apt/sources.list.d/*.sources; do [ -f "$list" ] || continue; \
        sed -i -E '/^Components:/{/ contrib( |$)/!s/$/ contrib/;/ non-free( |$)/!s/$/ non-free/}' "$list"; done \
    && apt-get update && apt-get install -y --no-install-recommends curl espeak-ng libsndfile1 libgomp1 libttspico-utils \
    && (ldconfig -p | grep -q 'libpython3\.[0-9]*\.so\.1\.0' \
        || apt-get install -y --no-install-recommends "libpython$(python3 -c "import sys; print('%d.%d' % sys.version_info[:2])")") \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/milo
COPY build/container-wheels /wheels
COPY pyproject.toml README.md ./
COPY milo_voice milo_voice
COPY pytriton_app pytriton_app
COPY client client
COPY contract contract
COPY api_facade api_facade
RUN pip install --upgrade pip \
    && pip install --find-links /wheels ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} ".[serve,embedded]" \
    && rm -rf /wheels \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin milo \
    && mkdir -p /models && chown milo:milo /models
COPY model_repository model_repository
COPY deploy/docker/model-server-entrypoint.sh /usr/local/bin/milo-model-server
USER milo
# Triton listens on every interface of the container, for the facade's container only (no port
# is published); MILO_TRITON_KEY guards its inference endpoints.
ENV MILO_PROFILE=embedded MILO_MODELS_DIR=/models MILO_SERVER=pytriton HOME=/home/milo MILO_TRITON_BIND=0.0.0.0 \
    MILO_REGISTRY=/opt/milo/model_repository/registry.toml
EXPOSE 8000 8001 8002
# Ready once every model of the registry answers ready (Triton's own /v2/health/ready passes
# before PyTriton binds them).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD python -m milo_voice.serving.readiness || exit 1
ENTRYPOINT ["/usr/local/bin/milo-model-server"]
