"""What a folder of submissions holds: which files are notebooks, whose each one is (a sub-folder, or the file's name
less the assignment's and the marks of a copy), which assignment it is, and which of a student's notebooks is the
latest."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# What a browser, a file manager or Jupyter adds to a copy's name: " (1)", "-1", " copy", " - Copy (2)", "-Copy1";
# Google Drive and Colab put "Copy of " in front.
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|[\s_-]+copy\s*\d*|-\d{1,2})$", re.IGNORECASE)
_COPY_PREFIX = re.compile(r"^copy of\s+", re.IGNORECASE)
# Canvas's bulk download names each file "<name>[_LATE]_<user id>_<submission id>_<the student's file name>": the
# student is the name and the user id; the submission id changes with every upload, LATE with the deadline.
_CANVAS = re.compile(r"^(.+?)(?:_late)?_(\d+)_\d+$", re.IGNORECASE)
_SEPARATORS = "_- "
SAME_INSTANT_S = 2.0  # a git clone or an unzip writes a folder's files within this of one another (FAT: 2 s steps)
REPORT_FILES = ("grades.csv", "grades.json", "grades_by_student.csv")  # what `dpo-teach grade` writes in --out
BATCH_REPORTS = REPORT_FILES[:2]  # what every batch wrote, older ones too: its reports are these two side by side
JOURNAL_FILE = "grades.partial.jsonl"  # and while it runs (journal.py)
FEEDBACK_FOLDER = "feedback"  # and a file per student in this folder beside them (feedback.py)
GRADER_FILES = {*REPORT_FILES, JOURNAL_FILE}
ARCHIVES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}


def is_notebook(path: Path) -> bool:
    return Path(path).suffix.lower() == ".ipynb"  # also ALICE.IPYNB, saved by a tool that shouts


def shown(text: str | Path) -> str:
    """A file or student name as the reports write it: a name that is not UTF-8 on disk (unzipped from a Windows
    archive: ``Fran\\xe7ois``) keeps its bytes as ``\\xe7`` escapes, where printing or writing it would fail."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def read_notebook(path: Path):
    """``(notebook, None)``, or ``(None, why it is not a usable notebook)``. Grading needs a list of cells, each with
    its type and, if it has a source, source text (the runner reads a missing one as empty, as Jupyter opens it):
    nbformat's schema is stricter than Jupyter, which opens and runs (so a student hands in) a notebook that VS Code
    saved with cell ids under nbformat 4.4, or whose markdown cell kept its outputs."""
    import nbformat  # not at the top: each submission's process imports this package (nbformat costs ~1 s)

    try:
        nb = nbformat.read(path, as_version=4)
        cells = nb.get("cells")
        if not isinstance(cells, list):
            raise ValueError("it holds no list of cells")
        for i, cell in enumerate(cells, 1):
            if not (isinstance(cell, dict) and isinstance(cell.get("cell_type"), str)
                    and isinstance(cell.get("source", ""), str)):
                raise ValueError(f"its cell {i} has no cell_type, or a source that is not text")
    except Exception as e:  # noqa: BLE001 - any reason a file is not a usable notebook
        first_line = (str(e).splitlines() or [""])[0][:200]
        return None, _not_json(path) or f"not a valid notebook ({type(e).__name__}: {first_line})"
    return nb, None


# What a file named .ipynb often is instead of a notebook, told by its first bytes, and what to do about it.
_OTHER_FILES = [(b"PK\x03\x04", "it is a zip archive named .ipynb (an LMS download): unzip it into the submissions "
                 "folder and grade again"),
                (b"%PDF", "it is a PDF named .ipynb: ask the student for the .ipynb file (Jupyter: File > Download)"),
                (b"<", "it is a web page (HTML) named .ipynb, often a download that saved the page around the "
                 "notebook: ask the student for the .ipynb file (Jupyter: File > Download)")]


