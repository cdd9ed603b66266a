"""Gradescope autograder bundles that carry what grading needs, and their entry point.

``make gradescope`` writes ``results/gradescope/NN_name.zip`` for every assignment (not committed: it holds a
wheel of the package). Uploaded as a Gradescope "autograder", it is unpacked into ``/autograder/source``; Gradescope
runs ``setup.sh`` once to build the image and ``run_autograder`` for every submission. A bundle holds:

- ``setup.sh``, ``torch.txt`` and ``requirements.txt``: a fresh virtual environment with the CPU build of torch
  (from PyTorch's CPU index; ``TORCH_INDEX=`` empty uses pip's default index, as on machines whose pip already
  serves CPU wheels), then the exact versions of everything else grading imports, taken from the environment that
  built the bundle; ``pip_install.py`` (the course's ``scripts/pip_install.py``) installs them with uv, or with pip
  where uv cannot be had;
- ``dpo_teach-*.whl``: the package (its grader, the notebooks' helpers), installed without its other extras;
- ``cache/``: the notebooks' π_ref, so that nothing trains at grade time (``DPO_TEACH_CACHE``);
- ``autograder/``: this assignment's test bundle and manifest from ``make assign``; ``released/``: the student
  notebook as given out (the integrity scan compares against it);
- ``run_autograder``: grades the submitted notebook with ``dpo-teach grade``'s grader (the sandbox when the
  container allows user namespaces; otherwise Gradescope's one-container-per-submission is the isolation, the
  grader ends every process the notebook started, in a session of its own too, before it writes the result, and
  the output says so) and writes ``/autograder/results/results.json`` in Gradescope's format. A failed hidden test
  is numbered there, never quoted. A multiple-choice question's result (``"choice": true`` in the manifest,
  ``assign.multiple_choice``) is ``"visibility": "after_published"``: a student who could resubmit and watch its
  score would find the answer by trying each letter. Gradescope then also hides the total score from students until
  the grades are published (its results specification: "If test cases are hidden, students will not be able to see
  their total score"), and the output text names only the code questions (``reports.student_reason``); code questions
  stay visible, for instant feedback.

``setup.sh`` needs Python ≥ 3.11 (the wheel's ``Requires-Python``) with its ``venv`` module (Debian and Ubuntu:
``python3.X-venv``) and the network (PyPI, PyTorch's CPU index); it stops with a message naming what is missing.

Students upload the ``.ipynb`` file itself (any name); Gradescope's manual questions (04's open answers) are graded
on Gradescope as usual.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from dpo_teach.grading.assign import AUTOGRADER, NOTEBOOKS, ROOT
from dpo_teach.utils import atomic_file

# What grading imports (the package's grader, the notebooks, their helpers), pinned to the builder's versions.
RUNTIME = ["transformers", "tokenizers", "numpy", "matplotlib", "ipywidgets", "ipython", "nbformat",
           "PyYAML", "tqdm", "vaderSentiment", "filelock"]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INSTALLER = ROOT / "scripts" / "pip_install.py"  # setup.sh installs with it: uv where it can be had, else pip

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image. PYTHON and TORCH_INDEX may be set.
# Needs: Python >= PYTHON_FLOOR with its venv module (Debian/Ubuntu: the python3.X-venv package), and the network.
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < PYTHON_TUPLE)' || {
    echo "setup.sh: $PY is not Python >= PYTHON_FLOOR, which the package requires: choose a Gradescope base image" >&2
    echo "that has it, or install one (apt-get install -y python3.12 python3.12-venv) and set PYTHON=python3.12" >&2
    exit 1
}
"$PY" -m venv "$SRC/venv"
TORCH_INDEX="${TORCH_INDEX-TORCH_CPU_INDEX}"
# pip install, through uv where it can be had (the course's scripts/pip_install.py; INSTALLER=pip: pip only)
install() { "$SRC/venv/bin/python" "$SRC/pip_install.py" --quiet "$@"; }
install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} -r "$SRC/torch.txt"
install -r "$SRC/requirements.txt"
install --no-deps "$SRC"/dpo_teach-*.whl
"""


def python_floor(root: Path = ROOT) -> tuple[int, int]:
    """The oldest Python the package supports: ``requires-python`` in the ``pyproject.toml`` the bundle's wheel is
    built from (``>=3.11``; the installed copy's metadata may be older)."""
    import tomllib

    spec = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    match = re.search(r">=\s*(\d+)\.(\d+)", spec)
    return (int(match[1]), int(match[2])) if match else sys.version_info[:2]


