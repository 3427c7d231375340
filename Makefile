# Two commands set up and run everything: `make demo` and `make test`.
# Both create and reuse .venv and install the project into it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

# Real traces live beside the project; an explicit HARMONY_DATA_DIR wins.
ifeq ($(origin HARMONY_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/datasets),)
    export HARMONY_DATA_DIR := $(abspath ../shared/datasets)
  endif
endif

.PHONY: demo demo-model test lint bench clean venv prometheus

venv: $(STAMP)

$(STAMP): pyproject.toml operator/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q -e ./operator
	touch $(STAMP)

# The main job, in a few minutes: a real trace, the forecaster trained on it (committed in configs/models/fisher_demo,
# retrained by `make demo-model`), every scaling policy tuned on the validation days and replayed on the test
# days, the comparison table and the HTML report. The full search: configs/backtest/fisher_containers.yaml.
demo: $(STAMP)
	$(BIN)/harmony datasets show fisher_containers --series container1 --plot reports/fisher_container1.png
	$(BIN)/harmony backtest --config configs/backtest/demo.yaml

# Retrain the demo's forecaster (configs/fisher_demo.yaml, seeded: the same weights come back) and replace
# the committed copy in configs/models/fisher_demo.
demo-model: $(STAMP)
	rm -rf runs/fisher_demo
	$(BIN)/harmony train --config configs/fisher_demo.yaml
	cp runs/fisher_demo/forecaster/forecaster.json runs/fisher_demo/forecaster/weights.safetensors configs/models/fisher_demo/

# The operator tests start a real Prometheus (Debian package `prometheus`: server + promtool).
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; \
	  else echo "install the Debian package prometheus (sudo apt-get install prometheus)" >&2; exit 1; fi; }

test: $(STAMP) prometheus
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check harmony operator tests benchmarks
	$(BIN)/mypy

bench: $(STAMP) prometheus
	$(BIN)/python -m benchmarks.data_load
	$(BIN)/python -m benchmarks.operator_scale

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