def _not_json(path: Path) -> str | None:
    """Why ``path``, which nbformat could not read, is no notebook at all, in words an instructor can act on (empty,
    another kind of file, JSON that stops early), or None (it is JSON: nbformat's own reason says what is wrong with
    it); nbformat's message said only ``NotJSONError`` or a codec's error."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror or e}): check the file's permissions and grade again"
    if not data.strip():
        return "not a valid notebook: the file is empty (an upload that failed): ask the student to upload it again"
    head = data.lstrip()[:8]
    for magic, what in _OTHER_FILES:
        if head.startswith(magic):
            return f"not a valid notebook: {what}"
    try:  # as Jupyter and nbformat read it: json.loads of the bytes would also take UTF-16 and UTF-32
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ("not a valid notebook: it is not text (UTF-8), so not a notebook saved by Jupyter: ask the student to "
                "open it in Jupyter, save it and upload it again")
    try:
        parsed = json.loads(text.removeprefix("\ufeff"))
    except ValueError as e:
        if _cut_short(text):
            return ("not a valid notebook: it stops before its end (an upload or a save that was cut short): ask the "
                    "student to upload it again")
        return (f"not a valid notebook: its JSON is broken at line {e.lineno}, column {e.colno} ({e.msg}), an edit "
                "by hand or a merge: ask the student to open it in Jupyter, save it and upload it again")
    if not isinstance(parsed, dict) or "nbformat" not in parsed:
        return (f"not a valid notebook: it is JSON ({'an object' if isinstance(parsed, dict) else _json_kind(parsed)}"
                " without \"nbformat\") but no notebook: ask the student to open it in Jupyter, save it and upload "
                "it again")
    return None


def _json_kind(value) -> str:
    return {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(type(value), "a number")


def unshown_cells(path: Path) -> list[str]:
    """What an instructor should know when ``path`` holds cells that nbformat (so Jupyter, the scan and the runner)
    does not read: a top-level ``cells`` list in a file of nbformat 3 or older, which reads its worksheets. No honest
    file looks like that (the runner once ran that list, unscanned); they are not run, and the notebook is flagged."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    if isinstance(raw, dict) and raw.get("nbformat") != 4 and isinstance(raw.get("cells"), list):
        return [f"the file holds {len(raw['cells'])} cells that Jupyter does not show (a top-level \"cells\" list in "
                f"an nbformat {raw.get('nbformat')} file, which Jupyter reads from its worksheets); they were not run"]
    return []


