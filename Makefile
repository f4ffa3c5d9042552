# make demo: venv + offline checkpoints + export + the tutorial's values.  make test: venv + checkpoints + suite.
# make test-fast: lint and the fast tier only.
PYTHON ?= python3
VENV ?= .venv
CACHE ?= .cache
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CHECKPOINTS := $(CACHE)/checkpoints/.ready
export BERT_ONNX_CACHE := $(abspath $(CACHE))

.PHONY: venv checkpoints test test-fast lint demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[export,test,bench,openvino,ray,serve]"
	touch $@

checkpoints: $(CHECKPOINTS)

$(CHECKPOINTS): scripts/prepare_checkpoints.py scripts/checkpoints_families.py scripts/checkpoints_st.py | $(STAMP)
	$(PY) scripts/prepare_checkpoints.py $(CACHE)/checkpoints
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check bert_onnx tests scripts benchmarks
	$(VENV)/bin/ruff format --check bert_onnx tests scripts benchmarks
	$(VENV)/bin/mypy

test: lint $(CHECKPOINTS)
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit loop: lint and the tests marked fast (tiny checkpoint, in process), under a minute. CI runs `make test`.
test-fast: lint $(CHECKPOINTS)
	$(PY) -m pytest -m fast -q $(PYTEST_ARGS)

demo: $(CHECKPOINTS)
	$(PY) scripts/demo.py --cache $(CACHE)

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache .mypy_cache .ruff_cache
