"""Shared fixtures: small, quickly built toy worlds in a private cache directory (never the user's cache).

The suite runs in one process (plain ``pytest``) or in parallel (``make test``: pytest-xdist, one worker per core,
``--dist loadscope``). Either way, what is expensive is made once per suite and shared:

- each π_ref (the small world below, the notebooks' "tiny" preset) is built once, by whichever worker needs it
  first, in a store that every worker of the run sees (``shared_dir``), under a file lock; each worker links it into
  its own private ``$DPO_TEACH_CACHE``, where its tests and its notebook kernels load it;
- each notebook is executed once (``notebook_runs``), in a kernel that starts warm (dpo_teach/warm_kernel.py:
  torch, transformers and IPython imported once per worker); the executed copy, its seconds and its error are read
  by every test that checks them;
- a test module is one work unit (``work_unit``), so a module fixture (the grading batch, the demo runs) is computed
  once, by the worker whose tests check it; the tests that each run one notebook are a unit per notebook, so that
  the notebook runs spread over the workers;
- the slowest units are handed out first (``SLOWEST_FIRST``), so that the workers finish at about the same time.

The units are pytest-xdist's ``loadscope`` scheduling with the exceptions of ``work_unit``, and not ``xdist_group``
marks: with pytest 9.2, ``--dist loadgroup`` silently ignores them (pytest-xdist issue #1386).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # set by pytest-xdist in its workers
MAX_WORKERS = 4  # `-n auto`: the suite has a few long parts; more workers would only add start-up (torch, worlds)

# One torch thread per worker once the workers fill the cores: threads beyond the cores spin and slow every step.
torch.set_num_threads(max(1, min(2, torch.get_num_threads(), CORES // WORKERS)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DPO_TEACH_STRICT", "1")  # claim checks in notebook kernels raise (dpo_teach/claims.py)

# A world that builds in a few seconds: enough SFT for the grammar's shape, not for the demo's numbers.
SMALL_WORLD = dict(preset="tiny", corpus_size=4000, sft_steps=150, sft_batch_size=32)

NOTEBOOK_MODULE = "tests/test_notebooks_00_04.py"
# Tests that each run one notebook (parametrized by its name) and share no module fixture: one work unit per notebook,
# so that the notebook runs spread over the workers.
PER_NOTEBOOK = {
    NOTEBOOK_MODULE: ("test_student_notebook_runs_headless[", "test_every_check_fails_on_the_stubs_and_says_why["),
    "tests/test_notebook_claims_forced.py": ("test_notebook_finishes_with_every_claim_forced_to_fail[",),
}
OWN_UNIT = ["tests/test_grading.py::test_grade_survives_loops_errors_and_deleted_cells"]  # slow, no shared fixture
LAST = [f"{NOTEBOOK_MODULE}::test_notebooks_draw_figures_and_the_widget",  # they read several notebooks' runs
        "tests/test_site.py::"]  # the course site, built from every notebook's run
# Units that run a notebook and are not a per-notebook unit: with those, before ``LAST`` (which reads every run).
RUNS_NOTEBOOKS = ["tests/test_notebook_06.py"]


def per_notebook(module: str, name: str) -> str:
    """One unit per notebook, whichever module's tests read its run: they share that one execution."""
    return f"notebook[{name}]"


