#!/usr/bin/env bash
# The GPU benchmark's steps on the lent GPU machine (no package registry there).
#
#   gpu_device.sh install DIR       install the wheels carried in DIR into the system Python
#   gpu_device.sh llama-build SDIST install llama-cpp-python's Python package from a carried sdist
#                                   (see bench/llama_server.py slim) and build llama.cpp with CUDA in the
#                                   background: the shared libraries it loads and llama-server, in one
#                                   compile (log: $WORK/llama-build.log, done: $WORK/llama-built)
#   gpu_device.sh llama-wait        wait for that build
#   gpu_device.sh phase ARGS...     python -m loadtests.bench.gpu ARGS..., with the libraries set up
#   gpu_device.sh run MODULE ARGS   python -m MODULE ARGS..., set up the same way
#   gpu_device.sh profile MODEL S [gil]  py-spy on MODEL's Python backend process (the stock
#                                   server's) for S seconds, while a phase serves it in the
#                                   background; its stacks, waits included (with "gil": only those
#                                   holding the GIL), as text in $WORK/profiles/MODEL-N.txt
#   gpu_device.sh collect           copy every result so far (Locust's CSV files, the models' ready
#                                   lines of each stack log) to $OUT
#
# Why the library path: PyTriton's tritonserver needs the interpreter's libpython and the wheel's
# own bundled libraries first; the CTranslate2 wheels load libcublas.so.12 while the machine
# has CUDA 13 only, so the CUDA 13 libraries are linked under the 12 names in a scratch folder.
# That is a measuring aid for this machine, not a deployment recipe (hosts install CUDA 12).
set -euo pipefail
WORK=${WORK:-/tmp/milo-gpu}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1

libraries() {
    local cuda site libdir cudnn
    cuda=$(dirname "$(find /usr/local/cuda*/ -name 'libcublas.so.13' 2>/dev/null | head -1)")
    mkdir -p /tmp/cu12
    ln -sf "$cuda/libcublas.so.13" /tmp/cu12/libcublas.so.12
    ln -sf "$cuda/libcublasLt.so.13" /tmp/cu12/libcublasLt.so.12
    site=$(python3 -c 'import pytriton,os;print(os.path.dirname(os.path.dirname(pytriton.__file__)))')
    libdir=$(python3 -c 'import sysconfig;print(sysconfig.get_config_var("LIBDIR"))')
    cudnn=$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(list(nvidia.cudnn.__path__)[0],"lib"))' 2>/dev/null || true)
    export LD_LIBRARY_PATH="$libdir:$site/nvidia_pytriton.libs:/tmp/cu12:$cuda:${cudnn:+$cudnn:}${LD_LIBRARY_PATH:-}"
    # llama.cpp as `llama-build` built it: llama-cpp-python loads these, llama-server runs from there.
    local server
    # Not built (phases without chat): nothing to set; `|| true`, or pipefail would end the script.
    server=$(ls "$HOME"/.cache/milo-voice/llama-server-*-cuda/llama-server 2>/dev/null | head -1 || true)
    if [ -n "$server" ]; then
        export LLAMA_CPP_LIB_PATH=$(dirname "$server") LLAMA_SERVER=$server
        export LD_LIBRARY_PATH="$LLAMA_CPP_LIB_PATH:$LD_LIBRARY_PATH"  # libllama finds libggml there
    fi
}

