"""The grading workflow end to end: `make assign` reproduces the committed files without leaking solutions, and
`dpo-teach grade` scores a folder of submissions as expected.

The submissions are made here from the masters (nothing is committed under tests/): the answer keys that
otter assign writes ("full"), the student notebooks ("blank"), the solutions with one answer replaced by a classic
mistake ("wrong"), and files that are broken in the ways a real batch contains. Blank and wrong submissions are cut
to their exercises (`exercises_only`): every student notebook's whole run is already tested headless in
tests/test_notebooks_00_04.py. One `grade` run covers the acceptance table of every master; a second, with short
time limits, covers endless loops and a notebook that must be killed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from test_exercises_new import WRONG as NEW_EXERCISE_MISTAKES  # tests/ is on sys.path (pytest's rootdir import)

from dpo_teach import grading
from dpo_teach.grading.assign import solution_lines
from dpo_teach.grading.submissions import detect_assignment, student_name

NAMES = [p.stem for p in sorted(grading.MASTERS.glob("*.ipynb"))]

DPO_SIGN_FLIPPED = """
import torch.nn.functional as F
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(-beta * (chosen - rejected))  # sign flipped
    return losses, beta * chosen.detach(), beta * rejected.detach()
"""  # in 03, and again in 05

DPO_NAIVE = """
import torch
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    losses = -torch.log(torch.sigmoid(beta * (chosen - rejected)))  # inf once σ underflows to 0
    return losses, beta * chosen.detach(), beta * rejected.detach()
"""  # one rule in 03 and 05: finite for huge margins in float32 and in float64

# Deliberately wrong submissions: (assignment, text that finds the answer cell, replacement cell, the only question
# that must lose points).
WRONG = {
    "kl_reversed": ("01_kl_objective", "def kl_divergence(", """
def kl_divergence(p, q):
    return (q * (torch.log(q) - torch.log(p))).sum(-1)  # KL(q‖p): the wrong direction
""", "kl_divergence"),
    "bt_swapped": ("02_bradley_terry", "def bt_probability(", """
def bt_probability(reward_a, reward_b):
    return torch.sigmoid(reward_b - reward_a)  # arguments swapped
""", "bt_probability"),
    "dpo_sign_flipped": ("03_deriving_dpo", "def dpo_loss(", DPO_SIGN_FLIPPED, "dpo_loss"),
    "dpo_no_reference": ("03_deriving_dpo", "def dpo_loss(", """
import torch.nn.functional as F
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    losses = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))  # reference terms dropped
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()
""", "dpo_loss"),
    "dpo_beta_one_side": ("03_deriving_dpo", "def dpo_loss(", """
import torch.nn.functional as F
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * chosen - rejected)  # β applied to the chosen side only
    return losses, beta * chosen.detach(), beta * rejected.detach()
""", "dpo_loss"),
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
    "gpt2_dpo_sign_flipped": ("05_dpo_on_gpt2", "def dpo_loss(", DPO_SIGN_FLIPPED, "dpo_loss_again"),
    "dpo_naive_log_sigmoid": ("03_deriving_dpo", "def dpo_loss(", DPO_NAIVE, "dpo_loss"),
    "gpt2_dpo_naive_log_sigmoid": ("05_dpo_on_gpt2", "def dpo_loss(", DPO_NAIVE, "dpo_loss_again"),
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
    # the loss right in value, no gradient to log π_θ(y_l): it trains only the chosen side (public since 12-06)
    "dpo_rejected_detached": ("03_deriving_dpo", "def dpo_loss(", """
import torch.nn.functional as F
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps.detach() - ref_rejected_logps  # detached before the loss
    return -F.logsigmoid(beta * (chosen - rejected)), beta * chosen.detach(), beta * rejected
""", "dpo_loss"),
    "ipo_rejected_reward_attached": ("07_variants_and_pitfalls", "def ipo_loss(", """
def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    return (chosen - rejected - 1 / (2 * beta)) ** 2, beta * chosen.detach(), beta * rejected  # not detached
""", "ipo_loss"),
    "bt_loss_detached": ("02_bradley_terry", "def bt_loss(", """
import torch.nn.functional as F
def bt_loss(reward_chosen, reward_rejected):
    return -F.logsigmoid(reward_chosen - reward_rejected).detach()  # no gradient reaches the reward model
""", "bt_loss"),
    "optimal_policy_global_max": ("01_kl_objective", "def optimal_policy(", """
import torch
def optimal_policy(pi_ref, r, beta):
    weights = pi_ref * torch.exp((r - r.max()) / beta)  # the whole tensor's max: a row far below it underflows to 0/0
    return weights / weights.sum(-1, keepdim=True)
