"""``dpo-teach grade DIR``: grade every notebook in a folder; one CSV and one JSON of scores, written atomically."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dpo_teach.grading import sandbox
from dpo_teach.grading.assign import AUTOGRADER, NOTEBOOKS, ROOT, multiple_choice
from dpo_teach.grading.judge import ending_strays, load_tests, run_notebook
from dpo_teach.grading.scan import scan
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
    wrong = next((i for i, q in enumerate(manifest["questions"]) if "choice" in q and type(q["choice"]) is not bool),
                 None)
    if wrong is not None:  # null, 0 or "no" would decide silently whether students see a letter's result at once
        return f"questions[{wrong}]: 'choice' must be true or false, not {manifest['questions'][wrong]['choice']!r}"
    marked = ["choice" in q for q in manifest["questions"]]
    if any(marked) and not all(marked):
        return f"questions[{marked.index(False)}] needs 'choice' (true/false), as the others have"
    return None


def _questions(manifest: dict, tests: dict[str, list[dict]]) -> dict[str, dict]:
    """``{question: {"points", "manual", "choice"}}`` of a manifest. A manifest written before ``assign`` marked the
    multiple-choice questions (no ``choice`` at all) has them found from the bundle's public tests, as ``assign``
    finds them: read without the mark, their results would be shown to students at once on Gradescope."""
    derived = multiple_choice(tests) if all("choice" not in q for q in manifest["questions"]) else set()
    return {q["name"]: {"points": q["points"], "manual": q["manual"], "choice": q.get("choice", q["name"] in derived)}
            for q in manifest["questions"]}


def _bundle_problem(bundle: Path) -> str | None:
    """Why otter could not open ``bundle`` (None when the zip reads back intact)."""
    try:
        with zipfile.ZipFile(bundle) as z:
            broken = z.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        return f"not a zip archive ({type(e).__name__}: {e})"
    return f"member {broken} is corrupt" if broken else None


def load_manifests(autograder: Path) -> dict[str, dict]:
    """``{assignment: {"bundle": path, "questions": {q: {"points", "manual", "choice"}}, "tests", "digest"}}`` for
    every bundle in ``autograder``.

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
        tests = load_tests(bundle)
        digest = hashlib.sha256(bundle.read_bytes() + path.read_bytes()).hexdigest()
        manifests[manifest["assignment"]] = {"bundle": bundle, "questions": _questions(manifest, tests),
                                             "tests": tests, "digest": digest}
    return manifests


# What a browser, a file manager or Jupyter adds to a copy's name: " (1)", "-1", " copy", " - Copy (2)", "-Copy1";
# Google Drive and Colab put "Copy of " in front.
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|[\s_-]+copy\s*\d*|-\d{1,2})$", re.IGNORECASE)
_COPY_PREFIX = re.compile(r"^copy of\s+", re.IGNORECASE)
_SEPARATORS = "_- "
_ARCHIVES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}


def is_notebook(path: Path) -> bool:
    return Path(path).suffix.lower() == ".ipynb"  # also ALICE.IPYNB, saved by a tool that shouts


def _without_copy_marks(text: str) -> str:
    while (trimmed := _COPY_SUFFIX.sub("", text)) != text:
        text = trimmed
    return text.strip(_SEPARATORS)


def student_name(stem: str, assignments: Iterable[str]) -> str:
    """The student of a file directly in the submissions folder, from its name: what comes before the name of the
    assignment in it (``alice`` of ``alice_01_kl_objective (1)``), else what comes after it
    (``01_kl_objective_alice``), without separators and the marks of a copy; a name with neither
    (``01_kl_objective``, ``01_kl_objective (1)``) is the assignment's. Without an assignment's name, the name less
    the marks of a copy."""
    bare = _COPY_PREFIX.sub("", stem)
    name = _named_in(bare, assignments)
    if name is None:
        return _without_copy_marks(bare) or stem
    at = bare.lower().index(name.lower())
    return bare[:at].strip(_SEPARATORS) or _without_copy_marks(bare[at + len(name):]) or _without_copy_marks(bare)


