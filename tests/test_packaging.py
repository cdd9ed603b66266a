"""environment.yml installs what pyproject.toml declares; the Makefile and CI use the README's commands."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _names(specs):
    return {re.split(r"[<>=!~\[ ]", s.strip(), maxsplit=1)[0].lower() for s in specs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("dev", "peers"):
        declared += project["optional-dependencies"][extra]
    env = (ROOT / "environment.yml").read_text()
    pip_section = env.split("- pip:", 1)[1]
    pip_specs = [m.group(1) for m in re.finditer(r"^\s+- (?!-e)(\S+)\s*$", pip_section, re.M)]
    assert sorted(pip_specs) == sorted(declared)  # same packages, same version ranges
    assert "- -e ." in env


def test_make_targets_create_the_venv_and_pin_torch():
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile
    for target in ("demo", "test", "lab", "bench"):
        assert re.search(rf"^{target}:[^\n]*\$\(STAMP\)", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert _names(["torch>=2.4"]) == {"torch"}


def test_the_transformers_bound_is_the_one_that_builds_the_courses_model():
    """pyproject's lower bound on transformers is where GPT-2's residual init scale came back (model.py says which):
    below it π_ref is another model (model.check_scaled_init refuses to build it)."""
    from dpo_teach.model import SCALED_INIT_SINCE, unscaled_init

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (bound,) = [spec for spec in project["dependencies"] if _names([spec]) == {"transformers"}]
    assert bound == f"transformers>={'.'.join(map(str, SCALED_INIT_SINCE))}", bound
    assert unscaled_init("5.0.0") and unscaled_init("5.14.1") and not unscaled_init(bound.split(">=")[1] + ".0")


def test_make_help_names_every_make_command():
    """`make clean` and `make browser` were rules that `make help` never mentioned: each rule a user can run (all
    but help itself and the set-up stamp) has a line of its own there, and each line names a rule."""
    makefile = (ROOT / "Makefile").read_text()
    rules = {target for targets in re.findall(r"^([a-z][\w .-]*):(?!=)", makefile, re.MULTILINE)
             for target in targets.split()} - {"help"}
    help_text = makefile.split("\nhelp:\n", 1)[1].split("\n\n", 1)[0]
    described = set(re.findall(r"\bmake ([a-z][\w-]*)", help_text))
    assert rules - described == set(), f"rules without a line in `make help`: {sorted(rules - described)}"
    assert described - rules == set(), f"`make help` names what is no rule: {sorted(described - rules)}"


def test_make_clean_deletes_results_but_never_a_folder_of_grades(tmp_path):
    """`make clean` was `rm -rf results`, and `dpo-teach grade` writes to results/grades by default: an instructor who
    tidied up lost a class's grades, feedback and an interrupted batch's journal. Folders of grades (also nested, and
    one that holds only the journal) stay whole and are named; everything else in results/ goes, and the caches."""
    import shutil
    import subprocess
    import sys

    from dpo_teach.grading.submissions import JOURNAL_FILE, REPORT_FILES

    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "clean.py", tmp_path / "scripts" / "clean.py")
    files = {"results/demo/metrics.json": "{}", "results/gradescope/01.zip": "x", "results/bench.json": "{}",
             "results/grades/grades.json": "{}", "results/grades/feedback/alice.md": "# alice",
             "results/hw3/grades/grades.csv": "x", "results/hw3/solutions/01.ipynb": "{}",
             "results/hw4/grades.partial.jsonl": "{}", "results/hw4/notes.txt": "mine",
             ".pytest_cache/v/x": "", ".ruff_cache/x": "", "outside/keep.txt": "keep"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "results" / "link").symlink_to(tmp_path / "outside")  # a link goes, never what it points to
    done = subprocess.run(["make", "-s", "clean", f"PYTHON={sys.executable}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["Makefile", "outside/keep.txt", "results/grades/feedback/alice.md", "results/grades/grades.json",
                    "results/hw3/grades/grades.csv", "results/hw4/grades.partial.jsonl", "results/hw4/notes.txt",
                    "scripts/clean.py"], left
    for kept in ("results/grades/", "results/hw3/grades/", "results/hw4/"):
        assert f"kept {kept}, which holds grades" in done.stdout, done.stdout
    clean = (ROOT / "scripts" / "clean.py").read_text()
    assert set(re.search(r"GRADES = \(([^)]*)\)", clean).group(1).replace('"', "").split(", ")) == \
        {*REPORT_FILES, JOURNAL_FILE}  # the names that mark a folder of grades are the grader's
    subprocess.run(["make", "-s", "clean", f"PYTHON={sys.executable}"], cwd=tmp_path, check=True, timeout=60)
    shutil.rmtree(tmp_path / "results")  # and with no results/ at all
    assert subprocess.run(["make", "-s", "clean", f"PYTHON={sys.executable}"], cwd=tmp_path,
                          timeout=60).returncode == 0


@pytest.mark.parametrize("workers, runs", [("abc", False), ("-1", False), ("", False), ("2 3", False), ("1a", False),
                                           ("0", True), ("2", True), ("auto", True)])
def test_make_test_refuses_a_worker_count_before_any_set_up(workers, runs):
    """`make test PYTEST_WORKERS=abc` was refused by pytest only after the set-up, ruff and the browser's install;
    `PYTEST_WORKERS=-1` ran in one process without a word."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under make test
    done = subprocess.run(["make", "--no-print-directory", "-n", "test", f"PYTEST_WORKERS={workers}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    if runs:
        assert done.returncode == 0 and f"pytest -q -n {workers} " in done.stdout, done.stderr
    else:
        assert done.returncode == 2 and not done.stdout, done.stdout  # nothing set up, linted or installed first
        assert f"PYTEST_WORKERS={workers}: pass a number of workers (0: one process) or auto" in done.stderr
