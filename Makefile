# `make init` once, then `make demo` (offline) or `make run` (CIFAR-10). `make help` lists targets.
PYTHON ?= python3
VENV   ?= venv
PY      = $(VENV)/bin/python
ARGS   ?=

.PHONY: help init run demo test test-fast quality style bench rename clean

help:  ## list targets
	@grep -E '^[a-zA-Z%_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

init: $(PY)  ## create venv/ and install the pinned dependencies + this package (editable)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .

run:  ## train the default demo (CIFAR-10 ResNet); extra CLI flags via ARGS="..."
	$(PY) -m project $(ARGS)

demo:  ## train a small ConvNet on scikit-learn's digits: offline, ~12-15 s on 2 cores
	$(PY) -m project fit --config configs/digits.yaml $(ARGS)

# Two pytest-xdist workers: most slow tests wait on one single-threaded CLI subprocess, so two at once
# fill both cores. loadfile: a module's tests run in one worker, in order (a README command reads the
# run an earlier one trained; module-scoped fixtures are built once). `make test WORKERS=0`: one process.
WORKERS ?= 2
XDIST    = -n $(WORKERS) --dist loadfile

test:  ## the whole test suite, as CI runs it (end-to-end CLI, DDP and multi-epoch runs included)
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast:  ## every room's unit tests: pytest -m "not slow" (no CLI subprocess, DDP or multi-epoch run)
	$(PY) -m pytest -m "not slow" $(XDIST) $(ARGS)

test-%:  ## run tests matching a pattern: make test-structs
	$(PY) -m pytest -k "$*" $(ARGS)

test-pdb-%:  ## same, dropping into pdb on failure
	$(PY) -m pytest --pdb -k "$*" $(ARGS)

quality:  ## lint, format check, type check: every .py file git tracks
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

style:  ## format and auto-fix what ruff can
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench:  ## benchmarks: each prints ratios against a baseline measured in the same run
	@for script in benchmarks/[!_]*.py; do echo "== $$script"; (cd benchmarks && ../$(PY) $$(basename $$script)) || exit 1; done

rename:  ## rename the package everywhere: make rename NAME=mynet (on a committed tree)
	$(PY) scripts/rename.py $(NAME)

clean:  ## remove caches and build files (keeps venv/, data/ and runs/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -not -path './venv/*' -prune -exec rm -rf {} +
