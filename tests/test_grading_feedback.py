"""The students' feedback files (``dpo_teach/grading/feedback.py``): one per student, what a student may read and
nothing the instructor keeps (hidden tests' messages, integrity flags), replaced whole by the next batch. The real
grading run's files are checked in test_grading.py; here the rows are made by hand, and the batch around them is
real."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_grading_folders import KL, run_cli
from test_zygote import notebook

from dpo_teach.grading import feedback
from dpo_teach.grading.reports import empty_row, per_student

HIDDEN_MESSAGE = "kl_divergence([0.25, 0.75], [0.5, 0.5]) should be 0.1308"  # what a hidden test's assert says


def row(student: str, status: str = "graded", assignment: str = KL, **changes) -> dict:
    return {**empty_row(student, Path(f"{student}_{assignment}.ipynb"), assignment, status), **changes}


def report_of(rows: list[dict], manual: float = 0) -> dict:
    questions = {"kl_divergence": {"points": 2, "manual": False}, "objective": {"points": 1, "manual": False}}
    if manual:
        questions["why_kl"] = {"points": manual, "manual": True}
    return {"mode": "fast", "assignments": {KL: {"questions": questions}}, "results": rows,
            "students": per_student(rows)}


def q(score: float, possible: float, text: str = "", hidden: list[str] = ()) -> dict:
    return {"score": score, "possible": possible, "public_passed": True, "feedback": text,
            "hidden_failed": list(hidden)}


def test_a_student_reads_each_questions_score_and_why_but_no_hidden_tests_words():
    lost = row("ann", score=2.0, possible=3.0, questions={
        "kl_divergence": q(2, 2), "objective": q(0, 1, "hidden test 2 of 3 failed", [f"hidden test 2 of 3: "
                                                                                      f"{HIDDEN_MESSAGE}"])},
        errors=["cell 4: NameError: name 'beta' is not defined"])
    text = feedback.feedback_texts(report_of([lost], manual=3))["ann.md"]
    assert "2 of 3 auto-graded points over 1 notebook." in text, text
    assert f"## {KL}: 2 / 3" in text and "- `kl_divergence` 2 / 2: passed" in text, text
    assert "- `objective` 0 / 1: hidden test 2 of 3 failed" in text, text
    assert HIDDEN_MESSAGE not in text and "0.1308" not in text
    assert "1 cell error:\n- cell 4: NameError: name 'beta' is not defined" in text, text
    assert "Graded by hand, not in this score: 1 open question, 3 points." in text, text


def test_a_flagged_notebook_says_it_waits_for_the_instructor_without_what_was_caught():
    flagged = row("ben", "flagged", possible=3.0, flags=["imports dpo_teach.grading.runner"],
                  questions={"kl_divergence": q(2, 2), "objective": q(1, 1)},
                  reason="scored 0 until an instructor has read it: it touches the grading machinery "
                         "(imports dpo_teach.grading.runner)")
    text = feedback.feedback_texts(report_of([flagged]))["ben.md"]
    assert "0 points, because it touches the grading machinery, so it scores 0 until your instructor has read it" \
        in text, text
    assert "runner" not in text and "passed" not in text, text
    assert "- `objective` 0 / 1: not scored yet (see above)" in text, text  # 0, as the notebook's score counts it


def test_a_file_not_graded_tells_the_student_what_to_do_not_the_instructor():
    """The reasons of files that are no notebooks tell the instructor to "ask the student to upload it again": the
    student's file read the same words about "the student"."""
    empty = row("eve", "invalid", possible=3.0,
                problem="not a valid notebook: the file is empty (an upload that failed): ask the student to upload "
                        "it again")
    python = row("eve", "skipped", assignment=None, file="eve.py",
                 problem="eve.py is not a notebook (.py): ask the student for the .ipynb file")
    text = feedback.feedback_texts(report_of([empty, python]))["eve.md"]
    assert "0 points, because it is not a notebook the grader could read (not a valid notebook: the file is empty " \
           "(an upload that failed): upload it again)." in text, text
    assert "`eve.py`: eve.py is not a notebook (.py): hand in the .ipynb file" in text, text
    assert "the student" not in text, text


def test_every_status_reads_as_what_happened_and_only_counted_notebooks_add_up():
    rows = [row("cy", "timeout", possible=3.0, problem="killed after 900 s in cell 7"),
            row("cy", "superseded", assignment="02_bradley_terry",
                problem="a later notebook of 02_bradley_terry by cy was graded"),
            row("cy", "graded", assignment="02_bradley_terry", score=1.0, possible=1.0),
            row("dee", "error", possible=3.0, problem="could not grade it: OSError: [Errno 28] No space left")]
    texts = feedback.feedback_texts(report_of(rows))
    assert "1 of 4 auto-graded points over 2 notebooks" in texts["cy.md"], texts["cy.md"]
    assert "0 points, because it ran out of time (killed after 900 s in cell 7)." in texts["cy.md"]
    assert "## 02_bradley_terry: not graded" in texts["cy.md"] and "a later notebook" in texts["cy.md"]
    assert "your instructor will grade it again" in texts["dee.md"] and "No space" not in texts["dee.md"]


