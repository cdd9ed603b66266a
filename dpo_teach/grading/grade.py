"""``dpo-teach grade DIR``: grade every notebook in a folder; one CSV and one JSON of scores, written atomically.

A submission's file is found and named in ``submissions.py``, its bundle read in ``manifests.py``, its notebook run in
a process of its own (``judge.py``); this module scores each one and runs the batch, in parallel and journaled so that
an interrupted batch resumes (``journal.py``); ``reports.py`` writes the rows out."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dpo_teach.claims import LOG_ENV, MODE_ENV, STRICT_ENV
from dpo_teach.grading import feedback, sandbox
from dpo_teach.grading.assign import AUTOGRADER, MASTERS, NOTEBOOKS, ROOT
from dpo_teach.grading.journal import Journal, fingerprint, finished_rows
from dpo_teach.grading.judge import allow_running, end_running, ending, kept, run_notebook
from dpo_teach.grading.manifests import load_manifests
from dpo_teach.grading.reports import REFERENCE_CALL, empty_row, per_student, row_reason, write_reports
from dpo_teach.grading.scan import scan
from dpo_teach.grading.strays import ending_strays
from dpo_teach.grading.submissions import (
    ARCHIVES,
    JOURNAL_FILE,
    assignments,
    detect_assignment,
    find_submissions,
    handed_in,
    in_sections,
    is_notebook,
    lone_subfolders,
    metadata_assignment,
    read_notebook,
    section_students,
    shown,
    superseded_by_latest,
    unshown_cells,
)

WINDOWS = sys.platform == "win32"


def _not_a_notebook(student: str, path: Path, submissions: Path) -> dict:
    """The row of a file that is not a notebook: skipped, with what to do, and no assignment (no 0 in a total)."""
    kind = Path(path).suffix.lower() or "no extension"
    if kind in ARCHIVES:
        unpack = "unzip" if kind == ".zip" else "unpack"
        where = ("the submissions folder" if Path(path).parent == Path(submissions)
                 else f"the folder it is in ({shown(Path(path).parent.name)}/)")
        what = f"a {kind} archive: {unpack} it into {where} and grade again"
    else:
        what = f"not a notebook ({kind}): ask the student for the .ipynb file"
    return empty_row(student, path, None, "skipped", f"{shown(Path(path).name)} is {what}")


def _run_job(bundle_tests: dict, text: str, assignment: str, cell_timeout: int, timeout: float, env: dict,
             sandboxed: bool, hide: list[str]) -> dict:
    """Grade one notebook in a fresh process (the sandbox unless ``--unsafe``). A notebook that ran out of time
    before any of its cells started (the machine, not the student) is tried once more; one that ran out of time in
    its own code is not. ``out["tries"]`` lists where each try ended (``["start", "cell 1"]``: tried twice).
    ``text``: the notebook as the scan read it (:func:`grade_submission`), never the file's own bytes."""
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
    itself ended it (``stopped``: it ran out of time, or the code tampered; the judge gives such a case its own
    words, ``judge.STOPPED``), never the test's own message (it says what the test checks) nor the student's (it may
    hold the hidden test's inputs)."""
    failed = [c for c in cases if not c["passed"]]
    public_passed = all(c["passed"] for c in cases if not c["hidden"])
    if not failed:
        return public_passed, ""
    first = failed[0]
    if not first["hidden"]:
        return public_passed, f"public test failed: {first['message']}"
    number, of = next((i, n) for i, n, c in _numbered_hidden(cases) if c is first)
    return public_passed, f"hidden test {number} of {of} failed" + (
        f": {first['message']}" if first.get("stopped") else "")


def _numbered_hidden(cases: list[dict]) -> list[tuple[int, int, dict]]:
    """``(k, n, case)`` for the hidden cases: "hidden test k of n", as the feedback and ``hidden_failed`` say."""
    hidden = [c for c in cases if c["hidden"]]
    return [(i, len(hidden), c) for i, c in enumerate(hidden, 1)]


def _hidden_failures(cases: list[dict]) -> list[str]:
    """For the instructor only (``grades.json``; never the feedback, the CSV or Gradescope's output): each failed
    hidden case with its message, what its assert says or what the student's code raised, so that "hidden test 2
    of 3 failed" can be answered without rerunning the notebook."""
    return [f"hidden test {i} of {n}: {c['message'] or '(no message)'}" for i, n, c in _numbered_hidden(cases)
            if not c["passed"]]


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
    row = empty_row(student, path, assignment, "graded")
    start = time.perf_counter()
    nb, problem = read_notebook(path)
    if problem:
        row.update(status="invalid", problem=problem)
    row["assignment"] = assignment or detect_assignment(path, nb, manifests)
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
        found["grader"] += unshown_cells(path)
        try:
            # what runs is what the scan read and what Jupyter shows: nbformat's reading of the file. The file's own
            # JSON may differ (an nbformat 3 file whose top-level "cells" nbformat ignores: unscanned code ran)
            outcome = _run_job(tests, json.dumps(nb), row["assignment"], cell_timeout, timeout, env, sandboxed,
                               list(hide))
        except sandbox.SandboxUnavailable:
            raise  # the machine's, not the notebook's: grade() stops the batch
        except Exception as e:  # noqa: BLE001 - e.g. no process could be started: report it, go on
            outcome = {"status": "error", "reason": f"could not grade it: {type(e).__name__}: {e}", "cases": {},
                       "errors": [], "tampered": []}
        row["status"], row["errors"], row["tries"] = outcome["status"], outcome["errors"], outcome.get("tries", [])
        row["problem"] = outcome.get("reason", "")
        for q, names in outcome.get("reference_calls", {}).items():  # what the scan could not see, seen at run time
            if q in auto:
                found["reference"][q] = sorted(set(found["reference"].get(q, [])) | set(names))
        for q, cases in outcome["cases"].items():
            passed = all(c["passed"] for c in cases) and q not in found["reference"]
            public_passed, feedback = _public_feedback(cases)
            if q in found["reference"]:
                feedback = (REFERENCE_CALL.format(", ".join(found["reference"][q]))
                            + " (course rule: write your own; the package's version is for after your exercise)")
            row["questions"][q] = {"score": float(auto[q]["points"]) if passed else 0.0,
                                   "possible": float(auto[q]["points"]), "public_passed": public_passed,
                                   "feedback": feedback, "hidden_failed": _hidden_failures(cases)}
        row["flags"] = (found["grader"] + [f"at run time: changed {t}" for t in outcome["tampered"]]
                        + [f"at run time: {c}" for c in outcome.get("caught", [])])
        if row["flags"]:  # also when it crashed or ran out of time: what it tried matters more
            row["status"] = "flagged"
    row["reason"] = row_reason(row)
    if row["status"] == "graded":
        row["score"] = float(sum(r["score"] for r in row["questions"].values()))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _unknown_assignment(path: Path, nb, manifests: dict, released_dir: Path) -> dict:
    """The row's status and problem for a notebook of no graded assignment: a course notebook without exercises
    (06, the instructor's demo) is not graded, and says so; of anything else the grader cannot tell what it is."""
    ungraded = [p.stem for p in sorted(Path(released_dir).glob("*.ipynb")) if p.stem not in manifests]
    course = detect_assignment(path, nb, ungraded)  # the same rule as for a graded notebook
    if course:
        return {"status": "skipped", "assignment": course,
                "problem": f"not graded: {course} has no auto-graded exercises (the graded notebooks are "
                           f"{', '.join(sorted(manifests))})"}
    named = metadata_assignment(nb)
    if named:  # the notebook says what it is, and no bundle has that name
        return {"status": "error", "problem": f"its metadata names the assignment {shown(named)}, which has no bundle "
                                              f"(the bundles are {', '.join(sorted(manifests))}): grade it with the "
                                              "bundles of its course, or pass --assignment if it is one of these"}
    return {"status": "error", "problem": "cannot tell which assignment this is: name the file after it "
                                          f"(e.g. alice_{next(iter(manifests))}.ipynb) or pass --assignment"}


def _hidden(submissions: Path, out: Path, autograder: Path) -> list[str]:
    """What every notebook's sandbox covers: the course's folder, but for what a notebook needs there
    (``sandbox.covered``: the package and its metadata, the student notebooks, the Python environment, the cache,
    the temporary folder), and wherever they are, the submissions, the grades and the bundles. The metadata
    (``dpo_teach.egg-info``) stays because the course's folder is on the notebook's ``sys.path`` (the runner is
    ``python -m``), where an empty folder of that name would hide the installed package's version (notebook 00
    checks it)."""
    # a course folder inside the cache or the temporary folder (a clone in /tmp) is still covered; one inside the
    # Python environment (an installed package: a Gradescope bundle's wheel in its venv's site-packages) has nothing
    # of the course's own to cover, and the environment must stay in view (covering it, every import failed)
    environment = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    keep = [k for k in kept() + [Path(tempfile.gettempdir())]
            if k.resolve() in environment or k.resolve() not in ROOT.resolve().parents]
    return sandbox.covered(ROOT, keep) + [str(Path(p).resolve()) for p in (submissions, out, autograder)]


def grade(submissions: Path, out: Path, autograder: Path = AUTOGRADER, assignment: str | None = None,
          cell_timeout: int = 120, timeout: float = 900, fast: bool = True, jobs: int = 1, unsafe: bool = False,
          released_dir: Path = NOTEBOOKS, regrade: bool = False, find_sections: bool = True, log=print) -> dict:
    """Grade every notebook under ``submissions``; write ``out/grades.csv`` and ``out/grades.json``.

    Each notebook runs in the sandbox (``sandbox.py``); where there is none, grading refuses unless ``unsafe``, and
    then every process the batch started is ended before the reports are written (``strays.ending_strays``).
    Every row is appended to ``out/grades.partial.jsonl`` as soon as it is graded, and a rerun of an interrupted
    batch takes the rows whose notebook, bundle and settings (mode, time limits, sandbox) are unchanged from there
    instead of grading them again, except rows of status ``error`` (the grader failed, not the notebook: graded again;
    a ``crashed`` row, whose notebook ended its own process, is kept). The same folder graded again into the same
    ``out`` takes those rows from the last batch's ``grades.json`` too (a late submission is the only notebook
    graded); ``regrade`` takes none, from either. A first-level folder whose sub-folders hold notebooks of one
    assignment is a section, each sub-folder a student (``section_students``), unless ``find_sections`` is False:
    then every first-level folder is one student (sub-folders of attempts or weeks). A sandbox that fails as a notebook
    starts (the machine, not the student) stops the batch with ``SandboxUnavailable``: the rows graded so far stay in
    the journal for the rerun. A file that is not a notebook gets a row of status ``skipped`` that says what to do.
    Returns the JSON report: the assignments with their questions, one row per submission and totals per student.
    """
    out = Path(out)
    manifests = load_manifests(autograder)
    if not manifests:
        raise FileNotFoundError(f"no autograder bundles in {autograder}; " + (
            "run `make assign` first" if MASTERS.is_dir() else "this copy of the course has no masters to make them "
            "from (the student release): grade from the instructor's full repository, or pass --autograder-dir "
            "with its bundles"))
    if assignment is not None and assignment not in manifests:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {sorted(manifests)}")
    if WINDOWS:  # no fork, SIGALRM or process groups: not even --unsafe grading runs
        raise sandbox.SandboxUnavailable(
            "grading needs Linux (in the sandbox) or macOS (--unsafe, trusted notebooks only); on Windows, run "
            "`dpo-teach grade` inside WSL (Windows Subsystem for Linux), where the sandbox works")
    why_not = None if unsafe else sandbox.unavailable_reason()
    if why_not:
        raise _no_sandbox(why_not)
    from dpo_teach.world import CACHE_ENV, cache_dir  # not at the top: torch

    cache = cache_dir()  # before any notebook: a relative $DPO_TEACH_CACHE is refused here (CacheError)
    course = [*manifests, *(p.stem for p in Path(released_dir).glob("*.ipynb"))]  # what a file's name may hold
    if Path(submissions).resolve() in out.resolve().parents and out.is_dir():  # all of out is skipped (below)
        held = sorted(p for p in out.rglob("*.ipynb") if p.is_file())
        if held:  # e.g. --out pointing at a student's folder: that student would vanish from the grades
            raise ValueError(f"--out {shown(out)} lies inside the submissions and holds {len(held)} notebook"
                             f"{'s' if len(held) > 1 else ''} ({shown(held[0].relative_to(out))}"
                             f"{', ...' if len(held) > 1 else ''}) that would not be graded: pass an --out outside "
                             f"{shown(submissions)}, or a folder that holds no notebook")
    if earlier := _other_batch(out, submissions):  # before any work: grading on would replace that batch's grades
        suffix = Path(submissions).resolve().name or "root"  # `grade /`: the root has no name
        raise ValueError(f"--out {shown(out)} holds the grades of another folder, {earlier}: grading "
                         f"{shown(submissions)} there would replace them; pass another --out (e.g. "
                         f"{shown(out.parent / (out.name + '-' + suffix))}), or move "
                         f"its reports (grades.csv, grades.json, grades_by_student.csv) out of {shown(out)} first, and "
                         f"its {feedback.FOLDER}/ folder with them (this batch would replace it)")
    feedback.check_folder(out)  # before any work, as above: the batch's last step replaces that folder
    found = find_submissions(submissions, course, skip=out)
    if not found:
        raise FileNotFoundError(f"no files in {shown(submissions)} (its sub-folders searched too, hidden ones "
                                "skipped): pass the folder that holds the submitted notebooks")
    files = [(student, path) for student, path in found if handed_in(path)]  # a link is never read (below)
    names, readable = assignments(files, manifests, assignment)  # each notebook read once
    if assignment is not None:  # --assignment is for the notebooks whose metadata names none (submissions.py)
        other = sorted((shown(p.name), n) for p, n in names.items() if n in manifests and n != assignment)
        if other:
            many = len(other) > 1
            log(f"{len(other)} notebook{'s' * many} name{'s' * (not many)} another assignment in "
                f"{'their' if many else 'its'} metadata and {'are' if many else 'is'} graded as it, not as "
                f"{assignment} (--assignment): {other[0][0]} as {other[0][1]}{', ...' * many}")
    sections = section_students(files, names, submissions) if find_sections else {}
    if sections:  # the folder above the students' folders: each sub-folder of a section is a student
        for top, sub in lone_subfolders(files, sections, submissions).items():  # a section of one student, or not
            log(f"{shown(top)}: graded as one student, {shown(top)}, whose notebooks lie in {shown(top)}/{shown(sub)}; "
                f"if {shown(top)} is a section with one student, grade {shown(Path(submissions) / top)} on its own to "
                f"name the student {shown(sub)}")
        found, files = in_sections(found, sections, submissions), in_sections(files, sections, submissions)
        for top, held in sections.items():
            listed = ", ".join(shown(h) for h in held[:3]) + (", ..." if len(held) > 3 else "")
            log(f"{shown(top)}: its sub-folders {listed} hold notebooks of the same assignment, so each is graded as a "
                f"student ({shown(top)}/{shown(held[0])}, ...); to name them by their folders alone, pass "
                f"{shown(Path(submissions) / top)}; if they are {shown(top)}'s own attempts, pass --no-sections (the "
                f"latest notebook of each assignment is graded)")
    superseded = superseded_by_latest(files, names, readable, manifests)  # of each student as named now
    # what a row depends on besides the files (--timeout 900 and the default 900 are one setting)
    settings = {"mode": "fast" if fast else "full", "per_cell_s": int(cell_timeout),
                "per_notebook_s": float(timeout), "sandbox": not unsafe, "memory_mb": sandbox.memory_limit_mb()}
    journal = Journal(out / JOURNAL_FILE, {
        path: fingerprint(path, manifests[names[path]], settings) for _, path in files
        if names.get(path) in manifests and path not in superseded},
        earlier=finished_rows(out / "grades.json"), fresh=regrade)  # grades.json: this folder's (_other_batch)
    notebooks = sum(is_notebook(path) for _, path in files)
    aside = journal.set_aside()
    stale = (f" ({aside} graded before under other settings or from an earlier version of the file: graded again)"
             if aside else "")
    log(f"grading {notebooks} notebook{'s' * (notebooks != 1)} in {shown(submissions)} "
        f"({'fast' if fast else 'full'} mode, {jobs} at a time, "
        f"{'no sandbox (--unsafe)' if unsafe else 'each in the sandbox'}; "
        f"{'every notebook graded again (--regrade)' if regrade else f'{len(journal.done)} graded before{stale}'}; "
        f"{len(found) - notebooks} other file{'s' * (len(found) - notebooks != 1)} skipped)")
    if settings["memory_mb"] < sandbox.MEMORY_MB and not unsafe:
        log(f"memory: {settings['memory_mb']} MiB per notebook, this machine's hard limit (ulimit -Hv), below the "
            f"sandbox's {sandbox.MEMORY_MB} MiB: a notebook that needs more ends as crashed")
    # Sandboxed, a notebook gets only the variables it needs (no token or key of the grader's), and the grader's
    # cache by name: its runner's home is a fresh folder, where the default cache (~/.cache/dpo-teach) is empty, and
    # every notebook that loads π_ref would build it again.
    # The claim checks' settings are the instructor's CI's (claims.py), not a student's: a graded notebook runs as on
    # a student's machine, where a claim that another CPU does not reproduce is a printed note, not a cell error.
    inherited = os.environ if unsafe else sandbox.notebook_environment(os.environ)
    env = {**{name: value for name, value in inherited.items() if name not in (STRICT_ENV, MODE_ENV, LOG_ENV)},
           "DPO_TEACH_FAST": "1" if fast else "0", "TOKENIZERS_PARALLELISM": "false", CACHE_ENV: str(cache)}
    out.mkdir(parents=True, exist_ok=True)
    hide = _hidden(submissions, out, autograder)
    stopped: list[tuple[Path, Exception]] = []  # where the sandbox failed: the notebooks not yet started wait

    def one(item):
        student, path = item
        if stopped or ending():  # the sandbox failed, or Ctrl-C: no notebook starts
            return None
        try:
            row = graded(student, path)
        except sandbox.SandboxUnavailable as e:
            stopped.append((path, e))
            return None
        except Exception as e:  # noqa: BLE001 - e.g. the file vanished mid-batch: its row says so, the rest go on
            row = empty_row(student, path, None, "error", f"could not grade it: {type(e).__name__}: {e}")
        if row is None:
            return None
        took = "graded before" if journal.taken(path) else f"{row['seconds']:.0f} s"
        log(f"  {row['student']}: {row['assignment'] or '?'} {row['score']:g}/{row['possible']:g} "
            f"{row['status']} ({took})")
        return row

    def graded(student, path):
        if not handed_in(path):
            return empty_row(student, path, None, "skipped", f"{shown(path.name)} is a symbolic link, not a file "
                             "handed in: copy the student's file into its place and grade again")
        if not is_notebook(path):
            return _not_a_notebook(student, path, submissions)
        if path in superseded:
            row = empty_row(student, path, names[path], "superseded", superseded[path])
        else:
            row = journal.resumed(path, student)
            if row is None:
                row = grade_submission(student, path, manifests, names.get(path), cell_timeout, timeout, env,
                                       sandboxed=not unsafe, hide=hide, released_dir=released_dir)
                if ending():  # ended by the Ctrl-C, not by its own code: graded again on the rerun
                    return None
                journal.record(path, row)
        return row

    with ending_strays(unsafe):  # without the sandbox: no process a notebook started outlives the batch
        rows = _each(found, one, jobs, journal)
    if stopped:
        path, error = stopped[0]
        then = _kept(journal, "once the sandbox works, run the same command again")
        raise _no_sandbox(f"the sandbox failed as {shown(Path(path).name)} started ({error})",
                          f"{then[0].upper()}{then[1:]}.")
    report = {
        "submissions_dir": shown(submissions), "submissions_path": shown(Path(submissions).resolve()),
        "mode": "fast" if fast else "full",
        "sandbox": not unsafe,
        "time_limits": {"per_cell_s": cell_timeout, "per_notebook_s": timeout},
        "assignments": {a: {"questions": m["questions"]} for a, m in manifests.items()
                        if any(r["assignment"] == a for r in rows)},
        "results": rows, "students": per_student(rows),
    }
    try:
        write_reports(report, out)
        feedback.write_feedback(report, out)
    except OSError as e:  # a full disk, a folder named grades.csv: the rows are not lost
        raise ReportNotWritten(f"could not write the reports (grades.csv, grades.json, grades_by_student.csv, "
                               f"{feedback.FOLDER}/) in {shown(out)} ({e}); "
                               + _kept(journal, "fix that and run the same command again", finished=True)) from e
    journal.close()
    return report


def _other_batch(out: Path, submissions: Path) -> str | None:
    """The submissions folder whose grades ``out`` holds, where it is not ``submissions`` (a second folder graded
    into the same ``--out``, the default ``results/grades`` above all, replaced the first one's grades without a
    word); None where ``out`` holds no grades or this folder's."""
    try:
        earlier = json.loads((out / "grades.json").read_text(encoding="utf-8"))
        path = earlier.get("submissions_path") or str(Path(earlier["submissions_dir"]).resolve())  # older reports
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no grades there, or none this grader wrote: nothing of a batch to keep
    return None if Path(path) == Path(submissions).resolve() else shown(path)


def _kept(journal: Journal, then: str, finished: bool = False) -> str:
    """Where the rows graded so far are kept for the rerun, then what to do (``then``); no file is named when no
    notebook was graded (the journal may not exist). ``finished``: the batch was graded to its end."""
    kept = len(journal.kept())
    if not kept:
        return f"no notebook was graded, so none is kept: {then}"
    if finished:
        return f"the {kept} notebook(s) graded are kept in {shown(journal.path)}: {then} (it grades none of them again)"
    return f"the {kept} notebook(s) graded so far are kept in {shown(journal.path)}: {then} and it grades only the rest"


def _each(found: list, one, jobs: int, journal: Journal) -> list:
    """``one(item)`` of every item of ``found``, ``jobs`` at a time, the largest files first (with several jobs the
    batch ends sooner); the results in ``found``'s order. Ctrl-C ends the notebooks running (``judge.end_running``:
    their rows are not journaled, none starts) and raises :class:`GradingInterrupted`, which says what the journal
    keeps."""
    order = sorted(range(len(found)), key=lambda i: -_size(found[i][1]))
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    interrupted = False
    try:
        futures = {i: pool.submit(one, found[i]) for i in order}
        return [futures[i].result() for i in range(len(found))]
    except KeyboardInterrupt:
        interrupted = True
        end_running()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if interrupted:
            allow_running()
            raise GradingInterrupted(f"interrupted; {_kept(journal, 'run the same command again')}") from None


class ReportNotWritten(OSError):
    """The batch was graded, but its reports could not be written; the message says where the rows are kept."""


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: the message says how many rows the journal keeps for the rerun."""


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
