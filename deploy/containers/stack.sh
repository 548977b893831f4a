#!/usr/bin/env bash
# The compose stack of deploy/compose.local.yml with docker compose or podman-compose:
#
#   deploy/containers/stack.sh up        build the images that are missing, start the services in
#                                        order and wait for each one's health check
#   deploy/containers/stack.sh down      stop and remove the containers (volumes kept: Redis's data)
#   deploy/containers/stack.sh down -v   and the volumes
#
# Services start one after the other, each once the ones it needs are healthy, because podman
# 4.3 ignores depends_on's service_healthy and runs no periodic health checks (no systemd):
# health is polled here (`podman healthcheck run`). MILO_TRITON_KEY: from the environment, else one
# made once and kept in the user's configuration folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/containers/engine.sh
FILE=deploy/compose.local.yml
if [ "$ENGINE" = docker ]; then
    COMPOSE=(docker compose -f "$FILE")
else
    COMPOSE=("$(command -v podman-compose || echo .venv/bin/podman-compose)" -f "$FILE")
fi
STACK=${MILO_STACK:-milo-local}
export MILO_STACK=$STACK
COMPOSE+=(-p "$STACK")

healthy() {  # NAME: whether the container's health check passes now
    if [ "$ENGINE" = podman ]; then
        podman healthcheck run "$1" >/dev/null 2>&1
    else
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]
    fi
}

ready_for_use() {  # the facade answers /ready with every model and Redis reached
    curl -fsS "http://127.0.0.1:${MILO_FACADE_PORT:-8080}/ready" 2>/dev/null | grep -q '"status":"ready"'
}

reaches_redis() {  # NAME: a new process in the container reaches Redis
    $ENGINE exec "$1" milo-voice tokens list >/dev/null 2>&1
}

wait_for() {  # WHAT SECONDS WHY_NOT CHECK...: run CHECK every 2 s until it passes; WHY_NOT says why not
    local what=$1 seconds=$2 why_not=$3 deadline=$((SECONDS + $2))
    shift 3
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$what: not after $seconds s" >&2
            eval "$why_not" >&2 || true
            return 1
        fi
        sleep 2
    done
    echo "$what"
}

wait_healthy() {  # NAME SECONDS
    wait_for "$1 healthy" "$2" "$ENGINE logs --tail 30 $1" healthy "$1"
}

case "${1:-}" in
up)
    if [ ! -d "models/${MILO_PROFILE:-embedded}" ]; then
        echo "no weights in models/${MILO_PROFILE:-embedded}: run make setup (or milo-voice models pull) first" >&2; exit 2
    fi
    # The weights as the container sees them: `make setup` links some to the packages that ship
    # them (in .venv), which the container cannot follow, so they are copied with links resolved.
    profile=${MILO_PROFILE:-embedded}
    mkdir -p build/container-models
    if [ ! -e "build/container-models/$profile/.copied" ] || [ -n "$(find "models/$profile" -newer "build/container-models/$profile/.copied" -print -quit)" ]; then
        rm -rf "build/container-models/$profile"
        cp -rL "models/$profile" "build/container-models/$profile"
        chmod -R a+rX "build/container-models/$profile"  # the container runs as another user
        touch "build/container-models/$profile/.copied"
    fi
    deploy/containers/images.sh --missing
    if [ -z "${MILO_TRITON_KEY:-}" ]; then
        keyfile=${XDG_CONFIG_HOME:-$HOME/.config}/milo-voice/local-triton-key
        mkdir -p "$(dirname "$keyfile")"
        [ -s "$keyfile" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$keyfile")
        MILO_TRITON_KEY=$(cat "$keyfile")
    fi
    export MILO_TRITON_KEY
    "${COMPOSE[@]}" up -d --no-deps redis model-server
    wait_healthy "$STACK-redis" 60
    wait_healthy "$STACK-model-server" "${MILO_MODEL_SERVER_START_S:-600}"
    "${COMPOSE[@]}" up -d --no-deps facade
    wait_healthy "$STACK-facade" 120
    # The facade's own health says only that it answers; its /ready that it reaches every model and
    # Redis over the compose network. A new process in its container, as `milo-voice tokens create`
    # is, must reach Redis too: on a network just made, its first lookup of the name was seen to
    # outlast the 1 s the command waited.
    wait_for "$STACK-facade ready: every model and Redis reached" 120 \
        "curl -sS http://127.0.0.1:${MILO_FACADE_PORT:-8080}/ready" ready_for_use
    wait_for "$STACK-facade's container reaches Redis" 60 \
        "$ENGINE exec $STACK-facade milo-voice tokens list" reaches_redis "$STACK-facade"
    "${COMPOSE[@]}" up -d --no-deps prometheus
    wait_healthy "$STACK-prometheus" 60
    echo "facade: http://127.0.0.1:${MILO_FACADE_PORT:-8080}  prometheus: http://127.0.0.1:${MILO_PROMETHEUS_PORT:-9090}"
    ;;
down)
    MILO_TRITON_KEY=${MILO_TRITON_KEY:-unused} "${COMPOSE[@]}" down ${2:+"$2"}
    ;;
*)
    sed -n '2,13p' "$0"
    exit 2
    ;;
esac
