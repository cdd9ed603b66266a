"""``make release``: the course as students get it, with nothing of the instructor's in it.

The release is the committed tree minus what only instructors and developers need: the masters (solutions, hidden
tests, rubrics), the autograder bundles, the test suite (it grades the masters' solutions and builds wrong
answers from them), the benchmarks and CI. Before the folder appears, every text file in it outside the package
(whose functions are the reference the exercises re-derive, public by design) is searched for every solution line
and hidden-test line of every master (``assign.course_secrets``); one found, and nothing is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from dpo_teach.grading.assign import MASTERS, ROOT, course_secrets
from dpo_teach.utils import check_replaceable

INCLUDE = ("notebooks/", "dpo_teach/", "scripts/", ".devcontainer/", "docs/images/", "README.md", "LICENSE", "Makefile",
           "pyproject.toml", "environment.yml", "requirements.lock", ".gitignore")  # docs/images/: the README's figures
# What an earlier release may hold at its top and still be replaced whole: what a release writes, and what its own
# `make lab`/`make demo` set-up creates (.venv, and the editable install's dpo_teach.egg-info; rebuilt on the next
# make). Anything else (notes, a results/ folder) is kept: the release is refused until it is moved out.
RELEASED = frozenset(name.split("/")[0] for name in INCLUDE) | {".venv", "dpo_teach.egg-info"}


RELEASE_NOTE = ("> This is the student release of the course: the notebooks, the package and the set-up. What the "
                "README says about `course/` (the instructor's masters, bundles and guide), `tests/` and "
                "`benchmarks/` is in the full repository.\n")


class LeakError(RuntimeError):
    """The release would hold instructor-only text; the message names the file and the line."""


class OutError(ValueError):
    """``out`` cannot be replaced by a release without losing files that are not an earlier release's."""


def check_out(out: Path, root: Path = ROOT) -> None:
    """Raise :class:`OutError` unless ``out`` may become the release: a new or empty folder, or an earlier release
    (its README carries :data:`RELEASE_NOTE`, and it holds nothing at its top that a release does not write:
    ``utils.check_replaceable``, which also refuses a file and the current folder or one above it), never the course's
    folder or one above it."""
    out, root = Path(out).resolve(), Path(root).resolve()
    if out == root or out in root.parents:
        raise OutError(f"--out {out} is the course's folder {root} or a folder above it, which the release would "
                       "replace; pass a new folder")
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise OutError(f"--out {out}: {blocked} is a file, not a folder; pass a new folder")
    try:
        check_replaceable(out, RELEASED, "a release")
    except FileExistsError as e:
        raise OutError(f"--out {e}") from None
    if out.exists() and any(out.iterdir()):
        readme = out / "README.md"
        if not (readme.is_file() and RELEASE_NOTE in readme.read_text(encoding="utf-8", errors="replace")):
            raise OutError(f"--out {out} holds files and is not an earlier release (its README.md has no release "
                           "note); pass a new folder, or remove that one yourself")


SKIP = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}  # never part of a release


def released_files(root: Path = ROOT) -> list[str]:
    """The files students get: the committed ones (``git ls-files``), or, in a copy without git history (an
    unpacked archive), the files on disk under the same paths, build leftovers excepted."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if listed.returncode == 0 and (root / ".git").exists():
        names = listed.stdout.decode().split("\0")
    else:
        names = [p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and not SKIP & set(p.relative_to(root).parts)
                 and not any(part.endswith(".egg-info") for part in p.relative_to(root).parts)]
    return sorted(f for f in names if f.startswith(INCLUDE) and (root / f).is_file())


def _lines(path: Path) -> set[str]:
    """The stripped lines of a text file; of a notebook, of every string in it (cells, outputs, the public tests in
    its metadata, doctest prompts removed)."""
    text = path.read_text(encoding="utf-8")
    strings = [text]
    if path.suffix == ".ipynb":
        strings, todo = [], [json.loads(text)]
        while todo:
            item = todo.pop()
            if isinstance(item, dict):
                todo += item.values()
            elif isinstance(item, list):
                todo += item
            elif isinstance(item, str):
                strings.append(item)
    return {line.strip().removeprefix(">>> ").removeprefix("... ").strip()
            for string in strings for line in string.splitlines()}


def find_leaks(tree: Path, masters: Path = MASTERS) -> list[str]:
    """``"file: line"`` for every line of a text file under ``tree`` that is a master's solution or hidden-test
    line (whole lines: a public test's ``_ref = GPT2LMHeadModel(...)`` is not the hidden ``ref = ...``)."""
    secret = course_secrets(masters)
    leaks = []
    for path in sorted(p for p in Path(tree).rglob("*") if p.is_file()):
        if path.relative_to(tree).parts[0] == "dpo_teach":
            continue  # the package is the course's reference implementation, public by design
        if path.suffix == ".zip":
            leaks.append(f"{path.relative_to(tree)}: an archive (autograder bundles stay with the instructor)")
            continue
        try:
            found = _lines(path) & secret
        except (UnicodeDecodeError, ValueError, OSError):
            continue
        leaks += [f"{path.relative_to(tree)}: {line[:80]}" for line in sorted(found)]
    return leaks


def release(out: Path, root: Path = ROOT) -> list[str]:
    """Write the student release to ``out`` (replacing it); return its files. Raises LeakError, writing nothing,
    when a master's solution or hidden test would be in it, and OutError, writing nothing, when ``out`` holds other
    files (:func:`check_out`)."""
    check_out(out, root)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    files = released_files(root)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        stage = Path(tmp) / out.name
        for name in files:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, stage / name)
        readme = stage / "README.md"
        if readme.is_file():  # under its title: what the README mentions that this tree leaves out
            title, _, rest = readme.read_text(encoding="utf-8").partition("\n")
            readme.write_text(f"{title}\n\n{RELEASE_NOTE}{rest}", encoding="utf-8")
        leaks = find_leaks(stage, root / "course" / "masters")
        if leaks:
            raise LeakError(f"the release would show {len(leaks)} instructor-only line(s), first: {leaks[0]}")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return files
