#!/usr/bin/env bash
# Build the project's images with docker or podman (deploy/containers/engine.sh). The Dockerfiles
# take their base as a build argument: the official Python image where a registry answers, else
# a Debian base made here (debian-base.sh). MILO_BASE_IMAGE picks one outright.
#
#   deploy/containers/images.sh [facade ...]     (default: facade)
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/containers/engine.sh
OFFICIAL=docker.io/library/python:3.12.8-slim-bookworm
LOCAL=localhost/milo-debian:bookworm
VERSION=0.1.0

base=${MILO_BASE_IMAGE:-}
if [ -z "$base" ]; then
    if $ENGINE image inspect "$OFFICIAL" >/dev/null 2>&1 || timeout 60 $ENGINE pull -q "$OFFICIAL" >/dev/null 2>&1; then
        base=$OFFICIAL
    else
        echo "no registry answers: a Debian base made here ($LOCAL)"
        $ENGINE image inspect "$LOCAL" >/dev/null 2>&1 || deploy/containers/debian-base.sh "$LOCAL"
        base=$LOCAL
    fi
fi
format=()
[ "$ENGINE" = podman ] && format=(--format docker)  # keeps HEALTHCHECK
for name in "${@:-facade}"; do
    echo "building milo-voice/$name:$VERSION from $base"
    $ENGINE build "${format[@]}" --network host --build-arg "BASE_IMAGE=$base" \
        -f "deploy/docker/$name.Dockerfile" -t "milo-voice/$name:$VERSION" .
done
