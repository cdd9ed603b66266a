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

.PHONY: demo test lab bench bench-notebooks bench-claims bench-test bench-compare bench-grading assign release gradescope lint clean help
.PHONY: site browser test-site readme-images

help:
	@echo "make demo   set up .venv (first use), then run the end-to-end DPO demo -> results/demo/,"
	@echo "            then the fast comparison (PPO, GRPO, RLOO, DPO, online DPO) -> results/compare/fast/"
	@echo "make test   set up .venv (first use), then run the whole test suite"
	@echo "make lab    open the notebooks in JupyterLab"
	@echo "make bench  throughput and memory benchmarks -> results/bench.json"
	@echo "make bench-notebooks  notebook run times (fast mode: all; full mode: 05, 07) -> results/notebooks_bench.json"
	@echo "make bench-claims  which claim checks of a notebook hold at other training seeds (NB=07 SEEDS=\"0 1 2 3 4 5\")"
	@echo "            -> results/claims_bench.json; SET=\"lr=2.5e-4\" also changes that keyword in every DPOConfig(...)"
	@echo "make bench-test BASE=<commit>  fresh-clone \`make test\` of BASE, then of the working tree, timed with set-up"
	@echo "            -> results/bench_test_suite.json (as long as both suites together); SAME_TESTS=1 adds a run of"
	@echo "            the working tree on only BASE's tests (like for like)"
	@echo "make bench-compare  today's comparison (DPO, PPO, PPO-GT) vs all methods, full and --fast, side by side"
	@echo "            -> results/bench_compare.json and the shipped notebooks/assets/compare_results.json"
	@echo "make assign course/masters/*.ipynb -> notebooks/ (student versions) and course/autograder/ (bundles)"
	@echo "make bench-grading  notebooks graded per minute: sandbox, no sandbox, the old otter grader, --jobs 2"
	@echo "make gradescope  Gradescope autograder bundles (they install CPU torch at set-up; carry the package and π_ref) -> results/gradescope/"
	@echo "make release  the student-only tree -> results/release/dpo-teach (no masters, bundles or tests)"
	@echo "make site   every notebook executed (full mode; DPO_TEACH_FAST=1: fast) and rendered -> results/site/"
	@echo "make test-site  the site's browser test alone; make readme-images: the README's figures -> docs/images/"
	@echo "make lint   ruff over the package, tests, benchmarks and scripts (the first step of make test)"
	@echo "make lock   requirements.lock: the versions installed in .venv (make .venv/.installed LOCKED=1 installs them)"
	@echo "make browser  Debian's chromium for the site's browser test (apt, as root; make test runs it first)"
	@echo "make clean  delete results/ (but a folder of grades: it says which it kept) and the pytest and ruff"
	@echo "            caches (not .venv)"

# `pip install` through scripts/pip_install.py: uv (fetched into .venv) given pip's own configuration, so the same
# versions in about half the time; plain pip where uv cannot be had. INSTALLER=pip: pip only.
PIP_INSTALL = $(BIN)/python scripts/pip_install.py --quiet

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	args=$$($(BIN)/python scripts/torch_spec.py --build "$(TORCH_BUILD)" --torch "$(TORCH)") && \
		$(PIP_INSTALL) $$args
	$(if $(LOCKED),$(PIP_INSTALL) -r requirements.lock)
	$(PIP_INSTALL) -e ".[dev,peers]"
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
# checked when the Makefile is read: pytest would refuse a typo only after the set-up, ruff and the browser's install
_nondigits = $(subst 9,,$(subst 8,,$(subst 7,,$(subst 6,,$(subst 5,,$(subst 4,,$(subst 3,,$(subst 2,,$(subst 1,,$(subst 0,,$(1)))))))))))
ifneq ($(filter test,$(MAKECMDGOALS)),)
ifneq ($(words $(PYTEST_WORKERS))$(call _nondigits,$(filter-out auto logical,$(PYTEST_WORKERS))),1)
$(error PYTEST_WORKERS=$(PYTEST_WORKERS): pass a number of workers (0: one process) or auto)
endif
endif

# The student release (`make release`) has no tests/: there `make test` says so and installs nothing (decided when
# the Makefile is read, so that `make -j` cannot start the set-up first).
HAVE_TESTS := $(wildcard tests/.)
ifeq ($(HAVE_TESTS),)
test:
	@echo "make test: this copy of the course has no tests/ (it is the student release);" \
		"run the notebooks with 'make lab', or clone the full repository for the test suite" >&2; exit 2
else
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope
endif

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard dpo_teach tests benchmarks scripts)