def _cut_short(text: str) -> bool:
    """Whether JSON ``text`` ends inside a string or with a bracket still open: the end of the file is missing."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return in_string or depth > 0


def _copy_suffixes(text: str) -> tuple[str, list[int]]:
    """``text`` without the marks of a copy at its end (`` (1)``, ``-Copy2``, …), and their numbers, first first."""
    numbers: list[int] = []
    while (trimmed := _COPY_SUFFIX.sub("", text)) != text:
        numbers[:0] = [int(n) for n in re.findall(r"\d+", text[len(trimmed):])] or [1]
        text = trimmed
    return text, numbers


def _without_copy_marks(text: str) -> str:
    return _copy_suffixes(text)[0].strip(_SEPARATORS)


def student_name(stem: str, assignments: Iterable[str]) -> str:
    """The student of a file directly in the submissions folder, from its name: what comes before the name of the
    assignment in it (``alice`` of ``alice_01_kl_objective (1)``), else what comes after it
    (``01_kl_objective_alice``), without separators and the marks of a copy; a name with neither
    (``01_kl_objective``, ``01_kl_objective (1)``) is the assignment's. Without an assignment's name, the name less
    the marks of a copy. In Canvas's names (``smithjohn_LATE_12345_67890_01_kl_objective``) the student is
    ``smithjohn_12345``; a file its student renamed (``smithjohn_12345_67890_hw1``) keeps its whole name: nothing
    tells it safely from a name such as ``lab_2024_1205_alice``, which must not become ``lab_2024``."""
    bare = _COPY_PREFIX.sub("", stem)
    name = _named_in(bare, assignments)
    if name is None:
        return _without_copy_marks(bare) or stem
    at = bare.lower().index(name.lower())
    before = bare[:at].strip(_SEPARATORS)
    if canvas := _CANVAS.match(before):
        before = f"{canvas.group(1)}_{canvas.group(2)}"
    return before or _without_copy_marks(bare[at + len(name):]) or _without_copy_marks(bare)


def copy_number(stem: str) -> tuple[int, ...]:
    """The numbers in the marks of a copy (``(2,)`` of ``alice_01 (2)``, ``(1,)`` of ``Copy of alice_01``, ``()`` of
    the original): of two files saved in the same instant (a ``git clone``, an unzipped archive) the copy with the
    larger number is the later one, ``(10)`` after ``(2)``."""
    return tuple(_copy_suffixes(_COPY_PREFIX.sub("", stem))[1] + ([1] if _COPY_PREFIX.match(stem) else []))


def find_submissions(folder: Path, assignments: Iterable[str] = (), skip: Path | None = None) -> list[tuple[str, Path]]:
    """``(student, path)`` for every file under ``folder`` but hidden ones (``.ipynb_checkpoints`` too) and the
    grader's own (``skip``, the grades' folder: all of it when it is inside ``folder``, its files and its feedback
    folder when it is ``folder``; an earlier batch's reports, feedback and journal wherever they lie,
    :func:`earlier_grades`): the notebooks, and anything else a student handed in (graded as ``skipped``, with what
    to do). The student is the first sub-folder's name, or for a file directly in ``folder`` its name without the
    name of the assignment in ``assignments`` it holds (:func:`student_name`)."""
    found = []
    skip = Path(skip).resolve() if skip is not None else None
    inside = skip is not None and Path(folder).resolve() in skip.parents  # else above it, or the folder itself
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        # a link is listed wherever it points, to nothing or to itself too: its row says it is one (``handed_in``)
        if any(part.startswith(".") for part in rel.parts) or not (path.is_file() or path.is_symlink()):
            continue
        real = Path(os.path.realpath(path))  # Path.resolve raises on a loop of links
        if skip is not None and (real.parent == skip and path.name in GRADER_FILES
                                 or real.parent == skip / FEEDBACK_FOLDER
                                 or inside and skip in real.parents) or earlier_grades(path):
            continue
        student = rel.parts[0] if len(rel.parts) > 1 else student_name(_bare_name(path), assignments)
        found.append((shown(student), path))
    return one_spelling(found)


def one_spelling(found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """``found`` with the names that differ only in case made one (``ALICE_01.ipynb`` and ``alice_03.ipynb`` are
    Alice's two notebooks, not two students' each with half the grades): the spelling most of the files have, of
    equals the first by name."""
    spellings: dict[str, Counter] = {}
    for student, _ in found:
        spellings.setdefault(student.casefold(), Counter())[student] += 1
    chosen = {key: min(counts, key=lambda name: (-counts[name], name)) for key, counts in spellings.items()}
    return [(chosen[student.casefold()], path) for student, path in found]


def earlier_grades(path: Path) -> bool:
    """Whether ``path`` is what an earlier batch wrote into the submissions (``--out subs/grades``, then a rerun
    with another ``--out``): its journal, or its reports beside ``grades.csv`` and ``grades.json``, or a student's
    feedback in the ``feedback`` folder beside them. It used to be listed as a student named after its folder, whose
    files were skipped."""
    if path.name == JOURNAL_FILE:
        return True
    feedback = path.parent.name == FEEDBACK_FOLDER and path.suffix == ".md"
    reports = path.parent.parent if feedback else path.parent
    return (feedback or path.name in REPORT_FILES) and all((reports / name).is_file() for name in BATCH_REPORTS)


def handed_in(path: Path) -> bool:
    """Whether the batch may read ``path``: not a symbolic link, which names a file elsewhere on the grading machine
    (``/etc/passwd``) that a reason would quote. A link gets a ``skipped`` row instead."""
    return not Path(path).is_symlink()


def _bare_name(path: Path) -> str:
    """The file's name without its extension, and without ``.ipynb`` before it (``alice_01`` of
    ``alice_01.ipynb.zip``)."""
    return re.sub(r"\.ipynb$", "", path.name.removesuffix(path.suffix), flags=re.IGNORECASE)


def detect_assignment(path: Path, nb, manifests: dict) -> str | None:
    """The assignment of notebook ``nb`` at ``path``: its otter metadata's when ``manifests`` has it, else the
    longest name of ``manifests`` in the file's name, else None."""
    return named_assignment(nb, manifests) or _named_in(path.name, manifests)


def named_assignment(nb, manifests: dict) -> str | None:
    """The assignment that notebook ``nb``'s otter metadata names, where ``manifests`` has it; else None."""
    name = metadata_assignment(nb)
    return name if name in manifests else None


def metadata_assignment(nb) -> str | None:
    """Whatever assignment notebook ``nb``'s otter metadata names, bundle or not; None where it names none."""
    otter = nb.metadata.get("otter") if nb is not None else None
    name = otter.get("assignment_name") if isinstance(otter, dict) else None  # a hand-edited file: anything
    return name if isinstance(name, str) and name else None


def _named_in(text: str, names: Iterable[str]) -> str | None:
    """The longest of ``names`` that ``text`` holds, whatever the case (a student's or an assignment's file name)."""
    return max((n for n in names if n.lower() in text.lower()), key=len, default=None)


