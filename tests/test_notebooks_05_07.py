"""Notebooks 05 (DPO on a small GPT-2) and 07 (variants and pitfalls): what is specific to them.

Shared with every graded notebook, and not repeated here (each run of 05 and 07 costs a minute or two):
- ``tests/test_notebooks_00_04.py`` executes every student notebook headless in fast mode with the exercises still
  stubs, checks that each ``grader.check`` fails on a stub and says why, that figures are drawn, and that all of
  them together fit CI's 5-minute budget. Every pitfall of 07 asserts its own symptom and its fix inside the
  notebook (as does 05 for its claims), so that clean run *is* the check that each was measured.
- ``tests/test_grading.py`` grades the full solutions (full marks, no cell error) and the blank notebooks (0 points,
  no cell error) of every master, checks that the committed notebooks and bundles are what ``make assign`` makes,
  and that no solution line or hidden test reaches a student notebook.
``test_the_shared_tests_cover_05_and_07`` fails if either stops doing so for 05 and 07.

Here: deliberately wrong submissions, each of which must lose exactly the points of the question it breaks; the
TRL part of 07 without TRL installed. Full-mode timings are a benchmark (``make bench-notebooks``), not a test.
"""

from __future__ import annotations

import shutil
import sys

import nbformat
import pytest
import test_grading as shared_grading
import test_notebooks_00_04 as shared_notebooks

from dpo_teach import grading

NAMES = ["05_dpo_on_gpt2", "07_variants_and_pitfalls"]

# Deliberately wrong submissions: (assignment, text that finds the answer cell, replacement, the question it breaks).
WRONG = {
    "mask_includes_prompt": ("05_dpo_on_gpt2", "def completion_mask(", """
def completion_mask(attention_mask, prompt_lengths):
    return attention_mask.long()  # every real token, the prompt included
""", "completion_mask"),
    "logps_averaged": ("05_dpo_on_gpt2", "def sequence_logprobs_from_logits(", """
def sequence_logprobs_from_logits(logits, input_ids, completion_mask):
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask[:, 1:]
    return (logps * mask).sum(-1) / mask.sum(-1)  # the mean over the completion, not the sum
""", "sequence_logprobs"),
    "logps_not_shifted": ("05_dpo_on_gpt2", "def sequence_logprobs_from_logits(", """
def sequence_logprobs_from_logits(logits, input_ids, completion_mask):
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, :, None]).squeeze(-1)
    return (logps * completion_mask).sum(-1)  # token t scored by the logits at t: no shift
""", "sequence_logprobs"),
    "dpo_sign_flipped": ("05_dpo_on_gpt2", "def dpo_loss(", """
import torch.nn.functional as F
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(-beta * (chosen - rejected))  # sign flipped
    return losses, beta * chosen.detach(), beta * rejected.detach()
""", "dpo_loss_again"),
    "ipo_wrong_target": ("07_variants_and_pitfalls", "def ipo_loss(", """
def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    losses = (chosen - rejected - 1 / beta) ** 2  # target 1/β instead of 1/(2β)
    return losses, beta * chosen.detach(), beta * rejected.detach()
""", "ipo_loss"),
    "ipo_wrong_sign": ("07_variants_and_pitfalls", "def ipo_loss(", """
def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    losses = (chosen - rejected + 1 / (2 * beta)) ** 2  # pushes the margin towards −1/(2β)
    return losses, beta * chosen.detach(), beta * rejected.detach()
""", "ipo_loss"),
    "diagnosis_wrong": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
diagnose_small_beta = "b"  # lower β: the wrong direction
""", "diagnose_small_beta"),
}
PASS_PUBLIC = {"logps_averaged", "dpo_sign_flipped", "ipo_wrong_sign", "diagnosis_wrong"}  # only hidden tests catch


def test_the_shared_tests_cover_05_and_07():
    missing = [(module.__name__, name) for module in (shared_notebooks, shared_grading) for name in NAMES
               if name not in module.NAMES]
    assert not missing, f"{missing}: the shared notebook and grading tests no longer cover these; add their headless " \
                        "run and full/blank grading to this module"


@pytest.fixture(scope="module")
def assigned(tmp_path_factory):
    """`make assign` for 05 and 07 only, into a temporary tree, with the solution notebooks."""
    root = tmp_path_factory.mktemp("assign")
    (root / "masters").mkdir()
    for name in NAMES:
        shutil.copy(grading.MASTERS / f"{name}.ipynb", root / "masters")
    grading.assign(root / "masters", root / "notebooks", root / "autograder", solutions=root / "solutions")
    return root



def wrong_submission(solution, find: str, source: str):
    nb = shared_grading.exercises_only(nbformat.read(solution, as_version=4))
    (index,) = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and find in cell.source]
    nb.cells[index].source = source.strip()
    return nb


@pytest.fixture(scope="module")
def graded(assigned, notebook_reference, tmp_path_factory):
    """One `grade` run over the wrong submissions (cut to their exercises)."""
    folder = tmp_path_factory.mktemp("submissions")
    for kind, (name, find, source, _) in WRONG.items():
        nbformat.write(wrong_submission(assigned / "solutions" / f"{name}.ipynb", find, source),
                       folder / f"{kind}_{name}.ipynb")
    report = grading.grade(folder, tmp_path_factory.mktemp("grades"), autograder=assigned / "autograder",
                           cell_timeout=90, timeout=300, jobs=2, log=lambda *a: None)
    return {r["student"]: r for r in report["results"]}


def manifest_points(assigned, name: str) -> dict[str, float]:
    import json

    manifest = json.loads((assigned / "autograder" / f"{name}.json").read_text())
    return {q["name"]: float(q["points"]) for q in manifest["questions"] if not q["manual"]}


def test_manifests_list_the_exercises(assigned):
    assert manifest_points(assigned, "05_dpo_on_gpt2") == {"completion_mask": 2, "sequence_logprobs": 2,
                                                           "dpo_loss_again": 1}
    assert manifest_points(assigned, "07_variants_and_pitfalls") == {
        "ipo_loss": 2, "diagnose_flat_loss": 1, "diagnose_falling_chosen": 1, "diagnose_small_beta": 1,
        "diagnose_length": 1}


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_a_wrong_submission_loses_exactly_its_question(graded, assigned, kind):
    name, _, _, broken = WRONG[kind]
    row = graded[f"{kind}_{name}"]
    expected = {q: 0.0 if q == broken else p for q, p in manifest_points(assigned, name).items()}
    assert row["status"] == "graded" and not row["errors"], row["reason"]
    assert {q: r["score"] for q, r in row["questions"].items()} == expected, row["reason"]
    assert broken in row["reason"]
    if kind in PASS_PUBLIC:
        assert row["questions"][broken]["public_passed"], f"{kind} should pass the public check and still lose"


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