# JupyterLab on this machine only (127.0.0.1), opening the course map; --allow-root only as root (containers).
# LAB_ARGS adds options, e.g. LAB_ARGS="--port 8899 --no-browser".
lab: $(STAMP)
	$(BIN)/jupyter lab --ip 127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS) \
		notebooks/00_start_here.ipynb

# The student release has no benchmarks/ either: there their targets say so, like `make test`.
HAVE_BENCHMARKS := $(wildcard benchmarks/.)
ifeq ($(HAVE_BENCHMARKS),)
bench bench-notebooks bench-claims bench-test bench-compare bench-grading:
	@echo "make $@: this copy of the course has no benchmarks/ (it is the student release); clone the full" \
		"repository for them" >&2; exit 2
else
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# about 15 minutes on 2 cores: every notebook in fast mode, then 05 and 07 in full mode
bench-notebooks: $(STAMP)
	$(BIN)/python benchmarks/bench_notebooks.py --fast --full 05 07 --keep results/notebooks

# about 7 minutes on 2 cores for 07: the notebook in fast mode at each training seed, its claim checks side by side
NB ?= 07
SEEDS ?= 0 1 2 3 4 5
SET ?=
bench-claims: $(STAMP)
	$(BIN)/python benchmarks/bench_claims.py $(NB) --seeds $(SEEDS) $(if $(SET),--set $(SET))

# a fresh clone's `make test` (new .venv, empty caches) of BASE and of the working tree, back to back; needs no .venv
BASE ?= HEAD
bench-test:
	$(PYTHON) benchmarks/bench_test_suite.py --base $(BASE) $(if $(SAME_TESTS),--same-tests)

# about 25 minutes on 2 cores: both comparisons, fast then full; the full all-methods run becomes the shipped asset
bench-compare: $(STAMP)
	$(BIN)/python benchmarks/bench_compare.py --asset notebooks/assets/compare_results.json

# grading throughput, same submissions: sandbox vs --unsafe vs the otter grader of BASE_GRADER, and --jobs 2
BASE_GRADER ?= c3f4382
bench-grading: $(STAMP)
	$(BIN)/python benchmarks/bench_grading.py --base $(BASE_GRADER)
endif

# Gradescope autograder bundles (package wheel, π_ref, pinned CPU requirements): results/gradescope/NN_name.zip
gradescope: $(STAMP)
	$(BIN)/python -m dpo_teach.grading gradescope --out results/gradescope

# otter assign on every master; writes only the notebooks named after a master, never others in notebooks/.
# SOLUTIONS=<folder>: also the solution notebooks there (grade them first: each must score full marks)
assign: $(STAMP)
	$(BIN)/python -m dpo_teach.grading assign $(if $(SOLUTIONS),--solutions $(SOLUTIONS))

# the student-only tree (committed notebooks, package, README, LICENSE; no masters, bundles or tests), checked for
# every master's solution and hidden-test line before it is written. RELEASE=<folder> (default below)
RELEASE ?= results/release/dpo-teach
release: $(STAMP)
	$(BIN)/python -m dpo_teach.grading release --out $(RELEASE)

# The course as a static site (dpo_teach/site.py): every notebook executed once, rendered with its outputs to
# results/site/ (open results/site/index.html; no network needed). Full mode; `make site DPO_TEACH_FAST=1`: fast mode.
site: $(STAMP)
	$(BIN)/python -m dpo_teach.site --out results/site

# Debian's chromium for the site's browser test (tests/test_site.py), installed with apt when missing and root
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "no chromium: tests/test_site.py skips its browser checks (install chromium; in CI they fail)"
ifneq ($(HAVE_TESTS),)
test: browser
endif

# the site's tests alone: every notebook in fast mode, the site of those runs, each page in headless chromium
ifeq ($(HAVE_TESTS),)
test-site:
	@echo "make test-site: this copy of the course has no tests/ (it is the student release); 'make site' builds" \
		"the site" >&2; exit 2
else
test-site: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_site.py
endif

# the README's figures (docs/images/): the demo's training curves, the frontier of the shipped PPO-vs-DPO results
readme-images: $(STAMP)
	$(BIN)/dpo-teach demo --out results/demo
	mkdir -p docs/images && cp results/demo/training_curves.png docs/images/training_curves.png
	$(BIN)/python -m dpo_teach.site --frontier docs/images/frontier.png

# results/ (but any folder of grades: nothing regenerates those) and the pytest and ruff caches; scripts/clean.py
clean:
	$(PYTHON) scripts/clean.py
