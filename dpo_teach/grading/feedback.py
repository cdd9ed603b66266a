"""What each student is told: ``OUT/feedback/<student>.md``, one file per student of a batch, to hand back.

It holds what a student may read and nothing more: each notebook's score, each auto-graded question's score and its
feedback (a failed public test quoted, a hidden one only numbered: "hidden test 2 of 3 failed"), the first cell
errors, and the points still to come from the questions graded by hand. It never holds what ``grades.json`` keeps
for the instructor: a failed hidden test's message (``hidden_failed``: it may name the test's inputs), the integrity
flags (what the scan caught, which would teach the next attempt what to hide) or how long a notebook took.

    texts = feedback_texts(report)   # {"alice.md": "# Feedback for alice ...", ...}
    write_feedback(report, out)      # OUT/feedback/, replaced whole (utils.atomic_dir)
"""

from __future__ import annotations

import re
from pathlib import Path

from dpo_teach.grading.reports import FLAGGED, NOT_COUNTED, clipped, counted, for_student
from dpo_teach.grading.submissions import FEEDBACK_FOLDER as FOLDER  # in --out, beside grades.csv
from dpo_teach.utils import atomic_dir

ERRORS_SHOWN = 3  # cell errors quoted per notebook (grades.json has them all)
WHY = {  # what a row of each status that is not "graded" scored 0 for, in a student's words
    "timeout": "it ran out of time",
    "crashed": "its process ended before the grading did",
    "invalid": "it is not a notebook the grader could read",
    "error": "the grader could not grade it (not your notebook's fault): your instructor will grade it again",
    "flagged": FLAGGED,
}


def file_names(students: list[str]) -> dict[str, str]:
    """``{student: "name.md"}``: the student's name with every character a file name should not hold (a path
    separator, a space, a leading dot) as ``_``, and ``-2``, ``-3`` added where two names would be one file (also
    names that differ only in case: one file on macOS and Windows)."""
    names, taken = {}, set()
    for student in sorted(set(students), key=lambda s: (s.casefold(), s)):
        stem = re.sub(r"[^\w.-]", "_", student).lstrip(".") or "_"
        name, n = f"{stem}.md", 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}-{n}.md"
        taken.add(name.casefold())
        names[student] = name
    return names


def feedback_texts(report: dict) -> dict[str, str]:
    """``{file name: markdown}``: one text per student of ``report`` (``grade``'s report), their notebooks in the
    report's order."""
    rows: dict[str, list[dict]] = {}
    for row in report["results"]:
        rows.setdefault(row["student"], []).append(row)
    names = file_names(list(rows))
    return {names[student]: student_text(student, its_rows, report) for student, its_rows in rows.items()}


def student_text(student: str, rows: list[dict], report: dict) -> str:
    """One student's feedback (see the module's docstring)."""
    counted = [r for r in rows if r["status"] not in NOT_COUNTED]
    totals = report["students"].get(student, {"score": 0.0, "possible": 0.0})  # none: only files not graded
    lines = [f"# Feedback for {student}", "",
             f"{totals['score']:g} of {totals['possible']:g} auto-graded points over {len(counted)} notebook"
             f"{'s' * (len(counted) != 1)}."
             + (" Questions graded by hand are not in these scores." if any(_manual(r, report) for r in counted)
                else "")]
    for row in rows:
        lines += ["", *notebook_lines(row, report)]
    return "\n".join(lines) + "\n"


def notebook_lines(row: dict, report: dict) -> list[str]:
    """A notebook's section: its score and status, each question, the first cell errors, the points graded by hand."""
    title = row["assignment"] or Path(row["file"]).name
    if row["status"] in NOT_COUNTED:
        return [f"## {title}: not graded", "", f"`{handed_in(row, report)}`: {for_student(row['problem'])}"]
    head = [f"## {title}: {row['score']:g} / {row['possible']:g}", ""]
    if row["status"] == "graded":
        head.append(f"`{handed_in(row, report)}`, graded.")
    else:
        why = WHY.get(row["status"], row["status"])
        told = row["problem"] and row["status"] not in ("flagged", "error")
        problem = f" ({for_student(row['problem'])})" if told else ""
        head.append(f"`{handed_in(row, report)}`: 0 points, because {why}{problem}.")
    questions = [f"- `{q}` {r['score']:g} / {r['possible']:g}: {question_feedback(r, row['status'])}"
                 for q, r in counted(row).items()]
    errors = row["errors"][:ERRORS_SHOWN]
    if errors:
        more = len(row["errors"]) - len(errors)
        errors = ["", f"{len(row['errors'])} cell error{'s' * (len(row['errors']) != 1)}"
                      + (f" ({more} more not shown)" if more else "") + ":",
                  *(f"- {_one_line(e)}" for e in errors)]
    return head + ([""] + questions if questions else []) + errors + _by_hand_lines(row, report)


def handed_in(row: dict, report: dict) -> str:
    """The row's file as the student knows it: its path in the submissions folder, not where the instructor keeps
    that folder (``/home/prof/2026/hw3/alice/hw.ipynb`` reads ``alice/hw.ipynb``)."""
    try:
        return Path(row["file"]).relative_to(report["submissions_dir"]).as_posix()
    except (KeyError, ValueError):  # a report without the folder, or a file outside it
        return Path(row["file"]).name


def question_feedback(result: dict, status: str) -> str:
    """What one question's line says: "passed", the grader's feedback, or why it was not scored."""
    if result["score"] >= result["possible"] and status == "graded":
        return "passed"
    if status == "flagged":
        return "not scored yet (see above)"
    return _one_line(result.get("feedback") or ("not graded" if status == "graded" else "not scored (see above)"))


def _manual(row: dict, report: dict) -> list[float]:
    """The points of the row's assignment's questions graded by hand."""
    questions = report.get("assignments", {}).get(row["assignment"], {}).get("questions", {})
    return [v["points"] for v in questions.values() if v["manual"]]


def _by_hand_lines(row: dict, report: dict) -> list[str]:
    manual = _manual(row, report)
    if not manual:
        return []
    return ["", f"Graded by hand, not in this score: {len(manual)} open question{'s' * (len(manual) != 1)}, "
                f"{sum(manual):g} points."]


def _one_line(text: str) -> str:
    return clipped(re.sub(r"\s+", " ", str(text)).strip(), 300)  # as the terminal's table clips a reason


def check_folder(out: Path) -> None:
    """Refuse, before a batch starts, an ``out/feedback`` that :func:`write_feedback` could not replace without
    deleting what it did not write: a file, or a folder that holds anything but ``.md`` files.

    Raises:
        ValueError: the message names the path, what is in the way and what to do.
    """
    folder = Path(out) / FOLDER
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, where the students' feedback goes: move it away, or pass another --out")
    foreign = sorted(p.name for p in folder.iterdir() if p.suffix != ".md" or not p.is_file()) if folder.is_dir() \
        else []
    if foreign:
        raise ValueError(f"{folder} holds {foreign[0]}{' and more' if len(foreign) > 1 else ''}, which the grader "
                         "did not write, and the students' feedback replaces that folder as a whole: move it away, or "
                         "pass another --out")


def write_feedback(report: dict, out: Path) -> Path:
    """``out/feedback/``, one file per student (:func:`feedback_texts`), replacing the folder an earlier batch wrote
    there in one step (a crash leaves the earlier folder whole; :func:`check_folder` first). Returns the folder."""
    folder = Path(out) / FOLDER
    with atomic_dir(folder) as tmp:
        for name, text in feedback_texts(report).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return folder