def assignments(found: list[tuple[str, Path]], manifests: dict,
                assignment: str | None) -> tuple[dict[Path, str | None], set[Path]]:
    """``{path: its assignment or None}`` for every notebook of ``found``, and the set of those that read as a
    notebook; each is read once. ``assignment`` (``--assignment``) names the assignment of a notebook whose metadata
    names none (a file saved outside Jupyter, a renamed copy); a notebook's own metadata wins: a student's 03 in a
    folder graded as 01 is graded as 03, not as a later 01 that would supersede the real one."""
    names, readable = {}, set()
    for _, path in found:
        if is_notebook(path):
            nb, _ = read_notebook(path)
            names[path] = (named_assignment(nb, manifests) or assignment) if assignment else detect_assignment(
                path, nb, manifests)
            if nb is not None:
                readable.add(path)
    return names, readable


def superseded_by_latest(found: list[tuple[str, Path]], names: dict, readable: set[Path], manifests: dict) -> dict:
    """``{path: why it is not graded}`` for every notebook (``names``, ``readable``: :func:`assignments`'s) that
    another notebook of the same student (as ``found`` names them) and assignment supersedes. Graded is the latest
    of those that can be read: of those saved within ``SAME_INSTANT_S`` of the newest (a ``git clone``, an unzip),
    the one with the highest copy number (``(10)`` after ``(2)`` after the original), then the newest, then by name.
    An unreadable notebook is graded (as invalid) only where the student has no readable one of the assignment: a
    broken re-upload does not cost the points of the notebook before it."""
    groups = {}
    for student, path in found:
        if names.get(path) in manifests:
            groups.setdefault((student, names[path]), []).append((path in readable, path))
    superseded = {}
    for paths in groups.values():
        candidates = [p for ok, p in paths if ok] or [p for _, p in paths]
        times = {p: _mtime(p) for p in candidates}
        newest = max(times.values())  # times 2 s apart or less are one instant: the copy's number decides
        recent = [p for p in candidates if times[p] >= newest - SAME_INSTANT_S]
        latest = max(recent, key=lambda p: (copy_number(_bare_name(p)), times[p], p.name))
        for ok, p in paths:
            if p != latest:
                why = (f"{shown(latest.name)} is this student's later notebook of the same assignment" if ok else
                       f"it cannot be read as a notebook; {shown(latest.name)}, this student's other notebook of the "
                       "same assignment, is graded instead")
                superseded[p] = f"not graded: {why}"
    return superseded


def section_students(found: list[tuple[str, Path]], names: dict, folder: Path) -> dict[str, list[str]]:
    """The first-level folders of ``folder`` that are sections, not students: two or more of their sub-folders hold a
    notebook of the same assignment (``names``: :func:`assignments`'s), as ``section1/alice/hw1.ipynb``
    and ``section1/bob/hw1.ipynb`` do when the folder passed is the one above the students' folders. As one
    student's, the later notebook would supersede the other student's. ``{section: its sub-folders that hold
    notebooks}``; :func:`in_sections` names their students."""
    subs: dict[tuple[str, str], set[str]] = {}
    for _, path in found:
        parts = Path(path).relative_to(folder).parts
        if len(parts) > 2 and names.get(path):
            subs.setdefault((parts[0], names[path]), set()).add(parts[1])
    sections: dict[str, set[str]] = {}
    for (top, _), held in subs.items():
        if len(held) > 1:
            sections.setdefault(top, set()).update(held)
    return {top: sorted(held) for top, held in sections.items()}


def lone_subfolders(found: list[tuple[str, Path]], sections: dict, folder: Path) -> dict[str, str]:
    """Beside ``sections``, the first-level folders of ``folder`` whose notebooks all lie in one sub-folder of theirs
    (``section2/zoe/hw1.ipynb``, ``carol/week1/hw1.ipynb``): ``{folder: its sub-folder}``. Each is graded as one
    student named after the first-level folder, which is right for carol's week1 and wrong for a section with one
    student; no name tells the two apart, so the grader says which it did."""
    where: dict[str, set] = {}
    for _, path in found:
        parts = Path(path).relative_to(folder).parts
        if len(parts) > 1 and parts[0] not in sections and is_notebook(path):
            where.setdefault(parts[0], set()).add(parts[1] if len(parts) > 2 else None)
    return {top: next(iter(subs)) for top, subs in where.items() if len(subs) == 1 and None not in subs}


def in_sections(found: list[tuple[str, Path]], sections: dict, folder: Path) -> list[tuple[str, Path]]:
    """``found`` with each file in a section's sub-folder (:func:`section_students`) given that sub-folder as its
    student, named with its section (``section1/alice``); a file directly in a section keeps the section's name."""
    renamed = []
    for student, path in found:
        parts = Path(path).relative_to(folder).parts
        renamed.append((shown(f"{parts[0]}/{parts[1]}") if len(parts) > 2 and parts[0] in sections else student, path))
    return renamed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
