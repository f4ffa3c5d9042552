# make demo: venv + offline checkpoints + export + the tutorial's values.  make test: venv + checkpoints + suite.
PYTHON ?= python3
VENV ?= .venv
CACHE ?= .cache
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CHECKPOINTS := $(CACHE)/checkpoints/.ready
export BERT_ONNX_CACHE := $(abspath $(CACHE))

.PHONY: venv checkpoints test lint demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[export,test,bench,openvino,ray]"
	touch $@

checkpoints: $(CHECKPOINTS)

$(CHECKPOINTS): scripts/prepare_checkpoints.py | $(STAMP)
	$(PY) scripts/prepare_checkpoints.py $(CACHE)/checkpoints
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check bert_onnx tests scripts benchmarks
	$(VENV)/bin/ruff format --check bert_onnx tests scripts benchmarks
	$(VENV)/bin/mypy

test: lint $(CHECKPOINTS)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(CHECKPOINTS)
	$(PY) scripts/demo.py --cache $(CACHE)

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache .mypy_cache .ruff_cache