""", "optimal_policy"),
    "diagnosis_wrong": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
diagnose_small_beta = "b"  # lower β: the wrong direction
""", "diagnose_small_beta"),
}
WRONG.update(NEW_EXERCISE_MISTAKES)  # 03's gradient weight, 05's training step, 07's cDPO: graded in this one run
# Only hidden tests catch these: they pass the public check and must still lose the question's points. Every other
# mistake fails the public check (`grader.check`) at once: a multiple-choice letter is checked only for its format,
# and 05's training step is checked in public for each requirement of its text that a student can see go wrong
# (zero_grad, train mode, the mean, clipping, the precomputed log-probs, the loss_fn passed in, the step as a whole,
# its metrics, no gradient reaching the reference; before, several were hidden: a student learnt of them only from the
# grade, and the notebook's own probe of the step sent them to a check that had passed). Its cases for one
# requirement run only where the step as a whole is right: else every one of them fired, each naming another step.
PASS_PUBLIC = {"diagnosis_wrong"}


def cell_index(nb, text: str) -> int:
    return next(i for i, cell in enumerate(nb.cells) if text in cell.source)


def replaced(nb, find: str, source: str):
    """``nb`` with its one code cell that contains ``find`` replaced by ``source``."""
    (index,) = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and find in cell.source]
    nb.cells[index].source = source.strip()
    return nb


def exercises_only(nb):
    """The notebook's set-up cells (up to the grader) and its answer and check cells; the runs in between go.

    Graded names are defined only in answer cells, so a submission cut this way grades exactly as the whole one
    would, in seconds instead of minutes.
    """
    keep, setup = [], True
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        answer = "otter_answer_cell" in tags or "otter_assign_solution_cell" in tags
        if cell.cell_type != "code" or setup or answer or cell.source.startswith("grader.check("):
            keep.append(cell)
        setup = setup and "otter.Notebook(" not in cell.source
    nb.cells = keep
    return nb


def exercise_solution(assigned, name: str):
    """The solution notebook of assignment ``name``, cut to its exercises (what most grading tests submit)."""
    return exercises_only(nbformat.read(assigned / "solutions" / f"{name}.ipynb", as_version=4))


def manifest_points(assigned, name: str) -> dict[str, float]:
    manifest = json.loads((assigned / "autograder" / f"{name}.json").read_text())
    return {q["name"]: float(q["points"]) for q in manifest["questions"] if not q["manual"]}


def expected_scores(assigned) -> dict[str, dict[str, float]]:
    """student → question → score, for the acceptance folder."""
    expected = {}
    for name in NAMES:
        points = manifest_points(assigned, name)
        expected[f"full_{name}"] = points
        expected[f"blank_{name}"] = dict.fromkeys(points, 0.0)
    for kind, (name, _, _, broken) in WRONG.items():
        expected[f"{kind}_{name}"] = {q: 0.0 if q == broken else p for q, p in manifest_points(assigned, name).items()}
    expected["broken_03_deriving_dpo"] = dict.fromkeys(manifest_points(assigned, "03_deriving_dpo"), 0.0)
    return expected