case "${1:-}" in
install)
    python3 -m pip install -q --no-index --no-deps --no-compile --break-system-packages "$2"/*.whl
    # The image's scikit-learn needs NumPy 2, which PyTriton 0.7 cannot use (empty responses);
    # transformers imports it when present, so it goes. So does the image's SciPy if it cannot load
    # under NumPy 1.26 (transformers imports it too, with a misleading error), unless one was carried.
    python3 -m pip uninstall -y -q --break-system-packages scikit-learn 2>/dev/null || true
    python3 -c "import scipy.optimize" 2>/dev/null || python3 -m pip uninstall -y -q --break-system-packages scipy || true
    ;;
llama-build)
    rm -f "$WORK/llama-built" "$WORK/llama-failed"
    rm -rf "$WORK/llama-src" && mkdir -p "$WORK/llama-src" && tar xzf "$2" -C "$WORK/llama-src"
    # The Python package alone (LLAMA_BUILD off): it loads the libraries built below (LLAMA_CPP_LIB_PATH).
    (cd "$WORK"/llama-src/llama_cpp_python-* && CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
        python3 -m pip install -q --no-deps --no-build-isolation --no-index --break-system-packages .)
    export CUDACXX=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc)
    # setsid: the build outlives this call and goes on while the next calls run.
    setsid bash -c "python3 -m loadtests.bench.llama_server build --cuda --sdist $2 \
        > $WORK/llama-build.log 2>&1 && touch $WORK/llama-built || touch $WORK/llama-failed" \
        </dev/null >/dev/null 2>&1 &
    echo "llama.cpp build started in the background"
    ;;
llama-wait)
    for _ in $(seq 1 "${2:-480}"); do
        [ -e "$WORK/llama-built" ] || [ -e "$WORK/llama-failed" ] && break
        sleep 1
    done
    if [ ! -e "$WORK/llama-built" ]; then
        echo "llama.cpp build not finished or failed:"; grep -o "\[ *[0-9]*%\]" "$WORK/llama-build.log" | tail -1; grep -i -A3 "error" "$WORK/llama-build.log" | cut -c1-300 | tail -20; exit 1
    fi
    tail -1 "$WORK/llama-build.log"
    ;;
phase|run)
    # llama.cpp's compile takes every core: a phase that measures while it runs measures the compile
    # (seen on 2026-12-01: the facade's CPU per request and STT's latency both inflated). Only the
    # build phase, which measures nothing, runs beside it.
    if [ "$1 ${2:-}" != "phase build" ] && [ -e "$WORK/llama-build.log" ] \
        && [ ! -e "$WORK/llama-built" ] && [ ! -e "$WORK/llama-failed" ]; then
        echo "waiting for llama.cpp's build to finish before measuring"
        bash "$0" llama-wait || true
    fi
    if [ "$1" = phase ]; then set -- loadtests.bench.gpu "${@:2}"; else shift; fi
    libraries
    # Assets carried once (.gpu-assets: tokenizers, spoken clips) stay on the machine for later calls.
    if [ -d .gpu-assets ]; then mkdir -p "$WORK/assets" && cp -r .gpu-assets/. "$WORK/assets/"; fi
    export MILO_GPU_ASSETS="$WORK/assets" MILO_CLIPS_DIR="$WORK/assets/clips"
    exec python3 -m "$@"  # exec: a SIGTERM (`timeout`) reaches the phase, which stops its stack
    ;;
profile)
    # The stub serving model $2, found by its model's path in /proc (images without pgrep exist).
    stub() {
        python3 - "$1" <<'PY'
import os, re, sys
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        continue
    if "triton_python_backend_stub" in command and re.search(rf"/{sys.argv[1]}/\d+/model\.py", command):
        print(pid)
        break
PY
    }
    pid=""
    for _ in $(seq 1 300); do pid=$(stub "$2"); [ -n "$pid" ] && break; sleep 1; done
    [ -n "$pid" ] || { echo "no Python backend process serves $2" >&2; exit 1; }
    mkdir -p "$WORK/profiles"
    n=$(ls "$WORK/profiles" | wc -l)
    # --nonblocking: the process is not paused to be read; --idle: waits (on the GPU, on Triton) count;
    # --threads: each stack under its thread (the role's, the execution's, the responses'); --gil:
    # only the thread holding the GIL, set beside a profile with waits: what a thread waits for
    # the GIL shows as a wait in one and not in the other.
    py-spy record --pid "$pid" --duration "$3" --rate 200 --nonblocking --threads \
        $([ "${4:-}" = gil ] && echo --gil || echo --idle) --format raw --output "$WORK/profiles/$2-$n.txt"
    ;;
collect)
    # Names with '+' (variants of several overlays) do not come back from the machine: '_' instead.
    mkdir -p "$OUT/locust"
    for file in "$WORK"/results/*.json "$WORK"/profiles/*.txt; do
        [ -e "$file" ] && cp "$file" "$OUT/$(basename "$file" | tr + _)"
    done
    # What each model said when it was ready (translation: the kernels it timed and kept), per
    # stack log: the logs themselves are too many and too long to come back.
    for log in "$WORK"/stack-*.log; do
        [ -e "$log" ] && grep -h " ready (" "$log" | cut -c1-600 >"$OUT/ready-$(basename "$log" .log | tr + _).txt"
    done
    for folder in "$WORK"/locust-*/; do
        [ -d "$folder" ] || continue
        name=$(basename "$folder" | tr + _) && mkdir -p "$OUT/locust/$name"
        cp "$folder"/*.csv "$OUT/locust/$name/" 2>/dev/null || true
    done
    ls -R "$OUT" | head -40
    ;;
*)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
