"""Notebooks 05 (DPO on a small GPT-2) and 07 (variants and pitfalls): what is specific to them.

Shared with every graded notebook, and not repeated here (each run of 05 and 07 costs a minute or two):
- ``tests/test_notebooks_00_04.py`` executes every student notebook headless in fast mode with the exercises still
  stubs, checks that each ``grader.check`` fails on a stub and says why, and that figures are drawn (run times are
  a benchmark, ``make bench-notebooks``, not a test). Every pitfall of 07 asserts its own symptom and its fix
  inside the notebook (as does 05 for its claims), so that clean run *is* the check that each was measured.
- ``tests/test_grading.py`` grades the full solutions (full marks, no cell error), the blank notebooks (0 points, no
  cell error) and deliberately wrong submissions of every master (05 and 07 included: each must lose exactly the
  points of the question it breaks), checks that the committed notebooks and bundles are what ``make assign``
  makes, and that no solution line or hidden test reaches a student notebook.
Both find their notebooks in ``course/masters``, so a new master is covered without a change there.

Here: the questions and points of 05 and 07; the TRL part of 07 without TRL installed. Full-mode timings are a
benchmark (``make bench-notebooks``), not a test.
"""

from __future__ import annotations

import sys

import nbformat
from test_grading import manifest_points

from dpo_teach import grading


def test_manifests_list_the_exercises(assigned):
    assert manifest_points(assigned, "05_dpo_on_gpt2") == {"completion_mask": 2, "sequence_logprobs": 2,
                                                           "dpo_loss_again": 1, "dpo_training_step": 3}
    assert manifest_points(assigned, "07_variants_and_pitfalls") == {
        "ipo_loss": 2, "cdpo_loss": 2, "diagnose_flat_loss": 1, "diagnose_falling_chosen": 1, "diagnose_small_beta": 1,
        "diagnose_length": 1}


def test_without_trl_part_3_of_07_says_so_and_runs_on(notebook_reference, monkeypatch, capsys):
    """The set-up cells and every cell of Part 3, executed here with `trl` made unimportable."""
    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.setenv("DPO_TEACH_FAST", "1")
    nb = nbformat.read(grading.NOTEBOOKS / "07_variants_and_pitfalls.ipynb", as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    start = next(i for i, source in enumerate(code) if "HAVE_TRL = trl_bridge.trl_available()" in source)
    end = next(i for i, source in enumerate(code) if source.startswith("hh = ["))
    setup = [source for source in code[:start] if "FAST = os.environ" in source or "def run(" in source]
    namespace: dict = {}
    for source in setup + code[start:end + 1]:
        exec(compile(source, "07_variants_and_pitfalls", "exec"), namespace)  # noqa: S102 - our own notebook
    out = capsys.readouterr().out
    assert namespace["HAVE_TRL"] is False
    assert "TRL is not installed" in out and "pip install 'dpo-teach[peers]'" in out
    assert out.count("skipped (no TRL)") == 3