@pytest.fixture(scope="module")
def graded(assigned, notebook_reference, tmp_path_factory):
    """One `grade` run over full, blank, wrong and broken submissions."""
    folder = tmp_path_factory.mktemp("submissions")
    for name in NAMES:
        shutil.copy(assigned / "solutions" / f"{name}.ipynb", folder / f"full_{name}.ipynb")
        blank = nbformat.read(assigned / "notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.write(exercises_only(blank), folder / f"blank_{name}.ipynb")
    for kind, (name, find, source, _) in WRONG.items():
        solution = exercises_only(nbformat.read(assigned / "solutions" / f"{name}.ipynb", as_version=4))
        nbformat.write(replaced(solution, find, source), folder / f"{kind}_{name}.ipynb")
    (folder / "broken_03_deriving_dpo.ipynb").write_text('{"cells": [{"cell_type": "code", "source": "1 +')
    out = tmp_path_factory.mktemp("grades")
    # limits far above any honest cell, also on a busy CI machine (the robustness test below checks the limits)
    report = grading.grade(folder, out, autograder=assigned / "autograder", cell_timeout=300, timeout=900, jobs=2)
    return report, out


def test_committed_student_notebooks_are_what_assign_makes(assigned):
    for name in NAMES:
        committed = grading.NOTEBOOKS / f"{name}.ipynb"
        assert committed.is_file(), f"{committed} is missing: run `make assign` and commit notebooks/"
        assert committed.read_bytes() == (assigned / "notebooks" / f"{name}.ipynb").read_bytes(), \
            f"{committed} differs from what `make assign` makes from course/masters/{name}.ipynb: run `make assign`"


def test_committed_bundles_are_what_assign_makes(assigned):
    for name in NAMES:
        for suffix in [".zip", ".json"]:
            committed = grading.AUTOGRADER / f"{name}{suffix}"
            assert committed.read_bytes() == (assigned / "autograder" / f"{name}{suffix}").read_bytes(), \
                f"{committed} is stale: run `make assign`"


def test_no_solution_leaks_into_student_notebooks(assigned):
    for name in NAMES:
        secret = solution_lines(grading.MASTERS / f"{name}.ipynb")
        assert secret, f"{name}: found no solution lines to look for"
        nb = nbformat.read(assigned / "notebooks" / f"{name}.ipynb", as_version=4)
        sources = "\n".join(cell.source for cell in nb.cells)
        leaked = [line for line in secret if line in sources]
        assert not leaked, f"{name}: solution lines in the student notebook: {leaked[:3]}"
        cases = [case for test in nb.metadata["otter"]["tests"].values() for suite in test["suites"]
                 for case in suite["cases"]]
        assert cases and not any(case["hidden"] for case in cases), f"{name}: hidden tests in the metadata"


def test_solution_notebooks_are_answer_keys(assigned):
    """What `make assign SOLUTIONS=…` writes, for an instructor to grade first and to publish after the deadline:
    every answer of the master in place, no marker of otter's and no stub a student starts from (they grade in full:
    the acceptance table)."""
    for name in NAMES:
        master = nbformat.read(grading.MASTERS / f"{name}.ipynb", as_version=4)
        answers, stubs = [], []
        for cell in (c for c in master.cells if c.cell_type == "code"):
            block = None
            for line in cell.source.splitlines():
                if marker := re.search(r"# (BEGIN|END) (SOLUTION|PROMPT)", line):
                    block = marker.group(2) if marker.group(1) == "BEGIN" else None
                elif block == "SOLUTION" or re.search(r"# ?SOLUTION$", line.rstrip()):
                    answers.append(re.sub(r"\s*# ?SOLUTION$", "", line.rstrip()))
                elif block == "PROMPT" and line.strip() not in ("", '"""'):
                    stubs.append(line)
        key = nbformat.read(assigned / "solutions" / f"{name}.ipynb", as_version=4)
        code = [line for c in key.cells if c.cell_type == "code" for line in c.source.splitlines()]
        assert answers and not [a for a in answers if a not in code], f"{name}: answers missing"
        assert not [s for s in stubs if s in code], f"{name}: a student's stub is in the answer key"
        marks = [line for line in code if re.search(r"# ?(BEGIN|END) (SOLUTION|PROMPT)|# ?SOLUTION\b", line)]
        assert not marks, f"{name}: otter's markers are in the answer key: {marks[:3]}"


def test_an_answer_key_reads_otters_markers_as_otter_does(tmp_path):
    """The spellings otter accepts, none of which the masters use today: each leaves the answer and no marker."""
    from dpo_teach.grading.assign import _answer_key

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "x = 1  #SOLUTION\ny = 2  # SOLUTION NO PROMPT\nu = 5  # SOLUTION: from Eq. 7\n# BEGIN SOLUTION  # a note\n"
        "z = 3\n    # END SOLUTION\n\"\"\" # BEGIN PROMPT\nz = ...\n\"\"\" # END PROMPT\nprint(z)  # not a marker")]
    nbformat.write(nb, tmp_path / "key.ipynb")
    key = nbformat.reads(_answer_key(tmp_path / "key.ipynb"), as_version=4)
    assert key.cells[0].source == "x = 1\ny = 2\nu = 5\nz = 3\nprint(z)  # not a marker"


def test_student_stubs_raise_not_implemented(assigned):
    """Every answer cell that defines a function raises NotImplementedError (a `concept_x = ...` answer is exempt)."""
    for name in NAMES:
        master = nbformat.read(grading.MASTERS / f"{name}.ipynb", as_version=4)
        has_function_exercises = any(c.cell_type == "code" and "SOLUTION" in c.source and "def " in c.source
                                     for c in master.cells)
        nb = nbformat.read(assigned / "notebooks" / f"{name}.ipynb", as_version=4)
        functions = [c.source for c in nb.cells if c.cell_type == "code"
                     and "otter_answer_cell" in c.metadata.get("tags", []) and "def " in c.source]
        assert functions or not has_function_exercises, f"{name}: no answer cell defines a function"
        assert all("raise NotImplementedError" in f for f in functions), name


def test_assign_touches_only_notebooks_it_generates(tmp_path):
    masters, notebooks = tmp_path / "masters", tmp_path / "notebooks"
    masters.mkdir()
    notebooks.mkdir()
    shutil.copy(grading.MASTERS / "00_start_here.ipynb", masters)
    (notebooks / "06_ppo_vs_dpo.ipynb").write_text("hand-written, not generated")
    assert grading.assign(masters, notebooks, tmp_path / "autograder") == ["00_start_here"]
    assert (notebooks / "06_ppo_vs_dpo.ipynb").read_text() == "hand-written, not generated"
    assert sorted(p.name for p in notebooks.iterdir()) == ["00_start_here.ipynb", "06_ppo_vs_dpo.ipynb"]


