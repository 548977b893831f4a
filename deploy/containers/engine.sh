# Sourced by the container scripts: ENGINE is docker where a Docker daemon answers, else podman,
# set up for machines like the development ones (../../../shared/CONTAINERS.md in the workspace):
# runc instead of crun, which cannot raise resource limits there, and default limits within the
# machine's hard ones. The settings go in a file of ours (CONTAINERS_CONF, in the user's
# configuration folder, rewritten alike at each use); /etc is not touched.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
    CONTAINERS_CONF=${XDG_CONFIG_HOME:-$HOME/.config}/milo-voice/containers.conf
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    {
        echo '[containers]'
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
        if command -v runc >/dev/null 2>&1; then printf '[engine]\nruntime = "runc"\n'; fi
    } > "$CONTAINERS_CONF"
    export CONTAINERS_CONF
else
    echo "no container engine: install docker, or podman (apt-get install podman runc)" >&2
    exit 3
fi
export ENGINE