def setup_script() -> str:
    """``setup.sh``: the torch index and the Python it checks for filled in."""
    floor = python_floor()
    return (SETUP.replace("TORCH_CPU_INDEX", TORCH_CPU_INDEX).replace("PYTHON_FLOOR", ".".join(map(str, floor)))
            .replace("PYTHON_TUPLE", repr(floor)))

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission: the files in $ROOT/submission, the result in $ROOT/results.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
SRC="$ROOT/source"
export DPO_TEACH_CACHE="$SRC/cache" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$ROOT/results"
exec "$SRC/venv/bin/python" -m dpo_teach.grading gradescope --source "$SRC" --submission "$ROOT/submission" \\
    --results "$ROOT/results/results.json"
"""


def requirements() -> str:
    lines = [f"{name}=={metadata.version(name)}" for name in RUNTIME]
    return "# what grading imports, at the versions of the environment that built this bundle\n" + "\n".join(lines)


def torch_requirement() -> str:
    """torch at the builder's version, without its build label: from the CPU index it is the CPU build."""
    return f"torch=={metadata.version('torch').split('+')[0]}\n"


def copy_sources(root: Path, dest: Path) -> Path:
    """What a wheel of the package is built from: its metadata files and ``dpo_teach/`` (no caches), into ``dest``."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, dest / name)
    shutil.copytree(root / "dpo_teach", dest / "dpo_teach", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _wheel(tmp: Path) -> Path:
    """The package as a wheel, built from a copy of its sources: a build in the clone itself would reuse its
    ``build/`` folder, where setuptools leaves files that have since been renamed or deleted."""
    source = copy_sources(ROOT, tmp / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp), str(source)],
                   check=True, capture_output=True)
    (wheel,) = tmp.glob("dpo_teach-*.whl")
    return wheel


class CacheUnusable(ValueError):
    """π_ref, which every bundle carries, is neither in ``$DPO_TEACH_CACHE`` nor can be saved there."""


def _reference_entry() -> Path:
    """The cache entry of the notebooks' π_ref (built first if it is not cached: before, the cache is checked, as the
    bundles take π_ref from the saved entry)."""
    from dpo_teach import world

    config = world.WorldConfig(preset="tiny")
    try:
        cache = world.cache_dir()
    except world.CacheError as e:  # a relative $DPO_TEACH_CACHE
        raise CacheUnusable(str(e)) from None
    problem = None if world.reference_cached(config) else world.cache_problem(cache)
    if problem:
        raise CacheUnusable(f"the bundles carry π_ref from its cache, and π_ref cannot be saved in {cache} "
                            f"({problem}); point ${world.CACHE_ENV} at a folder you can write to")
    world.load_reference(config)
    return world.cache_entry(config).resolve()


def build(out: Path, autograder: Path = AUTOGRADER, released: Path = NOTEBOOKS) -> list[Path]:
    """One Gradescope bundle per assignment of ``autograder`` into ``out``; returns their paths."""
    reference = _reference_entry()  # before the wheel: the cache's problems are said first
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _wheel(Path(tmp))
        shared = [("setup.sh", setup_script(), 0o755), ("run_autograder", RUN, 0o755),  # the same in every bundle
                  ("requirements.txt", requirements() + "\n", 0o644), ("torch.txt", torch_requirement(), 0o644),
                  ("pip_install.py", INSTALLER.read_text(encoding="utf-8"), 0o644)]
        for manifest in sorted(Path(autograder).glob("*.json")):
            name = manifest.stem
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
                for member, text, mode in shared:
                    info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = mode << 16
                    z.writestr(info, text)
                z.write(wheel, wheel.name)
                z.write(manifest, f"autograder/{name}.json")
                z.write(manifest.with_suffix(".zip"), f"autograder/{name}.zip")
                z.write(Path(released) / f"{name}.ipynb", f"released/{name}.ipynb")
                for path in sorted(reference.rglob("*")):
                    if path.is_file():
                        z.write(path, f"cache/{reference.name}/{path.relative_to(reference)}")
            target = out / f"{name}.zip"
            with atomic_file(target) as partial:  # a crash while writing leaves the earlier bundle, not half a zip
                partial.write_bytes(buffer.getvalue())
            written.append(target)
    return written


def result_tests(row: dict, withheld: set[str]) -> list[dict]:
    """``results.json``'s tests: one per auto-graded question, scored as the row's score counts it
    (``reports.counted``: 0 in a flagged row), a ``withheld`` one visible only once the grades are published."""
    from dpo_teach.grading.reports import counted

    return [{"name": q, "score": r["score"], "max_score": r["possible"], "output": question_output(r, row),
             "visibility": "after_published" if q in withheld else "visible"} for q, r in counted(row).items()]


def question_output(result: dict, row: dict) -> str:
    """A question's output on Gradescope: its feedback (a failed public test quoted, a hidden one numbered); in a
    row that scored 0 as a whole (flagged, out of time, crashed: ``reports.counted``), why it is not scored."""
    if row["status"] == "flagged":
        return "Not scored yet: see the output above."
    if row["status"] == "graded" or result["feedback"]:
        return result["feedback"]
    return "Not scored: see the output above."


def _student_output(row: dict, withheld: set[str]) -> str:
    """What a student sees at once: the row's reason in a student's words without the ``withheld`` questions
    (``reports.student_reason``), and when there are any, when their results come."""
    from dpo_teach.grading.reports import student_reason

    reason = student_reason(row, withheld)
    if not withheld:
        return reason or "All auto-graded questions passed."
    return (f"{reason or 'All code questions passed.'}\nYour multiple-choice answers ({', '.join(sorted(withheld))}) "
            "are scored now and shown, with your total, when your instructor publishes the grades.")


class GraderFailed(RuntimeError):
    """The grader, not the submission, failed (a row of status ``error``): no ``results.json`` is written, so that
    Gradescope says the autograder failed and the instructor can regrade, instead of showing the student a 0."""


def run(source: Path, submission: Path, results: Path) -> dict:
    """Grade the notebook in ``submission`` (the latest ``.ipynb``) and write Gradescope's ``results.json``; raises
    :class:`GraderFailed` (and writes nothing) where the grader failed on it."""
    from dpo_teach.grading.manifests import load_manifests
    from dpo_teach.grading.submissions import (
        assignments,
        find_submissions,
        handed_in,
        is_notebook,
        shown,
        superseded_by_latest,
    )

    ((assignment, manifest),) = load_manifests(source / "autograder").items()
    notebooks = sorted(p for _, p in find_submissions(submission) if is_notebook(p) and handed_in(p))  # as the batch
    # the batch's rule: the latest readable one (of copies saved in one instant, the highest copy number)
    mine, manifests = [("you", p) for p in notebooks], {assignment: manifest}
    superseded = superseded_by_latest(mine, *assignments(mine, manifests, assignment), manifests)
    graded = next((p for p in notebooks if p not in superseded), None)
    other = _other_assignment(graded, assignment) if graded is not None else None
    if graded is None:
        report = {"score": 0, "output": "No .ipynb file was submitted: upload your notebook file.", "tests": []}
    elif other:  # another notebook of the course: not graded (its cells would read as tampering with this one's)
        report = {"score": 0, "tests": [], "output": f"{shown(graded.name)} is the notebook of {other}, and this "
                  f"assignment is {assignment}: upload your {assignment}.ipynb instead (nothing was graded)."}
    else:
        row, note = _graded_row(source, graded, assignment)
        if row["status"] == "error":  # the grader's or the machine's failure (the assignment is the bundle's own)
            raise GraderFailed(row["reason"])
        if len(notebooks) > 1:
            note = "\n".join(filter(None, [f"Graded {shown(graded.name)}, the latest of the {len(notebooks)} "
                                            "notebooks you submitted.", note]))
        withheld = {q for q, about in manifest["questions"].items() if about["choice"]} & set(row["questions"])
        tests = result_tests(row, withheld)
        output = "\n".join(filter(None, [_student_output(row, withheld), note]))
        report = {"score": row["score"], "output": output, "tests": tests}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1))
    return report


def _other_assignment(notebook: Path, assignment: str) -> str | None:
    """The course assignment that ``notebook``'s metadata names, where it is not this bundle's ``assignment``."""
    from dpo_teach.grading.submissions import metadata_assignment, read_notebook

    nb, _ = read_notebook(notebook)
    named = metadata_assignment(nb) if nb is not None else None
    return named if named and named != assignment else None


def _graded_row(source: Path, notebook: Path, assignment: str) -> tuple[dict, str | None]:
    """``notebook``'s grade row, and a note for the output: in the grader's sandbox where the container allows it
    (no note), else without it (Gradescope's container per submission isolates it; the note says so)."""
    from dpo_teach.grading import sandbox

    why_not = sandbox.unavailable_reason()
    if why_not is None:
        try:
            return _grade_copy(source, notebook, assignment, unsafe=False), None
        except sandbox.SandboxUnavailable as e:  # the probe passed, yet the notebook's own sandbox did not start
            why_not = f"it did not start for this notebook ({e})"
    note = (f"(The grader's own sandbox is not available in this container: {why_not}; the container isolates the "
            "submission.)")
    return _grade_copy(source, notebook, assignment, unsafe=True), note


def _grade_copy(source: Path, notebook: Path, assignment: str, unsafe: bool) -> dict:
    from dpo_teach.grading.grade import grade

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "submission"
        folder.mkdir()
        shutil.copy(notebook, folder / f"submission_{assignment}.ipynb")
        graded = grade(folder, Path(tmp) / "out", autograder=source / "autograder", assignment=assignment,
                       unsafe=unsafe, released_dir=source / "released", log=lambda m: None)
    (row,) = graded["results"]
    return row