def test_grade_scores_the_acceptance_folder(graded, assigned):
    report, out = graded
    rows = {Path(r["file"]).stem: r for r in report["results"]}  # a flat folder: the student is "full", "blank", ...
    expected = expected_scores(assigned)
    assert sorted(rows) == sorted(expected)
    for student, scores in expected.items():
        got = {q: r["score"] for q, r in rows[student]["questions"].items()}
        assert got == scores, f"{student}: {got} != {scores}; reason: {rows[student]['reason']}"
        assert rows[student]["score"] == sum(scores.values())
    assert rows["broken_03_deriving_dpo"]["status"] == "invalid"
    assert "not a valid notebook" in rows["broken_03_deriving_dpo"]["reason"]


def test_grade_writes_matching_csv_and_json(graded, assigned):
    report, out = graded
    assert json.loads((out / "grades.json").read_text()) == json.loads(json.dumps(report))
    with open(out / "grades.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(report["results"])
    for line, row in zip(table, report["results"]):
        assert line["student"] == row["student"] and float(line["score"]) == row["score"]
        for q, result in row["questions"].items():
            assert float(line[q]) == result["score"]
    full = report["students"]["full"]  # full_01_kl_objective.ipynb, full_02_bradley_terry.ipynb, ...: one student
    assert full["score"] == full["possible"] > 0 and sorted(full["assignments"]) == NAMES, full
    with open(out / "grades_by_student.csv", newline="") as f:  # a row per student, the same totals
        by_student = {line["student"]: line for line in csv.DictReader(f)}
    expected = {}  # student -> {assignment: score}, from the acceptance table, not from the grader's totals
    for stem, scores in expected_scores(assigned).items():
        name = next(n for n in NAMES if stem.endswith(f"_{n}"))
        expected.setdefault(stem[:-len(name) - 1], {})[name] = sum(scores.values())
    assert set(by_student) == set(report["students"]) == set(expected)
    for student, scores in expected.items():
        line = by_student[student]
        assert float(line["total"]) == sum(scores.values()) == report["students"][student]["score"], (student, line)
        assert {n: float(line[n]) for n in NAMES if line[n] != ""} == scores, (student, line)
    possible = sum(sum(manifest_points(assigned, name).values()) for name in NAMES)  # every assignment's, handed in
    assert {line["possible (auto-graded)"] for line in by_student.values()} == {f"{possible:g}"} \
        and full["possible"] == possible


def test_full_solutions_and_blank_notebooks_run_without_cell_errors(graded):
    """Masters execute headless with every test passing; stubs fail only inside their checks."""
    report, _ = graded
    for row in report["results"]:
        if row["student"] in ("full", "blank"):
            assert row["errors"] == [], f"{row['student']}: {row['errors'][:2]}"


def test_each_student_gets_a_feedback_file_that_quotes_no_hidden_test(graded):
    """feedback/<student>.md, one per student of the batch, to hand back: the student's total as the reports count
    it, a line per question with its score and the feedback a student may read (a failed hidden test numbered, the
    instructor's ``hidden_failed`` message never in it), and an unreadable file's reason."""
    report, out = graded
    files = {p.stem: p.read_text(encoding="utf-8") for p in (out / "feedback").iterdir()}
    assert set(files) == {r["student"] for r in report["results"]}
    for student, totals in report["students"].items():
        assert f"{totals['score']:g} of {totals['possible']:g} auto-graded points" in files[student], student
    assert files["full"].count(": passed") == sum(len(r["questions"]) for r in report["results"]
                                                  if r["student"] == "full")
    hidden = []  # (student, the hidden test's message that grades.json keeps for the instructor)
    numbered = 0  # questions whose feedback is a numbered hidden test
    for row in report["results"]:
        for q, result in row["questions"].items():
            if result["score"] < result["possible"] and row["status"] == "graded":
                line = f"- `{q}` 0 / {result['possible']:g}: {' '.join(result['feedback'].split())[:200]}"
                assert line in files[row["student"]], (row["student"], q, line)
                numbered += result["feedback"].startswith("hidden test")
            for failed in result.get("hidden_failed", []):
                message = failed.split(": ", 1)[1]  # the student's own error (a stub's) is also the public test's
                if len(message) > 12 and message not in result["feedback"]:  # "(no message)": in no test's words
                    hidden.append((row["student"], message))
    assert hidden, "no wrong submission failed a hidden test with a message: nothing here checks what is withheld"
    assert numbered, "no question lost its points on a hidden test alone"
    for student, message in hidden:
        assert message not in files[student], (student, message)
    assert "it is not a notebook the grader could read" in files["broken"]


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_a_wrong_submission_loses_exactly_its_question(graded, kind):
    """Its scores (each question's points, the broken one 0) are checked with the acceptance table; here: it is
    graded without a cell error, the reason names the broken question, the public check catches the mistake where it
    can, and the hidden tests catch what the public check lets through."""
    report, _ = graded
    name, _, _, broken = WRONG[kind]
    (row,) = [r for r in report["results"] if Path(r["file"]).stem == f"{kind}_{name}"]
    assert row["status"] == "graded" and not row["errors"], row["reason"]
    assert broken in row["reason"] and row["questions"][broken]["score"] == 0, row["reason"]
    if kind in PASS_PUBLIC:
        assert row["questions"][broken]["public_passed"], f"{kind} should pass the public check and still lose"
    else:
        assert not row["questions"][broken]["public_passed"], f"{kind} should fail the public check (grader.check)"


STUCK_S = 12  # the per-notebook limit of the notebook that must be killed (honest cells here take milliseconds)


@pytest.fixture(scope="module")
def graded_robustness(assigned, tmp_path_factory):
    """A raising cell, an endless loop and deleted cells; a loop inside a graded function; a notebook that
    disables the per-cell alarm and must be killed; a folder per student; a notebook of unknown assignment."""
    folder = tmp_path_factory.mktemp("robustness")
    solution = assigned / "solutions" / "01_kl_objective.ipynb"
    nb = nbformat.read(solution, as_version=4)
    at = cell_index(nb, "world = bandit.default_bandit()")
    nb.cells.insert(at, nbformat.v4.new_code_cell("1 / 0  # raises"))
    nb.cells.insert(at, nbformat.v4.new_code_cell("import time\nwhile True:  # never ends (asleep: no CPU)\n"
                                                  "    time.sleep(1)"))
    del nb.cells[cell_index(nb, 'grader.check("objective")')]
    del nb.cells[cell_index(nb, "grader = otter.Notebook")]
    (folder / "messy").mkdir()
    nbformat.write(nb, folder / "messy" / "homework.ipynb")  # renamed: found through its metadata
    endless = "import time\ndef objective(pi, pi_ref, r, beta):\n    while True:\n        time.sleep(0.5)"
    nbformat.write(replaced(nbformat.read(solution, as_version=4), "def objective(", endless),
                   folder / "loop_01_kl_objective.ipynb")
    stuck = tmp_path_factory.mktemp("stuck")  # graded alongside, with a short per-notebook limit
    nb = nbformat.read(solution, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(
        "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    time.sleep(1)"))
    nbformat.write(nb, stuck / "stuck_01_kl_objective.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), folder / "mystery.ipynb")
    out = tmp_path_factory.mktemp("grades")
    with ThreadPoolExecutor(2) as pool:
        killed = pool.submit(grading.grade, stuck, out / "stuck", autograder=assigned / "autograder",
                             cell_timeout=8, timeout=STUCK_S)
        report = grading.grade(folder, out / "rest", autograder=assigned / "autograder", cell_timeout=8,
                               timeout=240, jobs=2)
        report["results"] += killed.result()["results"]
    return report


def test_grade_survives_loops_errors_and_deleted_cells(graded_robustness):
    rows = {r["student"]: r for r in graded_robustness["results"]}
    messy = rows["messy"]
    assert messy["assignment"] == "01_kl_objective" and messy["score"] == messy["possible"] == 5
    assert any(e.startswith("TimeoutError") for e in messy["errors"]), messy["errors"]
    assert any(e.startswith("ZeroDivisionError") for e in messy["errors"]), messy["errors"]
    loop = rows["loop"]
    assert {q: r["score"] for q, r in loop["questions"].items()} == {"kl_divergence": 2, "objective": 0,
                                                                     "optimal_policy": 2}
    assert "objective (TimeoutError" in loop["reason"]
    stuck = rows["stuck"]
    # it switched off the grader's per-cell alarm: killed at the notebook limit, and flagged for the instructor
    assert stuck["status"] == "flagged" and stuck["score"] == 0 and "per-notebook time limit" in stuck["reason"]
    assert any("signal" in flag for flag in stuck["flags"]), stuck["flags"]
    # killed once in its own code, not run again (a first try that timed out before cell 1, on a busy machine, may
    # come before it: then the row says so)
    assert "while running cell" in stuck["reason"] and stuck["tries"] in (["cell 1"], ["start", "cell 1"]), stuck
    assert ("started twice" in stuck["reason"]) == (len(stuck["tries"]) == 2), stuck["reason"]
    mystery = rows["mystery"]
    assert mystery["status"] == "error" and "which assignment" in mystery["reason"]


def test_find_submissions_and_assignment_detection(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "hw.ipynb").write_text("{}")
    (tmp_path / "bob_02_bradley_terry.ipynb").write_text("{}")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.ipynb").write_text("{}")
    (tmp_path / ".DS_Store").write_text("")
    (tmp_path / "notes.txt").write_text("not a notebook")  # found: its row says what it is
    manifests = {"02_bradley_terry": {}, "03_deriving_dpo": {}}
    found = grading.find_submissions(tmp_path, manifests)
    assert [(s, p.name) for s, p in found] == [("alice", "hw.ipynb"), ("bob", "bob_02_bradley_terry.ipynb"),
                                               ("notes", "notes.txt")]
    assert detect_assignment(found[1][1], None, manifests) == "02_bradley_terry"
    nb = nbformat.v4.new_notebook(metadata={"otter": {"assignment_name": "03_deriving_dpo"}})
    assert detect_assignment(found[0][1], nb, manifests) == "03_deriving_dpo"


@pytest.mark.parametrize("stem, student", [
    ("alice_01_kl_objective", "alice"), ("alice_01_kl_objective (1)", "alice"), ("alice_01_kl_objective-1", "alice"),
    ("alice_01_kl_objective copy", "alice"), ("alice_01_kl_objective - Copy (2)", "alice"),
    ("Copy of alice_01_kl_objective", "alice"), ("01_kl_objective_alice (1)", "alice"), ("alice (1)", "alice"),
    ("jd_2024_01_kl_objective-1", "jd_2024"),  # a number that is part of the name stays
    ("01_kl_objective", "01_kl_objective"), ("01_kl_objective (1)", "01_kl_objective")])  # no name: one "student"
def test_a_flat_files_student_is_its_name_less_the_assignment_and_a_copys_mark(stem, student):
    assert student_name(stem, ["01_kl_objective", "02_bradley_terry"]) == student


def test_a_flat_folder_makes_one_student_across_assignments_and_copies(assigned, tmp_path):
    """Notebooks directly in the folder: the student is the file's name less the assignment's and a copy's mark, so
    alice's 01 and 02 make one total, and a browser's re-download ``(1)`` supersedes her first 01 (the latest is
    graded, once)."""
    folder = tmp_path / "subs"
    folder.mkdir()
    first = folder / "alice_01_kl_objective.ipynb"
    wrong = replaced(exercise_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG["kl_reversed"][2])
    nbformat.write(wrong, first)
    os.utime(first, (time.time() - 3600, time.time() - 3600))
    nbformat.write(exercise_solution(assigned, "01_kl_objective"), folder / "alice_01_kl_objective (1).ipynb")
    nbformat.write(exercise_solution(assigned, "02_bradley_terry"), folder / "alice_02_bradley_terry.ipynb")
    report = grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    rows = {Path(r["file"]).name: (r["student"], r["assignment"], r["status"]) for r in report["results"]}
    assert rows == {"alice_01_kl_objective.ipynb": ("alice", "01_kl_objective", "superseded"),
                    "alice_01_kl_objective (1).ipynb": ("alice", "01_kl_objective", "graded"),
                    "alice_02_bradley_terry.ipynb": ("alice", "02_bradley_terry", "graded")}, rows
    assert report["students"] == {"alice": {"score": 8.0, "possible": 8.0,
                                            "assignments": {"01_kl_objective": 5.0, "02_bradley_terry": 3.0}}}


def test_files_that_are_not_notebooks_get_a_row_that_says_what_to_do(assigned, tmp_path):
    """A notebook saved as ``.IPYNB`` is graded; a ``.py`` or a zip is not, but gets a row of status ``skipped`` that
    says what to do, is named under the table, and costs no one a 0."""
    folder = tmp_path / "subs"
    folder.mkdir()
    nbformat.write(exercise_solution(assigned, "01_kl_objective"), folder / "alice_01_kl_objective.ipynb")
    nbformat.write(exercise_solution(assigned, "01_kl_objective"), folder / "BOB_01_KL_OBJECTIVE.IPYNB")
    (folder / "alice.py").write_text("def kl_divergence(p, q):\n    return (p * (p / q).log()).sum(-1)\n")
    with zipfile.ZipFile(folder / "alice_01.ipynb.zip", "w") as z:
        z.writestr("alice_01.ipynb", "{}")
    report = grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    rows = {Path(r["file"]).name: r for r in report["results"]}
    assert rows["BOB_01_KL_OBJECTIVE.IPYNB"]["status"] == "graded" and rows["BOB_01_KL_OBJECTIVE.IPYNB"]["score"] == 5
    python, archive = rows["alice.py"], rows["alice_01.ipynb.zip"]
    assert python["status"] == archive["status"] == "skipped" and python["possible"] == archive["possible"] == 0
    assert "not a notebook (.py): ask the student for the .ipynb" in python["reason"], python["reason"]
    assert "a .zip archive: unzip it into the submissions folder and grade again" in archive["reason"], archive
    told = {p.stem: p.read_text(encoding="utf-8") for p in (tmp_path / "out" / "feedback").iterdir()}  # to students
    assert "`alice.py`: alice.py is not a notebook (.py): hand in the .ipynb file" in told["alice"], told
    assert "alice_01.ipynb.zip is a .zip archive: hand in the .ipynb file itself, not an archive" in told["alice_01"]
    assert not [t for t in told.values() if "the student" in t or "grade again" in t or str(tmp_path) in t], told
    assert report["students"] == {"alice": {"score": 5.0, "possible": 5.0, "assignments": {"01_kl_objective": 5.0}},
                                  "BOB": {"score": 5.0, "possible": 5.0, "assignments": {"01_kl_objective": 5.0}}}
    summary = grading.format_table(report).splitlines()[-1]
    assert "not graded" in summary and "alice.py" in summary and "alice_01.ipynb.zip" in summary, summary


def test_the_terminal_table_keeps_its_columns_for_every_status():
    """``superseded`` is the longest status: every row's reason starts in the same column as the header's."""
    def row(student, status, reason):
        return {"student": student, "assignment": "01_kl_objective", "file": f"{student}.ipynb", "status": status,
                "score": 0.0, "possible": 5.0, "reason": reason}

    report = {"results": [row("ann", "graded", "lost points on kl_divergence"),
                          row("ben", "superseded", "not graded: ben (1).ipynb is this student's later notebook"),
                          row("cy", "timeout", "killed after 900 s")]}
    lines = grading.format_table(report).splitlines()
    starts = {line.index(word) for line, word in zip(lines, ["reason", "lost", "not graded", "killed"])}
    assert len(starts) == 1, "\n" + "\n".join(lines)


def test_the_points_graded_by_hand_are_said_and_get_empty_columns(tmp_path):
    """04's open questions (16 points) were in no score, no column and no line of the table: its 11/11 read as the
    whole assignment. The table now says how many points are left to grade by hand, and grades.csv has an empty
    column for each such question, after the auto-graded ones."""
    from dpo_teach.grading.reports import write_reports

    questions = {"preference_probability": {"points": 1, "manual": False},
                 "open_fixed_assumption": {"points": 2, "manual": True}, "open_pipeline": {"points": 2, "manual": True}}
    row = {"student": "ann", "assignment": "04_x", "file": "ann.ipynb", "status": "graded", "score": 1.0,
           "possible": 1.0, "reason": "", "questions": {"preference_probability": {"score": 1.0, "possible": 1.0}}}
    report = {"assignments": {"04_x": {"questions": questions}}, "results": [row], "students": {}}
    assert ("04_x: 4 more points in 2 open questions are graded by hand, not in the scores above"
            in grading.format_table(report)), grading.format_table(report)
    write_reports(report, tmp_path)
    with open(tmp_path / "grades.csv", newline="") as f:
        (line,) = list(csv.DictReader(f))
    assert list(line)[6:] == ["preference_probability", "open_fixed_assumption (by hand, 2 points)",
                              "open_pipeline (by hand, 2 points)", "reason"], list(line)
    assert line["preference_probability"] == "1.0" and line["open_pipeline (by hand, 2 points)"] == ""


def test_cli_grade_reports_user_errors(tmp_path, capsys):
    from dpo_teach.cli import main

    assert main(["grade", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["grade", str(tmp_path), "--autograder-dir", str(tmp_path)]) == 2
    assert "make assign" in capsys.readouterr().err


def test_cli_grade_writes_reports(tmp_path, assigned, capsys):
    from dpo_teach.cli import main

    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "carol_02_bradley_terry.ipynb").write_text("not json")
    code = main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
                 "--autograder-dir", str(assigned / "autograder")])
    assert code == 0
    assert re.search(r"carol\s+02_bradley_terry\s+0/3\s+invalid", capsys.readouterr().out)
    assert (tmp_path / "out" / "grades.csv").is_file() and (tmp_path / "out" / "grades.json").is_file()


