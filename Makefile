# One-command set-up, demo, tests, lint and benchmarks. `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_CPU := torch==2.13.0
OUT ?= demo_out

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default (CUDA) torch build"; $(PIP) install --quiet "torch>=2.4,<2.15"; \
	else \
		echo "No GPU: installing the CPU build of torch"; $(PIP) install --quiet $(TORCH_CPU); \
	fi
	$(PIP) install --quiet -e ".[dev,cluster]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/spatialdreamer demo --out $(OUT)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/warp.py
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/build_dataset.py

# Results table (CSV + Markdown) on the fixed-seed synth benchmark; weights via EVAL_ARGS, e.g.
# make eval EVAL_ARGS="--pipeline ckpt/ --lpips-backbone alexnet.pth --lpips-weights alex.pth --i3d i3d.pt"
EVAL_OUT ?= eval_out
EVAL_ARGS ?=
.PHONY: eval
eval: setup
	$(PY) -m pipelines.evaluate --out $(EVAL_OUT) $(EVAL_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
