"""Auto-grading with otter-grader: build student notebooks and autograder bundles, grade a folder of submissions.

Layout (``make assign`` writes the last three from the first; all four are committed)::

    course/masters/NN_name.ipynb      master notebooks: solutions, public and hidden tests (otter-assign format)
    notebooks/NN_name.ipynb           what students open: solutions replaced by stubs, public tests only
    course/autograder/NN_name.zip     otter's autograder bundle (all tests), repacked so that it is reproducible
    course/autograder/NN_name.json    manifest: the questions and their points, auto-graded and manual

Adding a graded notebook = adding a master and running ``make assign``. Only files named after a master are
written; other notebooks in ``notebooks/`` are never touched.

Grading (``dpo-teach grade DIR``) runs ``otter run`` on each notebook in its own process and kernel, under two
time limits: a per-cell limit inside the kernel (an endless loop raises ``TimeoutError`` and costs only the
points that depend on it) and a per-notebook wall-clock limit (the process group is killed; the notebook scores
0 with that reason). A file that is not a notebook, an unknown assignment or a crash is scored 0 with a reason;
nothing stops the batch. Results go to ``grades.csv`` and ``grades.json``, written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
MASTERS, NOTEBOOKS, AUTOGRADER = ROOT / "course" / "masters", ROOT / "notebooks", ROOT / "course" / "autograder"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same master gives the same bundle, byte for byte


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename (as ``dpo_teach.utils`` does; importing that would import torch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: object) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON, keys in insertion order."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --- assign ---------------------------------------------------------------------------------------------------------

def read_questions(master: Path) -> list[dict]:
    """The questions of a master notebook in order: ``[{"name": q, "points": p, "manual": bool}, ...]``."""
    questions = []
    for cell in nbformat.read(master, as_version=4).cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(cell.source.split("\n", 1)[1]) or {}
            questions.append({"name": config["name"], "points": config.get("points", 1),
                              "manual": bool(config.get("manual"))})
    return questions


def _normalized_student_notebook(path: Path, stem: str) -> str:
    """otter assign gives generated cells random ids; number them so that the output is reproducible."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stem[:2]}-{i:03d}"
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def _repack(zip_path: Path) -> bytes:
    """Otter's bundle with sorted members, fixed timestamps and permissions."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(src.namelist()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = (0o755 if name == "run_autograder" else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, src.read(name))
    return buffer.getvalue()


def assign(masters: Path = MASTERS, notebooks: Path = NOTEBOOKS, autograder: Path = AUTOGRADER,
           solutions: Path | None = None, quiet: bool = True) -> list[str]:
    """Run ``otter assign`` on every ``masters/*.ipynb``; write student notebooks, bundles and manifests.

    ``solutions`` (optional): also write the solution notebooks there (the masters without otter's markup),
    e.g. to grade them as a full-score submission. Returns the assignment names.
    """
    from otter.assign import main as otter_assign

    names = []
    for master in sorted(Path(masters).glob("*.ipynb")):
        stem = master.stem
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "dist"
            sink = io.StringIO()
            quiet_stderr = contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext()
            with contextlib.redirect_stdout(sink), quiet_stderr:
                otter_assign(str(master), str(out), no_run_tests=True, no_pdfs=True)
            (bundle,) = (out / "autograder").glob("*.zip")
            atomic_write_text(Path(notebooks) / f"{stem}.ipynb",
                              _normalized_student_notebook(out / "student" / f"{stem}.ipynb", stem))
            Path(autograder).mkdir(parents=True, exist_ok=True)
            tmp_zip = Path(autograder) / f".{stem}.zip.tmp"
            tmp_zip.write_bytes(_repack(bundle))
            os.replace(tmp_zip, Path(autograder) / f"{stem}.zip")
            manifest = {"assignment": stem, "questions": read_questions(master)}
            atomic_write_json(Path(autograder) / f"{stem}.json", manifest)
            if solutions is not None:
                Path(solutions).mkdir(parents=True, exist_ok=True)
                shutil.copy(out / "autograder" / f"{stem}.ipynb", Path(solutions) / f"{stem}.ipynb")
        names.append(stem)
    return names


# --- grading processes (``python -m dpo_teach.grading _worker``): otter run, one notebook at a time -------------

TIME_GUARD = '''\
# Added by `dpo-teach grade`: a time limit per cell, so that an endless loop costs only the points that depend on it.
def _dpo_teach_time_guard(seconds, grace):
    import signal
    from IPython import get_ipython

    def expire(signum, frame):
        signal.alarm(grace)  # the rest of this cell (e.g. the next test of the same looping function) gets `grace` s
        raise TimeoutError(f"time limit: a cell ran past the grader's limit of {seconds} s per cell")

    def arm(*args):
        signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)

    def disarm(*args):
        signal.alarm(0)

    get_ipython().events.register("pre_run_cell", arm)
    get_ipython().events.register("post_run_cell", disarm)


_dpo_teach_time_guard({seconds}, {grace})
del _dpo_teach_time_guard
'''


def time_guard_cell(seconds: int) -> str:
    """The code cell put in front of each graded notebook. After a first expiry, the same cell gets a 3 s grace
    per further expiry: the tests of one question are fast, so each further call to a looping function should
    not cost a full cell limit."""
    return TIME_GUARD.replace("{seconds}", str(int(seconds))).replace("{grace}", str(min(int(seconds), 3)))


def _feedback(message: str) -> str:
    """The informative part of otter's doctest report: the first failed example and the exception it raised."""
    at = message.find("Failed example:")
    if at < 0:
        return message.strip()[:800]
    block = message[at:].split("\nTrying:")[0]
    if "\nException raised:" in block:
        head, trace = block.split("\nException raised:", 1)
        raised = re.findall(r"^\s*([\w.]+(?:Error|Exception|Interrupt)\b.*)$", trace, flags=re.M)
        block = head + "\nException raised:\n    " + (raised[-1] if raised else trace.strip().splitlines()[-1])
    return block.strip()[:800]


def _grade_one(bundle: str, submission: str, result_path: str, cell_timeout: int, assignment: str) -> None:
    """Grade one notebook with ``otter run`` and write per-question results and cell errors as JSON.

    The notebook is graded under the file name its ``otter.Notebook("<assignment>.ipynb")`` cell expects, so a
    renamed submission grades the same.
    """
    import otter.run

    nb = nbformat.read(submission, as_version=4)
    guard = nbformat.v4.new_code_cell(time_guard_cell(cell_timeout))
    nb.cells.insert(0, guard)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{assignment}.ipynb"
        nbformat.write(nb, copy)
        results = otter.run.main(str(copy), autograder=bundle, output_dir=None, no_logo=True)
    questions = {}
    for name, test_file in results.results.items():
        failed = [r for r in test_file.test_case_results if not r.passed]
        questions[name] = {
            "score": float(test_file.score), "possible": float(test_file.possible),
            "public_passed": all(r.passed for r in test_file.test_case_results if not r.test_case.hidden),
            "feedback": _feedback(failed[0].message or "") if failed else "",
        }
    errors = []
    for cell in results.notebook.cells if results.notebook is not None else []:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and cell.source != guard.source:
                first_line = next((s for s in cell.source.splitlines() if s.strip()), "")[:60]
                errors.append(f"{out['ename']}: {out['evalue'][:200]} (in cell `{first_line}`)")
    error = results.catastrophic_error
    atomic_write_json(Path(result_path), {"questions": questions, "errors": errors,
                                          "catastrophic": f"{type(error).__name__}: {error}" if error else None})


def _worker(cell_timeout: int) -> None:
    """Grade the jobs read from stdin, one JSON line each; answer one line per job. otter is imported once."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever otter or a notebook prints goes to stderr, never into the protocol
    import otter.run  # noqa: F401 - the slow import, paid once per worker

    for line in sys.stdin:
        job = json.loads(line)
        try:
            _grade_one(job["bundle"], job["submission"], job["result"], cell_timeout, job["assignment"])
        except Exception as e:  # noqa: BLE001 - report, then take the next job
            atomic_write_json(Path(job["result"]), {"crash": f"{type(e).__name__}: {e}"})
        protocol.write("done\n")


class _Worker:
    """A ``_worker`` process in its own process group, so that a runaway notebook can be killed with its driver."""

    def __init__(self, cell_timeout: int, env: dict):
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "dpo_teach.grading", "_worker", str(cell_timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, start_new_session=True, bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def run(self, job: dict, timeout: float) -> str:
        """``"done"``, ``"timeout"`` (the worker was killed) or ``"crashed: <stderr tail>"``."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return "timeout"
        except OSError:
            reply = None
        if reply is None:
            self.kill()
            self.log.seek(0)
            tail = [line for line in self.log.read().strip().splitlines()[-3:] if line.strip()]
            return "crashed: " + " | ".join(tail)[-400:]
        return "done"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the driver; its kernel exits when its parent dies
        self.proc.wait()
        self.log.close()

    def close(self) -> None:
        """End of the batch: the worker leaves its loop when stdin closes; kill it if it does not."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
            self.log.close()
        except subprocess.TimeoutExpired:
            self.kill()


# --- grade a folder -------------------------------------------------------------------------------------------------

def load_manifests(autograder: Path) -> dict[str, dict]:
    """``{assignment: {"bundle": path, "questions": {...}}}`` for every bundle in ``autograder``."""
    manifests = {}
    for path in sorted(Path(autograder).glob("*.json")):
        manifest = json.loads(path.read_text())
        bundle = path.with_suffix(".zip")
        if bundle.is_file():
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
    """Grade one notebook in this slot's worker (started on first use, replaced after a kill or a crash)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        if worker_slot[0] is None:
            worker_slot[0] = _Worker(cell_timeout, env)
        job = {"bundle": str(bundle), "submission": str(path), "result": str(result), "assignment": assignment}
        outcome = worker_slot[0].run(job, timeout)
        if outcome != "done":
            worker_slot[0] = None
        if outcome == "timeout":
            return {"status": "timeout", "reason": f"killed after {timeout:g} s (per-notebook time limit); "
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
    atomic_write_json(out / "grades.json", report)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m dpo_teach.grading assign`` (what ``make assign`` runs); ``_worker`` is the grading process."""
    parser = argparse.ArgumentParser(prog="python -m dpo_teach.grading")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assign", help="masters → student notebooks, autograder bundles and manifests")
    sub.add_parser("_worker").add_argument("cell_timeout", type=int)
    args = parser.parse_args(argv)
    if args.command == "assign":
        for name in assign():
            print(f"{MASTERS.relative_to(ROOT)}/{name}.ipynb → notebooks/{name}.ipynb, "
                  f"{AUTOGRADER.relative_to(ROOT)}/{name}.zip")
    else:
        _worker(args.cell_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
