#!/bin/sh
# Pull the weights of MILO_PROFILE into MILO_MODELS_DIR (models already complete there are
# skipped), then serve. Pulling needs the model hub, with HF_TOKEN given at run time for
# gated repositories; with every model's weights mounted it downloads nothing.
set -eu
milo-voice models pull --profile "${MILO_PROFILE}"
if [ "${MILO_SERVER}" = "tritonserver" ]; then
    exec python -m milo_voice.serving.tritonserver --model-repository /opt/milo/model_repository \
        --workdir "${HOME}/tritonserver" "$@"
fi
exec python -m pytriton_app "$@"
