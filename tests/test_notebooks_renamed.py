"""Student notebooks under any file name (issue 14): a browser download or "Make a copy" gives
``07_variants_and_pitfalls (1).ipynb``, whose grader cell must still find the notebook's tests; and a notebook opened
where the package is not installed says how to install it, in one message.

Cheap on purpose: the renamed copies run in one kernel, each in a folder outside the repository, cut to what the
grader needs (its set-up cells up to the grader, the answer cells, the check cells; graded names are defined only in
answer cells).
The whole notebooks also run to their end renamed, outside the repository: the suite's one run of each student
notebook uses the name ``NN_name (1).ipynb`` (``NotebookRuns`` in conftest.py, asserted in
tests/test_notebooks_00_04.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

from dpo_teach.grading import MASTERS, NOTEBOOKS
from dpo_teach.grading.student import SETUP_CHECK, assignment_of, find_notebook
from dpo_teach.headless import notebook_client

NAMES = [p.stem for p in sorted(MASTERS.glob("*.ipynb"))]


def grader_cells_only(nb):
    """The cells up to and including the grader, then only answer cells and ``grader.check`` cells."""
    keep, setup = [], True
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        answer = "otter_answer_cell" in cell.metadata.get("tags", [])
        if setup or answer or cell.source.startswith("grader.check("):
            keep.append(cell)
        setup = setup and "find_notebook(" not in cell.source
    nb.cells = keep
    return nb


def errors(cells) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in cells for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.fixture(scope="module")
def renamed_runs(tmp_path_factory) -> dict[str, list]:
    """Every graded notebook, renamed and cut, run in fast mode in one kernel (its imports paid once), each in its
    own folder outside the repository: ``{name: its executed cells}``."""
    downloads = tmp_path_factory.mktemp("Downloads")
    cells, spans = [], {}
    for name in NAMES:
        folder = downloads / name  # only the notebook, under a browser's name
        folder.mkdir()
        copy = Path(shutil.copy(NOTEBOOKS / f"{name}.ipynb", folder / f"{name} (1).ipynb"))
        cells.append(nbformat.v4.new_code_cell(f"import os\nos.chdir({str(folder)!r})"))  # as Jupyter starts it
        start = len(cells)
        cells += grader_cells_only(nbformat.read(copy, as_version=4)).cells
        spans[name] = (start, len(cells))
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    old = os.environ.get("DPO_TEACH_FAST")
    os.environ["DPO_TEACH_FAST"] = "1"
    try:
        notebook_client(nb, warm=True, timeout=300, kernel_name="python3", allow_errors=True,
                        resources={"metadata": {"path": str(downloads)}}).execute()
    finally:
        os.environ.pop("DPO_TEACH_FAST") if old is None else os.environ.__setitem__("DPO_TEACH_FAST", old)
    return {name: nb.cells[a:b] for name, (a, b) in spans.items()}


@pytest.mark.parametrize("name", NAMES)
def test_a_renamed_copy_finds_its_tests(renamed_runs, name):
    cells = renamed_runs[name]
    assert not errors(cells), f"{name} (1).ipynb: {errors(cells)}"
    checks = [c for c in cells if c.source.startswith("grader.check(")]
    assert checks, f"{name} has no check cells"
    for cell in checks:  # each check ran its public tests (the stubs fail them) instead of missing the file
        text = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
        assert "Test case failed" in text or "passed" in text, f"{name}: {cell.source}: {text[:300]}"


def test_every_student_notebook_checks_its_setup_first_and_finds_its_own_file():
    for name in NAMES:
        code = [c.source for c in nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
                if c.cell_type == "code"]
        assert code[0] == SETUP_CHECK, name
        grader = [s for s in code if "otter.Notebook(" in s]
        assert grader == [s for s in code if f'otter.Notebook(find_notebook("{name}"))' in s], name
        assert f'"{name}.ipynb"' not in "\n".join(code), f"{name} still names its own file"


def test_without_the_package_the_notebook_says_how_to_install_it(tmp_path):
    """The set-up check in a kernel that cannot import dpo_teach: one message, no traceback, and Run All stops."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import sys\nsys.modules['dpo_teach'] = None  # as if it were not installed"),
        nbformat.v4.new_code_cell(SETUP_CHECK),
        nbformat.v4.new_code_cell("print('not reached')"),
    ])
    with pytest.raises(Exception, match="SetupError"):
        notebook_client(nb, timeout=60, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    (error,) = nb.cells[1].outputs
    assert error.output_type == "error" and error.ename == "SetupError"
    (message,) = error.traceback  # the whole of what Jupyter shows
    assert "'dpo_teach'" in message and "make lab" in message and "pip install -e ." in message
    assert not nb.cells[2].get("outputs")


@pytest.fixture
def a_copy(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    return Path(shutil.copy(NOTEBOOKS / "01_kl_objective.ipynb", folder / "homework.ipynb"))


def test_find_notebook_prefers_the_kernels_own_file(a_copy, monkeypatch):
    other = Path(shutil.copy(a_copy, a_copy.parent / "01_kl_objective.ipynb"))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert find_notebook("01_kl_objective", cwd=a_copy.parent) == str(other)  # by name, without a session
    monkeypatch.setenv("JPY_SESSION_NAME", str(a_copy))  # Jupyter started this kernel for homework.ipynb
    assert find_notebook("01_kl_objective", cwd=a_copy.parent) == str(a_copy)
    other.unlink()
    monkeypatch.setenv("JPY_SESSION_NAME", str(other))  # renamed while the kernel ran: found by its metadata
    assert find_notebook("01_kl_objective", cwd=a_copy.parent) == str(a_copy)
    assert assignment_of(a_copy) == "01_kl_objective"


def test_find_notebook_skips_other_assignments_and_says_what_is_missing(tmp_path, monkeypatch):
    import importlib

    import otter

    assign = importlib.import_module("dpo_teach.grading.assign")  # the module, not the function of that name
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    shutil.copy(NOTEBOOKS / "02_bradley_terry.ipynb", tmp_path / "01_kl_objective.ipynb")  # misnamed 02
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert find_notebook("01_kl_objective", cwd=tmp_path) == str(NOTEBOOKS / "01_kl_objective.ipynb")  # clone
    monkeypatch.setattr(assign, "NOTEBOOKS", tmp_path / "nowhere")  # installed without the clone
    with pytest.raises(FileNotFoundError, match="01_kl_objective"):
        find_notebook("01_kl_objective", cwd=tmp_path)
    monkeypatch.setattr(otter.Notebook, "_grading_mode", True)  # otter run: its bundle holds the tests
    assert find_notebook("01_kl_objective", cwd=tmp_path) is None


def test_a_print_left_in_a_correct_answer_does_not_fail_its_check(monkeypatch):
    """otter runs each check as a doctest: a correct ``kl_divergence`` that prints failed every case of its check
    cell ("Expected nothing, Got: debug ..."), while ``dpo-teach grade`` gave it every point. The grader cell's
    ``checks_ignore_prints()`` lets the check pass it; a wrong answer still fails, with its message."""
    import json

    import torch
    from otter.test_files import ok_test

    from dpo_teach.grading.student import checks_ignore_prints

    monkeypatch.setattr(ok_test, "doctest", ok_test.doctest)  # put back after the test
    tests = json.loads((NOTEBOOKS / "01_kl_objective.ipynb").read_text())["metadata"]["otter"]["tests"]
    cases = [case["code"] for case in tests["kl_divergence"]["suites"][0]["cases"]]

    def kl(p, q, wrong=False):
        print("debug", p.shape)
        terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p))
        return (terms.mean if wrong else terms.sum)(-1)

    def run(answer) -> list[tuple[bool, str]]:
        return [ok_test.run_doctest(f"kl {i}", code, {"kl_divergence": answer}) for i, code in enumerate(cases)]

    assert not any(passed for passed, _ in run(kl)[:4])  # what a student saw
    checks_ignore_prints()
    checks_ignore_prints()  # a second run of the grader cell changes nothing more
    assert all(passed for passed, _ in run(kl)), run(kl)
    failed = [text for passed, text in run(lambda p, q: kl(p, q, wrong=True)) if not passed]
    assert failed and any("sum over y (not the mean)" in text for text in failed), failed
