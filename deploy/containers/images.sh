#!/usr/bin/env bash
# Build the project's images with docker or podman (deploy/containers/engine.sh). The Dockerfiles
# take their base as a build argument: the official Python image where a registry answers, else
# a Debian base made here (debian-base.sh). MILO_BASE_IMAGE picks one outright.
#
#   deploy/containers/images.sh [--missing] [facade model-server-cpu redis prometheus]
#
# Without names, all four; --missing builds only those not built yet (what `make up` does).
#
# model-server-cpu installs what PyPI has, plus two wheels gathered here first in
# build/container-wheels: torch's CPU build (from this machine's pip configuration, or
# PIP_EXTRA_INDEX_URL) and llama-cpp-python, which PyPI has only as source (built once here by
# `make setup`, then taken from pip's cache). Its base must run the Python of this machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/containers/engine.sh
VERSION=0.1.0
LOCAL=localhost/milo-debian:bookworm
PYTHON=${PYTHON:-.venv/bin/python}
minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
declare -A OFFICIAL=(
    [facade]=docker.io/library/python:3.12.8-slim-bookworm
    [model-server-cpu]=docker.io/library/python:$minor-slim-bookworm
    [redis]=docker.io/library/debian:bookworm-slim
    [prometheus]=docker.io/library/debian:bookworm-slim
)

base_for() {
    local official=${OFFICIAL[$1]}
    if [ -n "${MILO_BASE_IMAGE:-}" ]; then echo "$MILO_BASE_IMAGE"; return; fi
    if $ENGINE image inspect "$official" >/dev/null 2>&1 || timeout 60 $ENGINE pull -q "$official" >/dev/null 2>&1; then
        echo "$official"; return
    fi
    # Debian bookworm's python3 is 3.11: the CPU model server's wheels must be made for it.
    if [ "$1" = model-server-cpu ] && [ "$minor" != 3.11 ]; then
        echo "no registry answers and this machine's Python is $minor, not Debian bookworm's 3.11" >&2; exit 3
    fi
    $ENGINE image inspect "$LOCAL" >/dev/null 2>&1 || deploy/containers/debian-base.sh "$LOCAL" >&2
    echo "$LOCAL"
}

gather_wheels() {
    rm -rf build/container-wheels && mkdir -p build/container-wheels
    "$PYTHON" -m pip wheel -q --no-deps -w build/container-wheels \
        "torch==$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')" \
        "llama-cpp-python==$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
}

missing=false
[ "${1:-}" = --missing ] && missing=true && shift
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(facade model-server-cpu redis prometheus)
format=()
[ "$ENGINE" = podman ] && format=(--format docker)  # keeps HEALTHCHECK
for image in "${images[@]}"; do
    if $missing && $ENGINE image inspect "milo-voice/$image:$VERSION" >/dev/null 2>&1; then
        continue
    fi
    base=$(base_for "$image")
    extra=()
    if [ "$image" = model-server-cpu ]; then
        gather_wheels
        extra=(--build-arg "PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL:-}")
    fi
    echo "building milo-voice/$image:$VERSION from $base"
    $ENGINE build "${format[@]}" --network host --build-arg "BASE_IMAGE=$base" "${extra[@]}" \
        -f "deploy/docker/$image.Dockerfile" -t "milo-voice/$image:$VERSION" .
done
