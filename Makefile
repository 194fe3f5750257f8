# Two entry points for a newcomer: `make demo` and `make test`. Both create (or reuse) .venv,
# install torch first (pinned: unpinned, pip picks a multi-GB CUDA build), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,baselines]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch/demo.py --out runs/demo

# The full suite on 2 workers (pytest-xdist; the tests that share the demo run share a worker). CI runs this.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

# The edit loop: everything but the tests marked slow (multi-process launches, the demo, whole runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/model_throughput.py

clean:
	rm -rf $(VENV) runs
