# syntax=docker/dockerfile:1.7
# Milo Voice model server: every model of model_repository/registry.toml on one GPU host,
# served by the PyTriton host (default) or the stock tritonserver with the Python backend
# (MILO_SERVER=tritonserver). Weights are not in the image: mount them at /models, or let
# the entrypoint pull the production profile on first start (HF_TOKEN at run time only).
#
#   docker build -f deploy/docker/model-server.Dockerfile -t milo-voice/model-server:0.1.0 .
#   docker run --gpus all --shm-size=2g --network milo -v milo-models:/models milo-voice/model-server:0.1.0
#
# --shm-size: Triton's Python backend moves every tensor through /dev/shm; Docker's default
# 64 MB fails on the first batch of audio. 2 GB covers a batch of 16 thirty-second clips per
# instance with room to spare.

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn
ARG UBUNTU=ubuntu24.04

# -- build: wheels, llama.cpp compiled for CUDA ---------------------------------------------
FROM ${CUDA_IMAGE}-devel-${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.12 python3.12-venv python3.12-dev build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY milo_voice milo_voice
COPY pytriton_app pytriton_app
COPY client client
COPY contract contract
COPY api_facade api_facade
# CUDA kernels for Ampere, Ada and Hopper; no native tuning (the build host is not the GPU host).
ENV CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90 -DLLAVA_BUILD=OFF"
RUN pip install --upgrade pip wheel && pip wheel --wheel-dir /wheels ".[serve]"

# -- runtime ------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}-runtime-${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.12 python3.12-venv libpython3.12 curl espeak-ng libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels "milo-voice[serve]" && rm -rf /wheels

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin milo \
    && mkdir -p /models /opt/milo && chown milo:milo /models
WORKDIR /opt/milo
COPY --chown=milo:milo model_repository model_repository
COPY --chown=milo:milo deploy/docker/model-server-entrypoint.sh /usr/local/bin/milo-model-server
ENV MILO_REGISTRY=/opt/milo/model_repository/registry.toml
# The repository this image serves pins every instance to a GPU (KIND_GPU, GPU instance counts).
RUN milo-voice models triton-configs --instance-kind gpu

USER milo
# Triton listens on every interface of the container, for the facade's container; publish its
# ports only on a network that needs direct Triton clients (docs/security.md).
ENV MILO_PROFILE=production MILO_MODELS_DIR=/models MILO_SERVER=pytriton HOME=/home/milo MILO_TRITON_BIND=0.0.0.0
VOLUME ["/models"]
EXPOSE 8000 8001 8002
# Ready only once every model of the registry answers ready (Triton's own /v2/health/ready passes
# before PyTriton binds them): start_period covers loading.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD python -m milo_voice.serving.readiness || exit 1
ENTRYPOINT ["/usr/local/bin/milo-model-server"]
