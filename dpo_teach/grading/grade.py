"""``dpo-teach grade DIR``: grade every notebook in a folder; one CSV and one JSON of scores, written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from dpo_teach.grading.assign import AUTOGRADER
from dpo_teach.grading.worker import _Worker
from dpo_teach.utils import atomic_write_json, atomic_write_text


class ManifestError(ValueError):
    """An autograder manifest or bundle that cannot be used; the message names the file and the fix."""


def _manifest_problem(manifest) -> str | None:
    """What makes a parsed manifest unusable (None when nothing does)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("assignment"), str):
        return "no 'assignment' name"
    if not isinstance(manifest.get("questions"), list):
        return "no 'questions' list"
    for i, q in enumerate(manifest["questions"]):
        ok = (isinstance(q, dict) and isinstance(q.get("name"), str) and isinstance(q.get("manual"), bool)
              and isinstance(q.get("points"), (int, float)) and not isinstance(q.get("points"), bool)
              and 0 <= q["points"] < float("inf"))
        if not ok:
            return f"questions[{i}] needs a 'name', 'points' (a number ≥ 0) and 'manual' (true/false)"
    return None


def _bundle_problem(bundle: Path) -> str | None:
    """Why otter could not open ``bundle`` (None when the zip reads back intact)."""
    try:
        with zipfile.ZipFile(bundle) as z:
            broken = z.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        return f"not a zip archive ({type(e).__name__}: {e})"
    return f"member {broken} is corrupt" if broken else None


def load_manifests(autograder: Path) -> dict[str, dict]:
    """``{assignment: {"bundle": path, "questions": {...}}}`` for every bundle in ``autograder``.

    Raises:
        ManifestError: a manifest that is not JSON or lacks a field, or a bundle that is not an intact zip.
    """
    manifests = {}
    fix = "run `make assign` to write the bundles and manifests again"
    for path in sorted(Path(autograder).glob("*.json")):
        bundle = path.with_suffix(".zip")
        if not bundle.is_file():
            continue
        try:
            manifest = json.loads(path.read_bytes())
        except (ValueError, RecursionError, OSError) as e:
            raise ManifestError(f"{path}: not a readable autograder manifest ({e}); {fix}") from None
        problem = _manifest_problem(manifest)
        if problem:
            raise ManifestError(f"{path}: not a usable autograder manifest ({problem}); {fix}")
        problem = _bundle_problem(bundle)
        if problem:
            raise ManifestError(f"{bundle}: not a usable autograder bundle ({problem}); {fix}")
        questions = {q["name"]: {"points": q["points"], "manual": q["manual"]} for q in manifest["questions"]}
        manifests[manifest["assignment"]] = {"bundle": bundle, "questions": questions}
    return manifests