def test_a_failed_hidden_test_is_numbered_and_never_quoted():
    from dpo_teach.grading.grade import _public_feedback
    from dpo_teach.grading.reports import _why

    cases = [{"passed": True, "hidden": False, "message": ""},
             {"passed": True, "hidden": True, "message": ""},
             {"passed": False, "hidden": True, "message": "AssertionError: KL(p‖q) value (direction?)"},
             {"passed": False, "hidden": True, "message": "AssertionError: p(y) = 0 must contribute 0"}]
    public_passed, feedback = _public_feedback(cases)
    assert public_passed and feedback == "hidden test 2 of 3 failed"
    assert _why(feedback) == " (hidden test 2 of 3)"
    timed_out = "TimeoutError: time limit: a cell ran past the grader's limit of 8 s per cell"
    cases[1] = {"passed": False, "hidden": True, "message": timed_out, "stopped": "time_limit"}  # the judge's words
    assert _public_feedback(cases)[1] == f"hidden test 1 of 3 failed: {timed_out}"
    cases[0] = {"passed": False, "hidden": False, "message": "AssertionError: return a tensor"}  # the student has it
    assert _public_feedback(cases) == (False, "public test failed: AssertionError: return a tensor")


def test_a_cell_error_keeps_the_end_of_a_long_message_and_the_line_it_came_from(notebook_reference):
    """What a student needs of an error: where it was raised and what the end of a long message says."""
    from dpo_teach.grading import judge

    cells = ["x = 1", "def helper(n):\n    y = n + 1\n    raise ValueError('start ' + 'x' * 1500 + ' the end')",
             "z = 2\nhelper(3)"]
    text = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]))
    out = judge.run_notebook(text, "homework.ipynb", {}, 30, 120, dict(os.environ), True, [])
    (error,) = out["errors"]
    assert error.startswith("ValueError: start xxx") and "the end" in error and len(error) < 1200, error
    assert "in cell `z = 2`" in error and "raise ValueError(" in error, error


