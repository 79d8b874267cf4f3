# Two commands on a fresh machine (see README):  make run   |   make test
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   ?= .venv
# torch comes first and from this spec. The default is the CPU wheel this lab's machines carry;
# GPU users override it, e.g.  make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-all lint format bench lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC) 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,cluster]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -m pip install --quiet --no-deps libemg==2.0.3 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import torch, ray, mlflow, cebra, pmdarima, emgcore"  # fail here if install broke
	touch $(STAMP)

run: $(STAMP)
	$(PY) orchestration/sweep.py kinembed --smoke

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Record the exact versions the tests passed with. torch's local label (+cpu, +cu128) is dropped:
# `torch==X` then admits the CPU wheel here and the CUDA wheel of the same release in the
# cluster image (clusters/Dockerfile), where `torch==X+cpu` would make pip swap one for the other.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' | sed -E 's/^(torch==[^+]+)\+.*/\1/' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
