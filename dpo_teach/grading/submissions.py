"""What a folder of submissions holds: which files are notebooks, whose each one is (a sub-folder, or the file's name
less the assignment's and the marks of a copy), which assignment it is, and which of a student's notebooks is the
latest."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# What a browser, a file manager or Jupyter adds to a copy's name: " (1)", "-1", " copy", " - Copy (2)", "-Copy1";
# Google Drive and Colab put "Copy of " in front.
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|[\s_-]+copy\s*\d*|-\d{1,2})$", re.IGNORECASE)
_COPY_PREFIX = re.compile(r"^copy of\s+", re.IGNORECASE)
_SEPARATORS = "_- "
ARCHIVES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}


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


def detect_assignment(path: Path, nb, manifests: dict) -> str | None:
    """The assignment of notebook ``nb`` at ``path``: its otter metadata's when ``manifests`` has it, else the
    longest name of ``manifests`` in the file's name, else None."""
    name = (nb.metadata.get("otter") or {}).get("assignment_name") if nb is not None else None
    if name in manifests:
        return name
    return _named_in(path.name, manifests)


def _named_in(text: str, names: Iterable[str]) -> str | None:
    """The longest of ``names`` that ``text`` holds, whatever the case (a student's or an assignment's file name)."""
    return max((n for n in names if n.lower() in text.lower()), key=len, default=None)


def assignments_and_latest(found: list[tuple[str, Path]], manifests: dict,
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
        names[path] = assignment or detect_assignment(path, nb, manifests)
        if nb is not None and names[path] in manifests:
            groups.setdefault((student, names[path]), []).append(path)
    superseded = {}
    for (_, name), paths in groups.items():
        latest = max(paths, key=lambda p: (p.stat().st_mtime, p.name))
        superseded.update({p: (latest, name) for p in paths if p != latest})
    return names, superseded