def find_submissions(folder: Path, assignments: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``(student, path)`` for every file under ``folder`` but hidden ones (``.ipynb_checkpoints`` too): the
    notebooks, and anything else a student handed in (graded as ``skipped``, with what to do). The student is the
    first sub-folder's name, or for a file directly in ``folder`` its name without the name of the assignment in
    ``assignments`` it holds (:func:`student_name`)."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append((rel.parts[0] if len(rel.parts) > 1 else student_name(_bare_name(path), assignments), path))
    return found


def _bare_name(path: Path) -> str:
    """The file's name without its extension, and without ``.ipynb`` before it (``alice_01`` of
    ``alice_01.ipynb.zip``)."""
    return re.sub(r"\.ipynb$", "", path.name.removesuffix(path.suffix), flags=re.IGNORECASE)


def _detect_assignment(path: Path, nb, manifests: dict) -> str | None:
    name = (nb.metadata.get("otter") or {}).get("assignment_name") if nb is not None else None
    if name in manifests:
        return name
    return _named_in(path.name, manifests)


def _named_in(text: str, names: Iterable[str]) -> str | None:
    """The longest of ``names`` that ``text`` holds, whatever the case (a student's or an assignment's file name)."""
    return max((n for n in names if n.lower() in text.lower()), key=len, default=None)


def _not_a_notebook(student: str, path: Path) -> dict:
    """The row of a file that is not a notebook: skipped, with what to do, and no assignment (no 0 in a total)."""
    kind = Path(path).suffix.lower() or "no extension"
    if kind in _ARCHIVES:
        unpack = "unzip" if kind == ".zip" else "unpack"
        what = f"a {kind} archive: {unpack} it into the submissions folder and grade again"
    else:
        what = f"not a notebook ({kind}): ask the student for the .ipynb file"
    return _empty_row(student, path, None, "skipped", f"{Path(path).name} is {what}")


def _run_job(bundle_tests: dict, path: Path, assignment: str, cell_timeout: int, timeout: float, env: dict,
             sandboxed: bool, hide: list[str]) -> dict:
    """Grade one notebook in a fresh process (the sandbox unless ``--unsafe``). A notebook that ran out of time
    before any of its cells started (the machine, not the student) is tried once more; one that ran out of time in
    its own code is not. ``out["tries"]`` lists where each try ended (``["start", "cell 1"]``: tried twice)."""
    text = path.read_text(encoding="utf-8")
    tries = []
    for _attempt in range(2):
        out = run_notebook(text, f"{assignment}.ipynb", bundle_tests, cell_timeout, timeout, env, sandboxed, hide)
        tries.append(out["phase"])
        if not (out["status"] == "timeout" and out["phase"] == "start"):
            break
    return {**out, "tries": tries}


def _public_feedback(cases: list[dict]) -> tuple[bool, str]:
    """(every public case passed, what the first failed case says). A public case is quoted (the student has its
    test); a hidden one is only numbered ("hidden test 2 of 3 failed"), with the grader's own words when the runner
    itself ended it (``stopped``: it ran out of time, or the code tampered), never the test's own message (it says
    what the test checks) nor the student's (it may hold the hidden test's inputs)."""
    failed = [c for c in cases if not c["passed"]]
    public_passed = all(c["passed"] for c in cases if not c["hidden"])
    if not failed:
        return public_passed, ""
    first = failed[0]
    if not first["hidden"]:
        return public_passed, f"public test failed: {first['message']}"
    hidden = [c for c in cases if c["hidden"]]
    number = next(i for i, c in enumerate(hidden, 1) if c is first)
    return public_passed, f"hidden test {number} of {len(hidden)} failed" + (
        f": {first['message']}" if first.get("stopped") else "")


def _why(feedback: str) -> str:
    """`` (TimeoutError: ...)``, `` (AssertionError: message)`` or `` (hidden test 2 of 3)`` from a test's
    feedback, for the one-line reason."""
    errors = re.findall(r"(\w+(?:Error|Exception)\b.*)$", feedback, flags=re.M)
    hidden = re.match(r"hidden test \d+ of \d+", feedback)
    return f" ({errors[0].strip()[:80]})" if errors else f" ({hidden.group()})" if hidden else ""


def _released(assignment: str, released_dir: Path) -> list[dict]:
    path = Path(released_dir) / f"{assignment}.ipynb"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return []


def grade_submission(student: str, path: Path, manifests: dict, assignment: str | None, cell_timeout: int,
                     timeout: float, env: dict, sandboxed: bool = True, hide: list[str] = (),
                     released_dir: Path = NOTEBOOKS) -> dict:
    """Score one file. Whatever goes wrong with the file becomes a status and a reason; only a sandbox that fails as
    the notebook starts (the machine's fault) raises ``SandboxUnavailable``."""
    import nbformat  # not at the top: each submission's process imports this package (nbformat costs ~1 s)

    row = _empty_row(student, path, assignment, "graded")
    start = time.perf_counter()
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001 - any reason a file is not a usable notebook
        nb = None
        first_line = (str(e).splitlines() or [""])[0][:200]
        row.update(status="invalid", problem=f"not a valid notebook ({type(e).__name__}: {first_line})")
    row["assignment"] = assignment or _detect_assignment(path, nb, manifests)
    if row["assignment"] not in manifests:
        if row["status"] == "graded":
            row.update(_unknown_assignment(path, nb, manifests, released_dir))
        row["reason"] = row_reason(row)
        return row
    manifest = manifests[row["assignment"]]
    auto = {q: v for q, v in manifest["questions"].items() if not v["manual"]}
    row["questions"] = {q: {"score": 0.0, "possible": float(v["points"]), "public_passed": False,
                            "feedback": "not graded"} for q, v in auto.items()}
    row["possible"] = float(sum(v["points"] for v in auto.values()))
    if row["status"] == "graded":
        tests = {q: cases for q, cases in manifest["tests"].items() if q in auto}
        found = scan(nb.cells, _released(row["assignment"], released_dir), tests)
        try:
            outcome = _run_job(tests, path, row["assignment"], cell_timeout, timeout, env, sandboxed, list(hide))
        except sandbox.SandboxUnavailable:
            raise  # the machine's, not the notebook's: grade() stops the batch
        except Exception as e:  # noqa: BLE001 - e.g. no process could be started: report it, go on
            outcome = {"status": "error", "reason": f"could not grade it: {type(e).__name__}: {e}", "cases": {},
                       "errors": [], "tampered": []}
        row["status"], row["errors"], row["tries"] = outcome["status"], outcome["errors"], outcome.get("tries", [])
        row["problem"] = outcome.get("reason", "")
        for q, cases in outcome["cases"].items():
            passed = all(c["passed"] for c in cases) and q not in found["reference"]
            public_passed, feedback = _public_feedback(cases)
            if q in found["reference"]:
                feedback = (f"calls the package's {', '.join(found['reference'][q])} instead of your own code "
                            "(course rule: write your own; the package's version is for after your exercise)")
            row["questions"][q] = {"score": float(auto[q]["points"]) if passed else 0.0,
                                   "possible": float(auto[q]["points"]), "public_passed": public_passed,
                                   "feedback": feedback}
        row["flags"] = found["grader"] + [f"at run time: changed {t}" for t in outcome["tampered"]]
        if row["flags"]:  # also when it crashed or ran out of time: what it tried matters more
            row["status"] = "flagged"
    row["reason"] = row_reason(row)
    if row["status"] == "graded":
        row["score"] = float(sum(r["score"] for r in row["questions"].values()))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def row_reason(row: dict, withheld: Collection[str] = ()) -> str:
    """A grade row's one-line reason: its ``problem`` (why it was not graded, or what ended its run early), a second
    start, why it is flagged, the questions that lost points (a graded row's) and its first cell error.

    ``withheld``: questions whose result the reason leaves out (Gradescope's multiple-choice questions, whose results
    students see only once the grades are published).
    """
    parts = [row["problem"]]
    if len(row["tries"]) > 1:
        parts.append("started twice: the first start ran out of time before any cell ran (a busy machine)")
    if row["flags"]:
        parts.append(f"scored 0 until an instructor has read it: it touches the grading machinery "
                     f"({'; '.join(row['flags'][:3])})")
    if row["status"] == "graded":
        parts.append(lost_points({q: r for q, r in row["questions"].items() if q not in withheld}))
    if row["errors"]:
        parts.append(f"{len(row['errors'])} cell error(s), first: {row['errors'][0]}")
    return "; ".join(part for part in parts if part)


def lost_points(questions: dict) -> str:
    """``lost points on q1 (AssertionError: ...), q2 (hidden test 1 of 2)`` for the questions that lost points, or
    an empty string."""
    lost = [f"{q}{_why(r['feedback'])}" for q, r in questions.items() if r["score"] < r["possible"]]
    return "lost points on " + ", ".join(lost) if lost else ""


def _unknown_assignment(path: Path, nb, manifests: dict, released_dir: Path) -> dict:
    """The row's status and problem for a notebook of no graded assignment: a course notebook without exercises
    (06, the instructor's demo) is not graded, and says so; of anything else the grader cannot tell what it is."""
    ungraded = [p.stem for p in sorted(Path(released_dir).glob("*.ipynb")) if p.stem not in manifests]
    course = _detect_assignment(path, nb, ungraded)  # the same rule as for a graded notebook
    if course:
        return {"status": "skipped", "assignment": course,
                "problem": f"not graded: {course} has no auto-graded exercises (the graded notebooks are "
                           f"{', '.join(sorted(manifests))})"}
    return {"status": "error", "problem": "cannot tell which assignment this is: name the file after it "
                                          f"(e.g. alice_{next(iter(manifests))}.ipynb) or pass --assignment"}


def _hidden(submissions: Path, out: Path, autograder: Path) -> list[str]:
    """What every notebook's sandbox covers: the course's folder, but for what a notebook needs there
    (``sandbox.covered``: the package and its metadata, the student notebooks, the Python environment, the cache,
    the temporary folder), and wherever they are, the submissions, the grades and the bundles. The metadata
    (``dpo_teach.egg-info``) stays because the course's folder is on the notebook's ``sys.path`` (the runner is
    ``python -m``), where an empty folder of that name would hide the installed package's version (notebook 00
    checks it)."""
    from dpo_teach.world import cache_dir  # not at the top: torch; each notebook's process imports this module

    keep = [ROOT / "dpo_teach", *ROOT.glob("*.egg-info"), NOTEBOOKS, cache_dir(), Path(tempfile.gettempdir())]
    # a course folder inside the cache or the temporary folder (a clone in /tmp) is still covered; one inside the
    # Python environment (an installed package) has nothing of the course's own to cover
    keep = [k for k in keep if k.resolve() not in ROOT.resolve().parents] + [Path(sys.prefix), Path(sys.base_prefix)]
    return sandbox.covered(ROOT, keep) + [str(Path(p).resolve()) for p in (submissions, out, autograder)]


def _fingerprint(path: Path, manifest: dict, settings: dict) -> str:
    """What a row depends on: which file it is, its bytes, the bundle's and the settings it is graded under (fast or
    full mode, the time limits, the sandbox): a rerun skips what it has graded, and grades again what a rerun with
    other settings (a longer ``--timeout``, ``--full``) would score differently; two students' identical files are
    two rows."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode() + b"\0")
    digest.update(Path(path).read_bytes())
    digest.update(manifest["digest"].encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _assignments_and_latest(found: list[tuple[str, Path]], manifests: dict,
                            assignment: str | None) -> tuple[dict, dict]:
    """``({path: its assignment or None}`` for every notebook, ``{path: (the path graded instead, the assignment)}``
    for every notebook that another, later notebook of the same student and assignment supersedes (latest
    modification time, then file name)). An unreadable notebook is graded (as invalid) on its own."""
    import nbformat

    names, groups = {}, {}
    for student, path in found:
        if not is_notebook(path):
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:  # noqa: BLE001 - named by its file name alone, superseding nothing
            nb = None
        names[path] = assignment or _detect_assignment(path, nb, manifests)
        if nb is not None and names[path] in manifests:
            groups.setdefault((student, names[path]), []).append(path)
    superseded = {}
    for (_, name), paths in groups.items():
        latest = max(paths, key=lambda p: (p.stat().st_mtime, p.name))
        superseded.update({p: (latest, name) for p in paths if p != latest})
    return names, superseded


def grade(submissions: Path, out: Path, autograder: Path = AUTOGRADER, assignment: str | None = None,
          cell_timeout: int = 120, timeout: float = 900, fast: bool = True, jobs: int = 1, unsafe: bool = False,
          released_dir: Path = NOTEBOOKS, log=print) -> dict:
    """Grade every notebook under ``submissions``; write ``out/grades.csv`` and ``out/grades.json``.

    Each notebook runs in the sandbox (``sandbox.py``); where there is none, grading refuses unless ``unsafe``, and
    then every process the batch started is ended before the reports are written (``judge.ending_strays``).
    Every row is appended to ``out/grades.partial.jsonl`` as soon as it is graded, and a rerun of an interrupted
    batch takes the rows whose notebook, bundle and settings (mode, time limits, sandbox) are unchanged from there
    instead of grading them again, except rows of status ``error`` (the grader failed, not the notebook: graded again;
    a ``crashed`` row, whose notebook ended its own process, is kept). A sandbox that fails as a notebook
    starts (the machine, not the student) stops the batch with ``SandboxUnavailable``: the rows graded so far stay in
    the journal for the rerun. A file that is not a notebook gets a row of status ``skipped`` that says what to do.
    Returns the JSON report: the assignments with their questions, one row per submission and totals per student.
    """
    manifests = load_manifests(autograder)
    if not manifests:
        raise FileNotFoundError(f"no autograder bundles in {autograder}; run `make assign` first")
    if assignment is not None and assignment not in manifests:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {sorted(manifests)}")
    why_not = None if unsafe else sandbox.unavailable_reason()
    if why_not:
        raise _no_sandbox(why_not)
    course = [*manifests, *(p.stem for p in Path(released_dir).glob("*.ipynb"))]  # what a file's name may hold
    found = find_submissions(submissions, course)
    names, superseded = _assignments_and_latest(found, manifests, assignment)
    out = Path(out)
    journal = out / "grades.partial.jsonl"
    done = _resumable(journal)
    notebooks = sum(is_notebook(path) for _, path in found)
    log(f"grading {notebooks} notebooks in {submissions} ({'fast' if fast else 'full'} mode, {jobs} at a time, "
        f"{'no sandbox (--unsafe)' if unsafe else 'each in the sandbox'}; {len(done)} graded before; "
        f"{len(found) - notebooks} other files skipped)")
    env = {**os.environ, "DPO_TEACH_FAST": "1" if fast else "0", "TOKENIZERS_PARALLELISM": "false"}
    settings = {"mode": "fast" if fast else "full", "per_cell_s": cell_timeout, "per_notebook_s": timeout,
                "sandbox": not unsafe}  # what a row depends on besides the files (_fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    hide = _hidden(submissions, out, autograder)
    lock = threading.Lock()
    stopped: list[tuple[Path, Exception]] = []  # where the sandbox failed: the notebooks not yet started wait

    def one(item):
        student, path = item
        if stopped:
            return None
        try:
            row = graded(student, path)
        except sandbox.SandboxUnavailable as e:
            stopped.append((path, e))
            return None
        except Exception as e:  # noqa: BLE001 - e.g. the file vanished mid-batch: its row says so, the rest go on
            row = _empty_row(student, path, None, "error", f"could not grade it: {type(e).__name__}: {e}")
        log(f"  {row['student']}: {row['assignment'] or '?'} {row['score']:g}/{row['possible']:g} "
            f"{row['status']} ({row['seconds']:.0f} s)")
        return row

    def graded(student, path):
        if not is_notebook(path):
            return _not_a_notebook(student, path)
        if path in superseded:
            latest, name = superseded[path]
            row = _empty_row(student, path, name, "superseded", f"not graded: {latest.name} is this student's "
                             "later notebook of the same assignment")
        else:
            row = None
            key = _fingerprint(path, manifests[names[path]], settings) if names[path] in manifests else None
            if key is not None and key in done:  # named as this run names it (another folder, newer rules)
                row = {**done[key], "student": student, "file": str(path)}
            if row is None:
                row = grade_submission(student, path, manifests, assignment, cell_timeout, timeout, env,
                                       sandboxed=not unsafe, hide=hide, released_dir=released_dir)
                if key is not None:
                    with lock, open(journal, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"key": key, "row": row}) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
        return row

    # the largest notebooks first (longest first: with several jobs the batch ends sooner); rows in folder order
    order = sorted(range(len(found)), key=lambda i: -_size(found[i][1]))
    with ending_strays(unsafe):  # without the sandbox: no process a notebook started outlives the batch
        pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        try:
            futures = {i: pool.submit(one, found[i]) for i in order}
            rows = [futures[i].result() for i in range(len(found))]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: the rows written so far stay in the journal
    if stopped:
        path, error = stopped[0]
        kept = len(_resumable(journal))
        raise _no_sandbox(f"the sandbox failed as {Path(path).name} started ({error})",
                          f"The {kept} notebook(s) graded before are kept in {journal}: once the sandbox works, run "
                          "the same command again and it grades only the rest.")
    report = {
        "submissions_dir": str(submissions), "mode": "fast" if fast else "full",
        "sandbox": not unsafe,
        "time_limits": {"per_cell_s": cell_timeout, "per_notebook_s": timeout},
        "assignments": {a: {"questions": m["questions"]} for a, m in manifests.items()
                        if any(r["assignment"] == a for r in rows)},
        "results": rows, "students": _per_student(rows),
    }
    write_reports(report, out)
    journal.unlink(missing_ok=True)  # the batch is complete: grades.json holds every row
    return report


def _no_sandbox(why: str, then: str = "") -> sandbox.SandboxUnavailable:
    return sandbox.SandboxUnavailable(
        f"cannot grade untrusted notebooks here: {why}. A submission could then read the hidden tests, change the "
        "grader or another student's files. Grade on Linux with user namespaces, or pass --unsafe only for notebooks "
        f"you trust (your own solutions). {then}".rstrip())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _resumable(journal: Path) -> dict[str, dict]:
    """The rows graded before an interruption that a rerun keeps: a row of status error is the grader's failure, not
    the notebook's, and is graded again."""
    return {key: row for key, row in _read_journal(journal).items() if row.get("status") != "error"}


def _read_journal(journal: Path) -> dict[str, dict]:
    """The rows an interrupted run wrote (a torn last line, from a crash mid-write, is ignored)."""
    rows = {}
    if journal.is_file():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                rows[entry["key"]] = entry["row"]
            except (ValueError, KeyError, TypeError):
                continue
    return rows


def _empty_row(student: str, path: Path, assignment: str | None, status: str, problem: str = "") -> dict:
    """A grade row before (or without) grading: nothing scored; ``problem`` (why it is not graded) is its reason."""
    return {"student": student, "file": str(path), "assignment": assignment, "status": status, "reason": problem,
            "problem": problem, "score": 0.0, "possible": 0.0, "questions": {}, "errors": [], "flags": [],
            "tries": [], "seconds": 0.0}


def _per_student(rows: list[dict]) -> dict:
    students: dict[str, dict] = {}
    for r in rows:
        if r["status"] in ("superseded", "skipped"):  # not graded: no 0 in anyone's total
            continue
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
    scores = [f"{r['score']:g}/{r['possible']:g}" for r in rows]
    w1 = max([len("student")] + [len(r["student"]) for r in rows]) + 2
    w2 = max([len("assignment")] + [len(r["assignment"] or "?") for r in rows]) + 2
    w3 = max([len("status")] + [len(r["status"]) for r in rows]) + 1  # "superseded" is the longest
    ws = max([len("score")] + [len(score) for score in scores])  # right-aligned: "10.5/12.5" under "0/5"
    lines = [f"{'student':<{w1}}{'assignment':<{w2}}{'score':>{ws}}  {'status':<{w3}}reason"]
    for r, score in zip(rows, scores):
        reason = re.sub(r"\s+", " ", r["reason"])[:100]
        lines.append(f"{r['student']:<{w1}}{(r['assignment'] or '?'):<{w2}}{score:>{ws}}  {r['status']:<{w3}}{reason}")
    skipped = [Path(r["file"]).name for r in rows if r["status"] == "skipped"]
    if skipped:
        lines.append(f"not graded ({len(skipped)} file(s), status skipped: see their reasons above): "
                     + ", ".join(skipped))
    return "\n".join(lines)
