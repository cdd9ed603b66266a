"""A grade row and what is written from the rows: its one-line reason, the totals per student, ``grades.csv``,
``grades.json`` and ``grades_by_student.csv`` (atomically, together), and the table for the terminal."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection
from pathlib import Path

from dpo_teach.grading.submissions import REPORT_FILES, shown
from dpo_teach.utils import atomic_files, json_text


def empty_row(student: str, path: Path, assignment: str | None, status: str, problem: str = "") -> dict:
    """A grade row before (or without) grading: nothing scored; ``problem`` (why it is not graded) is its reason;
    ``fingerprint`` is set where the row is journaled (``journal.fingerprint``: what a rerun compares)."""
    return {"student": shown(student), "file": shown(path), "assignment": assignment, "status": status,
            "reason": problem, "problem": problem, "score": 0.0, "possible": 0.0, "questions": {}, "errors": [],
            "flags": [], "tries": [], "seconds": 0.0, "fingerprint": None}


def row_reason(row: dict, withheld: Collection[str] = ()) -> str:
    """A grade row's one-line reason, for the instructor (``grades.csv``, ``grades.json``, the table): its
    ``problem`` (why it was not graded, or what ended its run early), a second start, why it is flagged, the questions
    that lost points (a graded row's) and its first cell error.

    ``withheld``: questions whose result the reason leaves out (Gradescope's multiple-choice questions, whose results
    students see only once the grades are published).
    """
    flagged = f"{FLAGGED_SHORT} ({'; '.join(row['flags'][:3])})" if row["flags"] else ""
    return _reason(row["problem"], flagged, row, withheld)


def student_reason(row: dict, withheld: Collection[str] = ()) -> str:
    """:func:`row_reason` as the student reads it (Gradescope's output): the problem's action is the student's
    (:func:`for_student`), and a flagged row says that it waits for the instructor, not what the scan caught (which
    would teach the next upload what to hide)."""
    return _reason(for_student(row["problem"]), FLAGGED if row["flags"] else "", row, withheld)


def _reason(problem: str, flagged: str, row: dict, withheld: Collection[str]) -> str:
    parts = [problem]
    if len(row["tries"]) > 1:
        parts.append("started twice: the first start ran out of time before any cell ran (a busy machine)")
    parts.append(flagged)
    if row["status"] == "graded":
        parts.append(lost_points({q: r for q, r in row["questions"].items() if q not in withheld}))
    if row["errors"]:
        parts.append(f"{len(row['errors'])} cell error(s), first: {row['errors'][0]}")
    return "; ".join(part for part in parts if part)


FLAGGED_SHORT = "scored 0 until an instructor has read it: it touches the grading machinery"  # + what was caught
FLAGGED = "it touches the grading machinery, so it scores 0 until your instructor has read it"  # a student's words

# What a reason tells the instructor to do about a file (``submissions._not_json``, ``grade._not_a_notebook``, ...:
# each ends its reason), and what the student reads there instead (:func:`for_student`).
_FOR_STUDENT = [
    (re.compile(r"ask the student for the \.ipynb file"), "hand in the .ipynb file"),
    (re.compile(r"ask the student to "), ""),
    (re.compile(r"\w+ it into .+ and grade again$"), "hand in the .ipynb file itself, not an archive"),
    (re.compile(r"(check the file's permissions|copy the student's file into its place) and grade again$"),
     "your instructor will look into it"),
]


def for_student(problem: str) -> str:
    """``problem`` (a row's reason for the instructor) with its action addressed to the student: "ask the student to
    upload it again" reads "upload it again", "unzip it into the submissions folder and grade again" reads "hand in
    the .ipynb file itself, not an archive"."""
    for pattern, words in _FOR_STUDENT:
        problem = pattern.sub(words, problem)
    return problem


def counted(row: dict) -> dict:
    """The row's questions as its score counts them: a row that is not ``graded`` (flagged, out of time, crashed,
    invalid) scores 0 on each, whatever its tests gave before it ended (``grades.json`` keeps that, for the
    instructor). What a student or a gradebook reads per question (``grades.csv``, the feedback, Gradescope) adds up
    to the row's score."""
    if row["status"] == "graded":
        return row["questions"]
    return {q: {**r, "score": 0.0} for q, r in row["questions"].items()}


def lost_points(questions: dict) -> str:
    """``lost points on q1 (AssertionError: ...), q2 (hidden test 1 of 2)`` for the questions that lost points, or
    an empty string."""
    lost = [f"{q}{_why(r['feedback'])}" for q, r in questions.items() if r["score"] < r["possible"]]
    return "lost points on " + ", ".join(lost) if lost else ""


REFERENCE_CALL = "calls the package's {} instead of your own code"
"""A question's feedback where the answer calls the package's own implementation (``grade``), which the one-line
reason quotes (:func:`_why`)."""
_QUOTED = re.compile(r"hidden test \d+ of \d+|" + re.escape(REFERENCE_CALL).replace(r"\{\}", r"[\w, .]+"))


def _why(feedback: str) -> str:
    """`` (TimeoutError: ...)``, `` (AssertionError: message)``, `` (hidden test 2 of 3)`` or `` (calls the
    package's kl_divergence ...)`` from a test's feedback, for the one-line reason."""
    errors = re.findall(r"(\w+(?:Error|Exception)\b.*)$", feedback, flags=re.M)
    quoted = _QUOTED.match(feedback)
    return f" ({clipped(errors[0].strip(), 80)})" if errors else f" ({quoted.group()})" if quoted else ""


def clipped(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut after a whole word and ended with "…" where it is longer (cut
    mid-word, a reason read "is β applied to the whole h,)")."""
    if len(text) <= width:
        return text
    cut = text[:width - 1]
    if " " in cut and not text[width - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:(") + "…"


NOT_COUNTED = ("superseded", "skipped")  # statuses of files not graded: in no student's total


def per_student(rows: list[dict]) -> dict:
    """``{student: {"score", "possible", "assignments": {assignment: score}}}`` over the graded rows (a superseded or
    skipped file adds no 0 to anyone's total)."""
    students: dict[str, dict] = {}
    for r in rows:
        if r["status"] in NOT_COUNTED:
            continue
        s = students.setdefault(r["student"], {"score": 0.0, "possible": 0.0, "assignments": {}})
        s["assignments"][r["assignment"] or r["file"]] = r["score"]
        s["score"] += r["score"]
        s["possible"] += r["possible"]
    return students


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def as_text(value):
    """A CSV cell that a spreadsheet shows as the text it is: a string that starts like a formula (a student's file
    named ``=HYPERLINK(…)_01_kl_objective.ipynb``) gets a leading apostrophe, OWASP's advice against CSV injection;
    numbers and other strings are written as they are."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_reports(report: dict, out: Path) -> None:
    """``grades.json`` (everything), ``grades_by_student.csv`` (:func:`students_csv`) and ``grades.csv`` (one row
    per submission, one column per question as the score counts it (:func:`counted`), then an empty column per
    question graded by hand, ``open_q (by hand, 2 points)``, to fill in; text that starts like a formula is escaped,
    :func:`as_text`)."""
    questions = [q for a in report["assignments"].values() for q, v in a["questions"].items() if not v["manual"]]
    by_hand = [f"{q} (by hand, {v['points']:g} points)" for a in report["assignments"].values()
               for q, v in a["questions"].items() if v["manual"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "assignment", "file", "status", "score", "possible", *questions, *by_hand, "reason"])
    for r in report["results"]:
        scored = counted(r)
        scores = [scored[q]["score"] if q in scored else "" for q in questions]
        writer.writerow([as_text(v) for v in (r["student"], r["assignment"] or "", r["file"], r["status"],
                                              r["score"], r["possible"], *scores, *[""] * len(by_hand), r["reason"])])
    for name in REPORT_FILES:  # a folder in the way: said plainly, before anything is written
        if (out / name).is_dir():
            raise IsADirectoryError(f"{out / name} is a folder")
    with atomic_files([out / name for name in REPORT_FILES]) as (csv_file, json_file, by_student):  # all written,
        json_file.write_text(json_text(report, sort_keys=False), encoding="utf-8")  # then all in: never one alone,
        csv_file.write_text(buffer.getvalue(), encoding="utf-8")  # also after a Ctrl-C
        by_student.write_text(students_csv(report), encoding="utf-8")


TO_CHECK = ("flagged", "crashed", "timeout", "error", "invalid")  # a row whose score an instructor should look at


def students_csv(report: dict) -> str:
    """``grades_by_student.csv``: the report's totals per student (:func:`per_student`), one row each in alphabetical
    order, one column per assignment of the batch (the graded notebook's score; empty where the student handed in
    none), the total, what is possible over every assignment of the batch (auto-graded points: a missing notebook
    counts 0 of its points) and the rows to look at (flagged, crashed, timed out, not gradable). What a gradebook
    imports: ``grades.csv`` has a row per file, its superseded and skipped files beside the graded one."""
    assignments = sorted(report["assignments"])
    possible = sum(v["points"] for a in assignments for v in report["assignments"][a]["questions"].values()
                   if not v["manual"])
    check: dict[str, list[str]] = {}
    for r in report["results"]:
        if r["status"] in TO_CHECK:
            check.setdefault(r["student"], []).append(f"{r['assignment'] or r['file']}: {r['status']}")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", *assignments, "total", "possible (auto-graded)", "to check"])
    for name, totals in sorted(report["students"].items(), key=lambda item: (item[0].casefold(), item[0])):
        scores = [totals["assignments"].get(a, "") for a in assignments]
        writer.writerow([as_text(v) for v in (name, *scores, totals["score"], possible,
                                              "; ".join(check.get(name, [])))])
    return buffer.getvalue()


def format_table(report: dict) -> str:
    """A short text table of the results, for the terminal."""
    rows = report["results"]
    scores = [f"{r['score']:g}/{r['possible']:g}" for r in rows]
    w1 = max([len("student")] + [len(r["student"]) for r in rows]) + 2
    w2 = max([len("assignment")] + [len(r["assignment"] or "?") for r in rows]) + 2
    w3 = max([len("status")] + [len(r["status"]) for r in rows]) + 1  # "superseded" is the longest
    ws = max([len("score")] + [len(score) for score in scores])  # right-aligned: "10.5/12.5" under "0/5"
    lines = [f"{'student':<{w1}}{'assignment':<{w2}}{'score':>{ws}}  {'status':<{w3}}reason"]
    for r, score in zip(rows, scores):
        reason = re.sub(r"\s+", " ", r["reason"])
        reason = clipped(reason, 100)  # the whole reason: grades.csv
        lines.append(f"{r['student']:<{w1}}{(r['assignment'] or '?'):<{w2}}{score:>{ws}}  {r['status']:<{w3}}{reason}")
    for name, assignment in report.get("assignments", {}).items():  # points the scores above leave out
        manual = [v["points"] for v in assignment["questions"].values() if v["manual"]]
        if manual and any(r["assignment"] == name and r["status"] == "graded" for r in rows):
            questions = f"{len(manual)} open question{'s' * (len(manual) > 1)}"
            lines.append(f"{name}: {sum(manual):g} more points in {questions} are graded by hand, "
                         "not in the scores above (their rubrics are in the master; grades.csv has an empty column "
                         "for each)")
    skipped = [Path(r["file"]).name for r in rows if r["status"] == "skipped"]
    if skipped:
        lines.append(f"not graded ({len(skipped)} file(s), status skipped: see their reasons above): "
                     + ", ".join(skipped))
    return "\n".join(lines)
