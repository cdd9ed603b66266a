# Two commands do all the set-up: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned here (not in pyproject) to the CPU wheel these machines carry; a bare `torch` pulls a GPU build.
TORCH  ?= torch==2.13.0

.PHONY: demo test lab bench bench-notebooks assign lint clean help

help:
	@echo "make demo   set up .venv (first use), then run the end-to-end DPO demo -> results/demo/,"
	@echo "            then the fast PPO vs DPO comparison -> results/compare/fast/"
	@echo "make test   set up .venv (first use), then run the whole test suite"
	@echo "make lab    open the notebooks in JupyterLab"
	@echo "make bench  throughput and memory benchmarks -> results/bench.json"
	@echo "make bench-notebooks  notebook run times (fast mode: all; full mode: 05, 07) -> results/notebooks_bench.json"
	@echo "make assign course/masters/*.ipynb -> notebooks/ (student versions) and course/autograder/ (bundles)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,peers]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dpo-teach demo
	$(BIN)/dpo-teach compare --fast

test: $(STAMP)
	$(BIN)/ruff check dpo_teach tests benchmarks
	$(BIN)/python -m pytest -q

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# about 15 minutes on 2 cores: every notebook in fast mode, then 05 and 07 in full mode
bench-notebooks: $(STAMP)
	$(BIN)/python benchmarks/bench_notebooks.py --fast --full 05 07 --keep results/notebooks

# otter assign on every master; writes only the notebooks named after a master, never others in notebooks/
assign: $(STAMP)
	$(BIN)/python -m dpo_teach.grading assign

clean:
	rm -rf results .pytest_cache .ruff_cache
