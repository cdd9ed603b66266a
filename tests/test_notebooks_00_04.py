"""The student notebooks (every master's, 00–05 and 07) as CI runs them: headless, fast mode, top to bottom, in a
fresh kernel each.

Each must finish without a cell error although every exercise is still a stub (a failing `grader.check` prints
feedback, it does not raise). Every committed notebook, 06 included, is stored clean. How long they take (CI's budget
of 5 minutes per group of `bench_notebooks.FAST_GROUPS`) is a benchmark's target, `make bench-notebooks`, not a
timed test: wall time on a shared machine says more about the other jobs than about the notebooks.

Each notebook runs once per suite, whichever test needs it first (``notebook_runs`` in conftest.py). Under
pytest-xdist each notebook's two tests are one work unit, the notebooks are spread over the workers, and the tests
that read several of them run last (``work_unit`` in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from dpo_teach.grading import MASTERS, NOTEBOOKS
from dpo_teach.site_pages import NOT_FOR_STUDENTS  # the words a student's page may not hold either

NAMES = [p.stem for p in sorted(MASTERS.glob("*.ipynb"))]


class Executed:
    """``executed[name]``: student notebook ``name`` run headless in fast mode in a fresh kernel, once per suite
    (``notebook_runs`` in conftest.py): ``{"nb", "seconds", "error"}``. Iterating gives every name."""

    def __init__(self, runs):
        self.runs = runs

    def __getitem__(self, name: str) -> dict:
        return self.runs.get(NOTEBOOKS / f"{name}.ipynb", fast=True)

    def __iter__(self):
        return iter(NAMES)


@pytest.fixture
def executed(notebook_runs):
    return Executed(notebook_runs)


@pytest.mark.parametrize("name", NAMES)
def test_student_notebook_runs_headless(executed, name):
    result = executed[name]
    assert result["error"] is None, f"{name} stopped: {result['error']}"
    run_as = Path(result["file"])  # the whole notebook ran under a browser's name, outside the repository
    assert run_as.name == f"{name} (1).ipynb" and NOTEBOOKS.resolve() not in run_as.resolve().parents
    assert result["left_in_tmp"] == [], f"{name} left files in the temporary folder after its kernel stopped"


def outputs(nb, kind: str) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == kind]


@pytest.mark.parametrize("name", NAMES)
def test_every_check_fails_on_the_stubs_and_says_why(executed, name):
    nb = executed[name]["nb"]
    checks = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.startswith("grader.check(")]
    assert checks, f"{name} has no check cells"
    for cell in checks:
        text = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
        assert "❌ Test case failed" in text, f"{name}: {cell.source} did not fail on the stub: {text[:200]}"
    assert not outputs(nb, "error")


def test_notebooks_draw_figures_and_the_widget(executed):
    for name in NAMES[1:]:
        assert any("image/png" in o.get("data", {}) for o in outputs(executed[name]["nb"], "display_data")), name
    widget_views = [o for o in outputs(executed["01_kl_objective"]["nb"], "display_data")
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views, "notebook 01's β slider did not render"


@pytest.mark.parametrize("name", [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))])
def test_committed_notebooks_are_clean(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit notebooks without outputs"
    from dpo_teach.grading.student import SETUP_CHECK

    assert code[0].source == SETUP_CHECK, "first the set-up check (says how to install the package where it is missing)"
    assert 'FAST = os.environ.get("DPO_TEACH_FAST", "0") == "1"' in code[1].source
    assert nb.metadata["kernelspec"]["name"] == "python3"


# How the course was made, which a student's notebook never talks about: its tracker, its test suite, its CI, the
# solution ("master") versions of the notebooks.


@pytest.mark.parametrize("name", [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))])
def test_notebooks_speak_to_students_not_about_how_the_course_was_made(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    found = [(i, m.group(0)) for i, cell in enumerate(nb.cells) for m in NOT_FOR_STUDENTS.finditer(cell.source)]
    assert not found, f"{name}: cells talk about how the course was made (cell, words): {found}"
