#!/bin/sh
# make test-interop: tuna's PEFT LoRA adapters and merged exports against Python peft/transformers.
#   sh tests/interop/run.sh [VENV]        (VENV defaults to /opt/tuna-venv)
# Needs torch, transformers, peft and safetensors in VENV; skips (exit 0) with a message when they
# are missing. Runs from the repo root and builds ./tuna if needed.
set -u
cd "$(dirname "$0")/../.." || exit 1
VENV=${1:-/opt/tuna-venv}
PY="$VENV/bin/python"

if [ ! -x "$PY" ] || ! "$PY" -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1; then
	echo "test-interop: SKIPPED - no torch/transformers/peft/safetensors in $VENV ($PY)"
	echo "              (create that venv, or pass another: make test-interop VENV=/path/to/venv)"
	exit 0
fi
if [ ! -x ./tuna ]; then
	make tuna || { echo "test-interop: ./tuna could not be built"; exit 1; }
fi
MODEL=models/stories260K
[ -f "$MODEL/model.safetensors" ] || MODEL=../shared/models/stories260K
"$PY" tests/interop/check_interop.py --tuna ./tuna --model "$MODEL"
rc=$?
# GGUF exports against the gguf package and llama.cpp's binding (skips without them)
"$PY" tests/interop/check_gguf.py --tuna ./tuna --shared ../shared || rc=1
exit $rc
