# syntax=docker/dockerfile:1.7
# Milo Voice REST facade: the core package only (client and facade; no torch, no model
# library). Configuration comes from MILO_* variables at run time; nothing secret is baked in.
#
#   docker build -f deploy/docker/facade.Dockerfile -t milo-voice/facade:0.1.0 .
#   docker run -p 8080:8080 -e MILO_TRITON_URL=model-server:8000 -e MILO_REDIS_URL=redis://redis:6379/0 \
#       milo-voice/facade:0.1.0
#
# BASE_IMAGE: any Debian bookworm with python3 and its venv module; deploy/containers/images.sh
# passes a base made with debootstrap where no registry answers.

ARG BASE_IMAGE=python:3.12.8-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update && apt-get install -y --no-install-recommends curl libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
# A virtual environment: the same commands whichever Python the base has (Debian's has no `pip`).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/milo
COPY pyproject.toml README.md ./
COPY milo_voice milo_voice
COPY pytriton_app pytriton_app
COPY client client
COPY contract contract
COPY api_facade api_facade
COPY model_repository/registry.toml model_repository/registry.toml
RUN pip install --upgrade pip && pip install . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin milo \
    && mkdir -p /opt/milo/data && chown milo:milo /opt/milo/data
USER milo
ENV MILO_PROFILE=production MILO_REGISTRY=/opt/milo/model_repository/registry.toml MILO_DATA_DIR=/opt/milo/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
# Several workers share Redis (sessions, cache, rate limits, tokens) and their metrics, which any
# worker's /metrics reports whole (prometheus_client's multiprocess mode, a folder under /tmp).
# python -m api_facade: uvicorn with its forwarded-header rewriting off; the facade believes
# X-Forwarded-For only from MILO_TRUSTED_PROXIES (set it to the ingress's addresses).
CMD ["python", "-m", "api_facade", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