# Work units from the slowest down, as `pytest --durations` measured them on 2 cores (efe1393 in one process, and
# the working tree of 2026-12 under xdist). Then the other units that run notebooks, ``LAST`` (the site: ~20 s in
# one worker) and the rest in file order: while one worker builds the site, the other runs the short modules.
SLOWEST_FIRST = [
    "tests/test_grading.py",  # 75 s: one `grade` run over every master's full, blank and wrong submissions
    "tests/test_zygote.py",  # 20 s of CPU that needs no π_ref: the second worker's while the first builds π_ref
    OWN_UNIT[0],  # 20 s, mostly asleep in endless loops (no π_ref): best beside the grading batch's two processes
    "tests/test_gradescope.py",  # 40 s: a Gradescope bundle's environment built from its files (uv, else pip)
    "tests/test_grading_hostile.py",  # 15 s: one `grade` run over the attacks and the fairness cases
    per_notebook(NOTEBOOK_MODULE, "07_variants_and_pitfalls"),  # 30-40 s each alone: the student notebooks
    per_notebook(NOTEBOOK_MODULE, "05_dpo_on_gpt2"),
    "tests/test_compare.py",  # 30-60 s: `dpo-teach compare --fast`, every method
    "tests/test_pipeline.py",  # 16 s: the default demo, twice
    per_notebook(NOTEBOOK_MODULE, "04_fixed_reward_and_reference"),
    "tests/test_notebooks_renamed.py",
]


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs as a whole: the test's module (its tests share the module's fixtures), except
    the one-notebook tests of ``PER_NOTEBOOK`` (a unit per notebook), the tests in ``OWN_UNIT`` and the ``LAST``."""
    module, _, name = nodeid.partition("::")
    if name.startswith(PER_NOTEBOOK.get(module, ())) and "[" in name:
        return per_notebook(module, name.split("[", 1)[1][:-1])
    if nodeid in OWN_UNIT:
        return nodeid
    if any(nodeid.startswith(last) for last in LAST):
        return "last"
    return module


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may use, at most ``MAX_WORKERS``."""
    return max(1, min(CORES, MAX_WORKERS))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` with this suite's ``work_unit``s, handed out in collection order (slowest first)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep our order, not "most tests first"
    return WorkUnits(config, log)


def pytest_collection_modifyitems(config, items):
    """The slowest work units first, then the other notebook runs, ``LAST``, and the rest in file order."""

    def rank(item) -> int:
        unit = work_unit(item.nodeid)
        if unit in SLOWEST_FIRST:
            return SLOWEST_FIRST.index(unit)
        if unit.startswith("notebook[") or unit in RUNS_NOTEBOOKS:
            return len(SLOWEST_FIRST)
        return len(SLOWEST_FIRST) + (1 if unit == "last" else 2)

    items.sort(key=rank)  # stable: file order within a rank


def shared_dir(tmp_path_factory, name: str) -> Path:
    """``name`` in a directory that every worker of this run sees (the run's base temporary directory)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # a worker's is <run's>/popen-gwN
    path = root / "shared" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def once_per_suite(done: Path, make) -> None:
    """``make()`` unless ``done`` exists, under a file lock that every worker shares: the first worker that needs it
    makes it (``make`` leaves ``done`` last), the others wait for it and then read it."""
    with FileLock(f"{done}.lock"):
        if not done.exists():
            make()


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """This worker's reference cache, set as $DPO_TEACH_CACHE for every test and every kernel it starts."""
    from dpo_teach.utils import environment

    root = tmp_path_factory.mktemp("dpo-teach-cache")
    with environment({"DPO_TEACH_CACHE": str(root)}):
        yield root


@pytest.fixture(autouse=True)
def _restore_environment():
    """Whatever a test sets in os.environ (e.g. ``cli.main`` sets MPLBACKEND=Agg) is undone after it: later tests
    and the kernels they start (which inherit the environment) must not depend on which tests ran before them in
    this worker."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


def shared_reference(config, tmp_path_factory, private: Path):
    """``load_reference(config)``, with π_ref built at most once per suite.

    The first worker to ask builds it in the shared store (on one thread, as every build: world.BUILD_THREADS), under
    a lock that the others wait on; each worker links the entry into its private cache and loads it from there.
    """
    from dpo_teach.world import CACHE_ENV, cache_entry, load_reference

    store = shared_dir(tmp_path_factory, "references")
    name = cache_entry(config).name

    def build() -> None:  # the cache writes the entry's folder atomically
        os.environ[CACHE_ENV] = str(store)
        try:
            load_reference(config)
        finally:
            os.environ[CACHE_ENV] = str(private)

    once_per_suite(store / name, build)
    link = private / name
    if not link.exists():
        try:
            link.symlink_to(store / name, target_is_directory=True)
        except OSError:  # no symlinks here (some Windows set-ups): a copy loads the same
            shutil.copytree(store / name, link)
    return load_reference(config)


@pytest.fixture
def count_builds(monkeypatch):
    """``count_builds()`` returns a list that grows by one item each time π_ref is built (not loaded from the cache):
    1, or what ``count_builds(when)`` calls ``when()`` to record as the build starts."""
    from dpo_teach import world

    def start(when=lambda: 1) -> list:
        calls, build = [], world.build_reference
        monkeypatch.setattr(world, "build_reference", lambda *a, **k: calls.append(when()) or build(*a, **k))
        return calls

    return start


@pytest.fixture
def ctrl_c_at_rename(monkeypatch):
    """``ctrl_c_at_rename(before=n)``: from now on ``os.replace`` raises KeyboardInterrupt instead of doing its n-th
    rename; ``after=n``: right after doing it."""
    def start(before: int | None = None, after: int | None = None) -> None:
        replace, renames = os.replace, itertools.count(1)

        def interrupted(src, dst):
            n = next(renames)
            if n == before:
                raise KeyboardInterrupt
            replace(src, dst)
            if n == after:
                raise KeyboardInterrupt

        monkeypatch.setattr(os, "replace", interrupted)

    return start


@pytest.fixture
def unsearchable(monkeypatch, tmp_path):
    """A folder whose insides cannot be looked at or made (another user's, mode 700), as the file system refuses it
    to anyone but root. The suite runs as root, whom no mode stops, so ``os.stat`` and ``os.mkdir`` (what
    ``Path.exists``, ``os.path.exists`` and ``tempfile.mkdtemp`` call) raise the file system's error below it."""
    locked = tmp_path / "locked"
    locked.mkdir()

    def refused(real):
        def call(path, *args, **kwargs):  # a file descriptor passes through
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(f"{locked}{os.sep}"):
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", refused(os.stat))
    monkeypatch.setattr(os, "mkdir", refused(os.mkdir))
    return locked


@pytest.fixture(scope="session")
def notebook_reference(private_cache, tmp_path_factory):
    """The notebooks' π_ref (the "tiny" preset at full size), in this worker's cache before any kernel needs it."""
    from dpo_teach.world import WorldConfig

    return shared_reference(WorldConfig(preset="tiny"), tmp_path_factory, private_cache)


@pytest.fixture(scope="session")
def cache_root(private_cache, notebook_reference):
    """The private reference cache ($DPO_TEACH_CACHE), holding the notebooks' π_ref that the demo, the comparison
    and the CLI default to."""
    return private_cache


@pytest.fixture(scope="session")
def world(private_cache, tmp_path_factory):
    """``(reference, tokenizer)`` of a small toy world, built once per suite."""
    from dpo_teach.world import WorldConfig

    return shared_reference(WorldConfig(**SMALL_WORLD), tmp_path_factory, private_cache)


@pytest.fixture(scope="session")
def pairs(world):
    """About 300 labelled preference pairs sampled from the small world's π_ref."""
    from dpo_teach.data import PreferenceConfig, make_preference_pairs

    reference, tokenizer = world
    return make_preference_pairs(reference, tokenizer, PreferenceConfig(n_prompts=300, seed=0))


@pytest.fixture(scope="session")
def trained_policy(world, pairs):
    """π_θ ≠ π_ref: a copy of the small world's reference after a few DPO steps on pairs[32:160], which tests
    comparing a batch of at most the first 32 pairs never see. Tests must not modify it (deep-copy first)."""
    import copy

    from dpo_teach.dpo import DPOConfig, train_dpo

    reference, tokenizer = world
    policy = copy.deepcopy(reference)
    train_dpo(policy, reference, tokenizer, pairs[32:160], DPOConfig(beta=0.5, lr=1e-2, batch_size=32, seed=0))
    policy.zero_grad(set_to_none=True)
    return policy


@pytest.fixture(scope="session")
def assigned(tmp_path_factory):
    """`make assign` into a temporary tree: student notebooks, bundles, manifests and solution notebooks. Made once
    per suite, by the first worker that needs it, in the store every worker sees; tests only read it."""
    from dpo_teach import grading

    root = shared_dir(tmp_path_factory, "assign")

    def assign() -> None:
        grading.assign(notebooks=root / "notebooks", autograder=root / "autograder", solutions=root / "solutions")
        (root / "done").touch()  # last: marks it complete

    once_per_suite(root / "done", assign)
    return root


@pytest.fixture
def stub_grading(monkeypatch):
    """Each notebook 'graded' at once: 1 of 1 point (as 01_kl_objective, where the file names no assignment), the rest
    of the batch (files, journal, reports, feedback) real. Returns the names of the files graded, in order."""
    import importlib

    from dpo_teach.grading.reports import empty_row

    grade_module = importlib.import_module("dpo_teach.grading.grade")  # the package's `grade` is the function
    graded = []

    def grade_submission(student, path, manifests, assignment, *args, **kwargs):
        graded.append(path.name)
        row = empty_row(student, path, assignment or "01_kl_objective", "graded")
        return {**row, "score": 1.0, "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", grade_submission)
    return graded


@pytest.fixture(scope="session")
def load_script():
    """``load_script("torch_spec")``: ``scripts/torch_spec.py`` as a module (scripts/ is not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "scripts"
                                                      / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def renamed(path: Path) -> str:
    """The file name a browser gives a second download of ``path``."""
    return f"{path.stem} (1){path.suffix}"


class NotebookRuns:
    """Notebooks executed headless in a fresh kernel, each (path, mode) at most once per suite.

    The kernels start warm (dpo_teach/warm_kernel.py): a fork of a process that imported torch, transformers
    and IPython once per worker, instead of a new Python that imports them before the first cell.

    ``get(path)`` returns ``{"nb": the executed notebook, "seconds": its wall time, "error": None or what stopped
    it, "cache": the π_ref cache folder its kernel used (its worker's $DPO_TEACH_CACHE)}``. The first caller runs it
    and stores the executed copy; later callers, in any worker, read that copy (and wait while another worker is
    running it). The copy is saved under the name a browser download or "Make a copy" gives (``NN_name (1).ipynb``),
    in a folder outside the repository: the whole notebook must run to its end under any file name (its grader cell
    finds its own file and tests, dpo_teach/grading/student.py).
    """

    def __init__(self, store: Path):
        self.store = store
        self.read: dict[str, dict] = {}  # what this worker has read already

    def get(self, path: Path, fast: bool = True, timeout: int = 600) -> dict:
        import nbformat

        key = f"{path.parent.name}-{path.stem}-{'fast' if fast else 'full'}"
        if key not in self.read:
            once_per_suite(self.store / f"{key}.json", lambda: self._execute(path, fast, timeout, key))
            run = json.loads((self.store / f"{key}.json").read_text())
            self.read[key] = {**run, "nb": nbformat.read(self.store / key / renamed(path), as_version=4)}
        return self.read[key]

    def _execute(self, path: Path, fast: bool, timeout: int, key: str) -> None:
        import nbformat

        from dpo_teach.headless import notebook_client
        from dpo_teach.site import link_assets
        from dpo_teach.utils import atomic_write_json, environment
        from dpo_teach.world import cache_dir

        workdir = self.store / key
        workdir.mkdir(exist_ok=True)
        copy = Path(shutil.copy(path, workdir / renamed(path)))
        link_assets(path, workdir)  # notebook 06 opens the shipped results in assets/ beside it
        nb = nbformat.read(copy, as_version=4)
        log = workdir / "claims.jsonl"
        scratch = workdir / "tmp"  # the kernel's temporary folder: whatever the notebook leaves there, a student's does
        scratch.mkdir(exist_ok=True)
        # The kernel inherits these: fast or full mode; every claim check logs whether its claim held (the run fails
        # below on any that did not, as strictly as an assert) and then takes the failed-check path, so this one run
        # also shows that no check stops the notebook (tests/test_notebook_claims_forced.py reads it).
        env = {"DPO_TEACH_FAST": "1" if fast else "0", "DPO_TEACH_CLAIMS": "record", "DPO_TEACH_CLAIMS_LOG": str(log),
               "DPO_TEACH_STRICT": "0", "TMPDIR": str(scratch)}
        start, stopped = time.perf_counter(), None
        with environment(env):
            try:
                notebook_client(nb, warm=True, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}}).execute()
            except Exception as e:  # noqa: BLE001 - reported by the test that needs it
                stopped = f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        claims = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
        failed = [c["claim"] for c in claims if not c["held"]]
        error = stopped or (f"ClaimFailed: {len(failed)} claim(s) did not hold: {failed}" if failed else None)
        nbformat.write(nb, copy)  # the executed copy, outputs included, where the run left its files
        atomic_write_json(self.store / f"{key}.json", {"seconds": seconds, "error": error, "stopped": stopped,
                                                       "claims": claims, "file": str(copy), "cache": str(cache_dir()),
                                                       "left_in_tmp": sorted(p.name for p in scratch.iterdir())})
        # (the json file is written last: it marks the run done)
        print(f"{key}: {seconds:.1f} s" + (f", stopped: {error.splitlines()[0]}" if error else ""))


@pytest.fixture(scope="session")
def notebook_runs(notebook_reference, tmp_path_factory):
    """Notebook runs shared by the whole suite (see :class:`NotebookRuns`); π_ref is cached before any kernel."""
    return NotebookRuns(shared_dir(tmp_path_factory, "notebooks"))