def test_the_assign_command_writes_the_solutions_where_asked(tmp_path, monkeypatch, capsys):
    """`python -m dpo_teach.grading assign --solutions DIR`: the full-score reference submissions to grade first."""
    from dpo_teach.grading import __main__ as command

    calls = []
    monkeypatch.setattr(command, "assign", lambda solutions=None: calls.append(solutions) or ["01_kl_objective"])
    assert command.main(["assign", "--solutions", str(tmp_path / "solutions")]) == 0
    assert calls == [tmp_path / "solutions"] and "(solutions)" in capsys.readouterr().out
    assert command.main(["assign"]) == 0 and calls[-1] is None


def test_the_terminal_table_sizes_the_score_column_from_its_scores():
    """A fractional score (``10.5/12.5``, 9 characters) keeps every row's status and reason under their headers."""
    def row(student, score, possible, status):
        return {"student": student, "assignment": "03_deriving_dpo", "file": f"{student}.ipynb", "status": status,
                "score": score, "possible": possible, "reason": "lost points on dpo_loss"}

    report = {"results": [row("ann", 10.5, 12.5, "graded"), row("ben", 0.0, 5.0, "timeout"),
                          row("cy", 112.25, 125.5, "superseded")]}
    lines = grading.format_table(report).splitlines()
    assert len({line.index(word) for line, word in zip(lines, ["status", "graded", "timeout", "superseded"])}) == 1, \
        "\n" + "\n".join(lines)
    assert len({line.index(word) for line, word in zip(lines, ["reason", "lost", "lost", "lost"])}) == 1, \
        "\n" + "\n".join(lines)
    ends = {line.index(score) + len(score) for line, score in zip(lines, ["score", "10.5/12.5", "0/5", "112.25/125.5"])}
    assert len(ends) == 1, "scores are right-aligned under their header:\n" + "\n".join(lines)