def test_a_notebook_that_scored_0_as_a_whole_scores_0_on_each_question_wherever_it_is_read(tmp_path):
    """A notebook that ran out of time in its hidden tests, or was flagged, scores 0, but its questions kept what their
    tests gave: the feedback read "`kl_divergence` 2 / 2" under "0 points", and grades.csv's question columns added
    up to points the score column did not give (a gradebook that imports the columns gave them). grades.json keeps
    what the tests gave, for the instructor."""
    import csv
    import json

    from dpo_teach.grading.reports import write_reports

    late = row("gus", "timeout", possible=3.0, problem="killed after 900 s (per-notebook time limit) while running "
               "the hidden tests", questions={"kl_divergence": q(2, 2), "objective": q(0, 1, "hidden test 1 of 1 "
                                                                                         "failed")})
    report = report_of([late])
    text = feedback.feedback_texts(report)["gus.md"]
    assert "- `kl_divergence` 0 / 2: not scored (see above)" in text, text
    assert "- `objective` 0 / 1: hidden test 1 of 1 failed" in text, text
    write_reports(report, tmp_path)
    (line,) = csv.DictReader((tmp_path / "grades.csv").open(encoding="utf-8"))
    assert (line["score"], line["kl_divergence"], line["objective"]) == ("0.0", "0.0", "0.0"), line
    kept = json.loads((tmp_path / "grades.json").read_text(encoding="utf-8"))["results"][0]
    assert kept["questions"]["kl_divergence"]["score"] == 2.0  # the instructor's record of what the tests gave


def test_file_names_are_safe_and_never_shared():
    names = feedback.file_names(["Ann", "ann", "../etc/passwd", ".hidden", "Zoë Ray", "ann"])
    assert names["Ann"] == "Ann.md" and names["ann"] == "ann-2.md", names  # one file on macOS and Windows
    assert names["../etc/passwd"] == "_etc_passwd.md" and names[".hidden"] == "hidden.md", names
    assert names["Zoë Ray"] == "Zoë_Ray.md"
    assert len({n.casefold() for n in names.values()}) == len(names)


def test_a_batch_writes_the_feedback_and_the_next_batch_replaces_it(tmp_path, assigned, stub_grading, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for student in ("alice", "bob"):
        (folder / f"{student}_{KL}.ipynb").write_text(notebook(f"x = '{student}'"))
    code, printed, _ = run_cli(folder, out, assigned, capsys)
    assert code == 0 and f"{out}/feedback/ (a file per student, to hand back)" in printed, printed
    assert sorted(p.name for p in (out / "feedback").iterdir()) == ["alice.md", "bob.md"]
    assert "1 of 1 auto-graded points" in (out / "feedback" / "bob.md").read_text()
    (folder / f"bob_{KL}.ipynb").unlink()
    assert run_cli(folder, out, assigned, capsys)[0] == 0
    assert sorted(p.name for p in (out / "feedback").iterdir()) == ["alice.md"], "bob's file of the last batch stayed"


@pytest.mark.parametrize("in_the_way", ["a file", "a notes file in the folder"])
def test_a_feedback_folder_the_grader_cannot_replace_is_refused_before_any_grading(
        tmp_path, assigned, stub_grading, capsys, in_the_way):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / f"alice_{KL}.ipynb").write_text(notebook("x = 1"))
    out.mkdir()
    if in_the_way == "a file":
        (out / "feedback").write_text("my notes")
    else:
        (out / "feedback").mkdir()
        (out / "feedback" / "notes.txt").write_text("my notes")
    code, _, err = run_cli(folder, out, assigned, capsys)
    assert code == 2 and stub_grading == [], (code, stub_grading)
    assert f"{out / 'feedback'}" in err and "move it away, or pass another --out" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_failure_while_writing_leaves_the_earlier_feedback_whole(tmp_path, monkeypatch):
    first = report_of([row("ann", score=3.0, possible=3.0)])
    feedback.write_feedback(first, tmp_path)
    before = (tmp_path / "feedback" / "ann.md").read_text()

    def failing(report):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feedback, "feedback_texts", failing)
    with pytest.raises(OSError):
        feedback.write_feedback(report_of([row("ann", score=0.0, possible=3.0)]), tmp_path)
    assert (tmp_path / "feedback" / "ann.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback"], "a temporary folder was left behind"
