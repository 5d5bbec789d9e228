#!/bin/sh
# The main job, headless (make run without a terminal): generate a story with the bundled
# model, fine-tune it on the identity dataset (full fine-tuning, about a minute on 2 cores),
# then ask the tuned model who it is.
set -e
cd "$(dirname "$0")/.."
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