def find_submissions(folder: Path) -> list[tuple[str, Path]]:
    """``(student, path)`` for every ``*.ipynb`` under ``folder``: the student is the first sub-folder's name, or
    the file name for notebooks directly in ``folder``."""
    found = []
    for path in sorted(Path(folder).rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if ".ipynb_checkpoints" in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        found.append((rel.parts[0] if len(rel.parts) > 1 else path.stem, path))
    return found


def _detect_assignment(path: Path, nb, manifests: dict) -> str | None:
    name = (nb.metadata.get("otter") or {}).get("assignment_name") if nb is not None else None
    if name in manifests:
        return name
    matches = [a for a in manifests if a in path.name]
    return max(matches, key=len) if matches else None


def _run_job(worker_slot: list, bundle: Path, path: Path, assignment: str, cell_timeout: int, timeout: float,
             env: dict) -> dict:
    """Grade one notebook in this slot's worker (started on first use, replaced after a kill or a crash).

    A notebook past the per-notebook limit is tried once more in a fresh worker before it scores 0: the per-cell
    limit already stops a student's endless loop, so a whole notebook running out of time is most often a kernel
    that hung outside any cell (seen, rarely, on a busy machine), not the student's doing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        job = {"bundle": str(bundle), "submission": str(path), "result": str(result), "assignment": assignment}
        for _attempt in range(2):
            if worker_slot[0] is None:
                worker_slot[0] = _Worker(cell_timeout, env)
            outcome = worker_slot[0].run(job, timeout)
            if outcome != "done":
                worker_slot[0] = None
            if outcome != "timeout":
                break
        if outcome == "timeout":
            return {"status": "timeout", "reason": f"killed after {timeout:g} s, twice (per-notebook time limit); "
                                                   "nothing could be scored"}
        if outcome != "done" or not result.is_file():
            return {"status": "error", "reason": f"the grader {outcome}"}
        data = json.loads(result.read_text())
        if "crash" in data:
            return {"status": "error", "reason": f"otter could not grade it: {data['crash'][:400]}"}
        return {"status": "graded", **data}


def _why(feedback: str) -> str:
    """`` (TimeoutError)`` or `` (AssertionError: message)`` from a test's feedback, for the one-line reason."""
    errors = re.findall(r"^\s*(\w+(?:Error|Exception)\b.*)$", feedback, flags=re.M)
    return f" ({errors[0].strip()[:80]})" if errors else ""


def grade_submission(student: str, path: Path, manifests: dict, assignment: str | None, cell_timeout: int,
                     timeout: float, env: dict, worker_slot: list) -> dict:
    """Score one file. Never raises: whatever goes wrong becomes a status and a reason."""
    row = {"student": student, "file": str(path), "assignment": assignment, "status": "graded", "reason": "",
           "score": 0.0, "possible": 0.0, "questions": {}, "errors": [], "seconds": 0.0}
    start = time.perf_counter()
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001 - any reason a file is not a usable notebook
        nb = None
        first_line = (str(e).splitlines() or [""])[0][:200]
        row.update(status="invalid", reason=f"not a valid notebook ({type(e).__name__}: {first_line})")
    row["assignment"] = assignment or _detect_assignment(path, nb, manifests)
    if row["assignment"] not in manifests:
        if row["status"] == "graded":
            example = next(iter(manifests))
            row.update(status="error", reason="cannot tell which assignment this is: name the file after it "
                                              f"(e.g. alice_{example}.ipynb) or pass --assignment")
        return row
    auto = {q: v for q, v in manifests[row["assignment"]]["questions"].items() if not v["manual"]}
    row["questions"] = {q: {"score": 0.0, "possible": float(v["points"]), "public_passed": False,
                            "feedback": "not graded"} for q, v in auto.items()}
    row["possible"] = float(sum(v["points"] for v in auto.values()))
    if row["status"] == "graded":
        try:
            outcome = _run_job(worker_slot, manifests[row["assignment"]]["bundle"], path, row["assignment"],
                               cell_timeout, timeout, env)
        except Exception as e:  # noqa: BLE001 - e.g. no process could be started: report it, go on
            outcome = {"status": "error", "reason": f"could not grade it: {type(e).__name__}: {e}"}
        row["status"], row["errors"] = outcome["status"], outcome.get("errors", [])
        for q, result in outcome.get("questions", {}).items():
            if q in row["questions"]:
                row["questions"][q] = result
        reasons = [outcome.get("reason") or outcome.get("catastrophic") or ""]
        lost = [f"{q}{_why(r['feedback'])}" for q, r in row["questions"].items() if r["score"] < r["possible"]]
        if lost and row["status"] == "graded":
            reasons.append("lost points on " + ", ".join(lost))
        if row["errors"]:
            reasons.append(f"{len(row['errors'])} cell error(s), first: {row['errors'][0]}")
        row["reason"] = "; ".join(r for r in reasons if r)
    row["score"] = float(sum(r["score"] for r in row["questions"].values()))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def grade(submissions: Path, out: Path, autograder: Path = AUTOGRADER, assignment: str | None = None,
          cell_timeout: int = 120, timeout: float = 900, fast: bool = True, jobs: int = 1,
          log=print) -> dict:
    """Grade every notebook under ``submissions``; write ``out/grades.csv`` and ``out/grades.json``.

    Returns the JSON report: the assignments with their questions, one row per submission and totals per student.
    """
    manifests = load_manifests(autograder)
    if not manifests:
        raise FileNotFoundError(f"no autograder bundles in {autograder}; run `make assign` first")
    if assignment is not None and assignment not in manifests:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {sorted(manifests)}")
    found = find_submissions(submissions)
    log(f"grading {len(found)} notebooks in {submissions} ({'fast' if fast else 'full'} mode, {jobs} at a time)")

    env = {**os.environ, "DPO_TEACH_FAST": "1" if fast else "0", "TOKENIZERS_PARALLELISM": "false"}
    slots = queue.Queue()  # one worker process per parallel job, reused across notebooks
    for _ in range(max(1, jobs)):
        slots.put([None])

    def one(item):
        slot = slots.get()
        try:
            row = grade_submission(*item, manifests, assignment, cell_timeout, timeout, env, slot)
        finally:
            slots.put(slot)
        log(f"  {row['student']}: {row['assignment'] or '?'} {row['score']:g}/{row['possible']:g} "
            f"{row['status']} ({row['seconds']:.0f} s)")
        return row

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            rows = list(pool.map(one, found))
    finally:
        while not slots.empty():
            worker = slots.get()[0]
            if worker is not None:
                worker.close()
    report = {
        "submissions_dir": str(submissions), "mode": "fast" if fast else "full",
        "time_limits": {"per_cell_s": cell_timeout, "per_notebook_s": timeout},
        "assignments": {a: {"questions": m["questions"]} for a, m in manifests.items()
                        if any(r["assignment"] == a for r in rows)},
        "results": rows, "students": _per_student(rows),
    }
    write_reports(report, Path(out))
    return report


def _per_student(rows: list[dict]) -> dict:
    students: dict[str, dict] = {}
    for r in rows:
        s = students.setdefault(r["student"], {"score": 0.0, "possible": 0.0, "assignments": {}})
        s["assignments"][r["assignment"] or r["file"]] = r["score"]
        s["score"] += r["score"]
        s["possible"] += r["possible"]
    return students


def write_reports(report: dict, out: Path) -> None:
    """``grades.json`` (everything) and ``grades.csv`` (one row per submission, one column per question)."""
    questions = [q for a in report["assignments"].values() for q, v in a["questions"].items() if not v["manual"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "assignment", "file", "status", "score", "possible", *questions, "reason"])
    for r in report["results"]:
        scores = [r["questions"][q]["score"] if q in r["questions"] else "" for q in questions]
        writer.writerow([r["student"], r["assignment"] or "", r["file"], r["status"], r["score"], r["possible"],
                         *scores, r["reason"]])
    atomic_write_json(out / "grades.json", report, sort_keys=False)
    atomic_write_text(out / "grades.csv", buffer.getvalue())


def format_table(report: dict) -> str:
    """A short text table of the results, for the terminal."""
    rows = report["results"]
    w1 = max([len("student")] + [len(r["student"]) for r in rows]) + 2
    w2 = max([len("assignment")] + [len(r["assignment"] or "?") for r in rows]) + 2
    lines = [f"{'student':<{w1}}{'assignment':<{w2}}{'score':>8}  {'status':<8} reason"]
    for r in rows:
        score, reason = f"{r['score']:g}/{r['possible']:g}", re.sub(r"\s+", " ", r["reason"])[:100]
        lines.append(f"{r['student']:<{w1}}{(r['assignment'] or '?'):<{w2}}{score:>8}  {r['status']:<8} {reason}")
    return "\n".join(lines)
