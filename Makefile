# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need. TORCH picks the torch build to install:
# the default is the CPU build that lies on this project's machines.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	-$(PY) -m pip install -q pyyaml && $(PY) -m pip install -q --no-deps mup==1.0.0
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