def tiny_course(folder: Path, cases: dict[str, list[tuple[str, bool]]]) -> tuple[Path, Path]:
    """An autograder folder with one assignment ``hw`` (one point per question) and its released notebook."""
    autograder, released = folder / "autograder", folder / "released"
    autograder.mkdir()
    released.mkdir()
    with zipfile.ZipFile(autograder / "hw.zip", "w") as z:
        for q, qcases in cases.items():
            test = {"name": q, "points": 1, "suites": [{"cases": [{"code": code, "hidden": hidden}
                                                                  for code, hidden in qcases]}]}
            z.writestr(f"tests/{q}.py", f"test = {test!r}\n")
    (autograder / "hw.json").write_text(json.dumps({"assignment": "hw", "questions": [
        {"name": q, "points": 1, "manual": False, "choice": False} for q in cases]}))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def add(a, b):\n    ...")]),
                   released / "hw.ipynb")
    return autograder, released


def test_each_test_is_parsed_once_for_a_batch_and_the_scan_and_the_runner_read_that_parse(tmp_path, monkeypatch):
    """One case builder (``judge.test_case``): the bundle's doctests are parsed once, when the bundle is loaded, and
    the scan and the runner both read that parse (they cannot disagree on what a test is); grading two notebooks
    parses nothing again."""
    import doctest

    from dpo_teach.grading import sandbox

    codes = {"add": [(">>> assert add(1, 2) == 3", False), (">>> abs(add(-2, -2))\n4", True)]}
    autograder, released = tiny_course(tmp_path, codes)
    subs = tmp_path / "subs"
    subs.mkdir()
    for student, body in [("ann", "return a + b"), ("ben", "return a - b")]:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"def add(a, b):\n    {body}")])
        nbformat.write(nb, subs / f"{student}_hw.ipynb")
    parsed = []
    original = doctest.DocTestParser.get_examples

    def counting(self, string, name="<string>"):
        parsed.append(string)
        return original(self, string, name)

    monkeypatch.setattr(doctest.DocTestParser, "get_examples", counting)
    report = grading.grade(subs, tmp_path / "out", autograder=autograder, released_dir=released,
                           cell_timeout=30, timeout=120, unsafe=sandbox.unavailable_reason() is not None,
                           log=lambda m: None)
    assert sorted(parsed) == sorted(code for code, _ in codes["add"]), f"parsed {len(parsed)} times: {parsed}"
    assert {r["student"]: (r["status"], r["score"]) for r in report["results"]} == {"ann": ("graded", 1.0),
                                                                                  "ben": ("graded", 0.0)}
