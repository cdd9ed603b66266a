# Two commands do all the set-up: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned here (not in pyproject); a bare `torch` pulls a multi-GB CUDA build on Linux. Which build and index:
# scripts/torch_spec.py (auto: a local file pip already has, else macOS -> PyPI's wheel, an NVIDIA GPU -> PyPI's
# wheel, otherwise PyTorch's CPU-only wheel). Override: TORCH_BUILD=cpu|cuda|default, TORCH=torch==X.
TORCH  ?= torch==2.13.0
TORCH_BUILD ?= auto
# LOCKED=1: install the exact versions of requirements.lock (`make lock` writes it) before the package itself.
LOCKED ?=

.PHONY: demo test lab bench bench-notebooks bench-test assign lint clean help

help:
	@echo "make demo   set up .venv (first use), then run the end-to-end DPO demo -> results/demo/,"
	@echo "            then the fast PPO vs DPO comparison -> results/compare/fast/"
	@echo "make test   set up .venv (first use), then run the whole test suite"
	@echo "make lab    open the notebooks in JupyterLab"
	@echo "make bench  throughput and memory benchmarks -> results/bench.json"
	@echo "make bench-notebooks  notebook run times (fast mode: all; full mode: 05, 07) -> results/notebooks_bench.json"
	@echo "make bench-test BASE=<commit>  fresh-clone \`make test\` of BASE, then of the working tree, timed with set-up"
	@echo "            -> results/bench_test_suite.json (as long as both suites together)"
	@echo "make assign course/masters/*.ipynb -> notebooks/ (student versions) and course/autograder/ (bundles)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	args=$$($(BIN)/python scripts/torch_spec.py --build "$(TORCH_BUILD)" --torch "$(TORCH)") && \
		$(BIN)/python -m pip install --quiet $$args
	$(if $(LOCKED),$(BIN)/python -m pip install --quiet -r requirements.lock)
	$(BIN)/python -m pip install --quiet -e ".[dev,peers]"
	touch $(STAMP)

# requirements.lock: the versions installed in .venv of everything dpo-teach[dev,peers] needs (torch excepted)
lock: $(STAMP)
	$(BIN)/python scripts/lock.py --out requirements.lock

demo: $(STAMP)
	$(BIN)/dpo-teach demo
	$(BIN)/dpo-teach compare --fast

# pytest-xdist: one worker per core (at most 4), a test module per worker at a time (its module fixtures computed
# once), slowest first: see tests/conftest.py. PYTEST_WORKERS=0 runs in one process; PYTEST_ADDOPTS adds options.
PYTEST_WORKERS ?= auto

test: $(STAMP)
	$(BIN)/ruff check dpo_teach tests benchmarks scripts
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope

# JupyterLab on this machine only (127.0.0.1), opening the course map; --allow-root only as root (containers).
# LAB_ARGS adds options, e.g. LAB_ARGS="--port 8899 --no-browser".
lab: $(STAMP)
	$(BIN)/jupyter lab --ip 127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS) \
		notebooks/00_start_here.ipynb

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# about 15 minutes on 2 cores: every notebook in fast mode, then 05 and 07 in full mode
bench-notebooks: $(STAMP)
	$(BIN)/python benchmarks/bench_notebooks.py --fast --full 05 07 --keep results/notebooks

# a fresh clone's `make test` (new .venv, empty caches) of BASE and of the working tree, back to back; needs no .venv
BASE ?= HEAD
bench-test:
	$(PYTHON) benchmarks/bench_test_suite.py --base $(BASE)

# otter assign on every master; writes only the notebooks named after a master, never others in notebooks/
assign: $(STAMP)
	$(BIN)/python -m dpo_teach.grading assign

clean:
	rm -rf results .pytest_cache .ruff_cache
