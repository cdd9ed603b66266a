"""A batch's journal, ``OUT/grades.partial.jsonl``: every row is appended (and synced) as soon as it is graded, so
that a batch that was interrupted (Ctrl-C, a reboot, a sandbox that failed) resumes where it stopped.

A row is keyed by what it depends on (:func:`fingerprint`: the file, its bytes, the bundle, the settings, the
grader's own code), so a rerun takes only the rows that the same command would grade the same way; a row of status
``error`` (the grader failed, not the notebook) is graded again. A finished batch takes its rows out of the journal
(``grades.json`` then holds them, each with its fingerprint), and deletes it where no other batch's are left; the same
folder graded again takes its unchanged rows from that ``grades.json`` (:func:`finished_rows`), so that a late
submission costs one notebook's grading, not the whole folder's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from pathlib import Path

from dpo_teach.grading.submissions import shown
from dpo_teach.utils import atomic_write_text


def fingerprint(path: Path, manifest: dict, settings: dict) -> str | None:
    """What a row depends on: which file it is, its bytes, the bundle's and the settings it is graded under (fast or
    full mode, the time limits, the sandbox): a rerun skips what it has graded, and grades again what a rerun with
    other settings (a longer ``--timeout``, ``--full``) would score differently; two students' identical files are
    two rows. None for a file that cannot be read (it is graded, and its row says why, but not journaled)."""
    digest = hashlib.sha256(os.fsencode(Path(path).resolve()) + b"\0")  # a name's bytes, UTF-8 or not
    try:
        digest.update(Path(path).read_bytes())
    except OSError:
        return None
    digest.update(manifest["digest"].encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(grader_digest().encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def grader_digest() -> str:
    """The grader's own code (every module of this folder): a course updated with a fix to how notebooks are run or
    scored grades every notebook again, where a row graded by the earlier code would otherwise be taken."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def finished_rows(report: Path) -> dict[str, dict]:
    """``{fingerprint: row}`` of the rows in a finished batch's ``grades.json`` that a rerun may take (not those of
    status ``error``); nothing where there is no report, or one that this grader did not write or that has no
    fingerprints (written before they were kept)."""
    try:
        rows = json.loads(Path(report).read_text(encoding="utf-8"))["results"]
        return {row["fingerprint"]: row for row in rows
                if isinstance(row, dict) and isinstance(row.get("fingerprint"), str) and row.get("status") != "error"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class Journal:
    """The journal of one batch: ``keys`` maps each notebook it grades to its :func:`fingerprint` (None: not
    journaled); ``done`` holds the rows of those keys that an interrupted run of the same command left, or that
    ``earlier`` holds (:func:`finished_rows` of the last finished batch's report). ``fresh``: take none of them
    (``--regrade``)."""

    def __init__(self, path: Path, keys: dict[Path, str | None], earlier: dict[str, dict] | None = None,
                 fresh: bool = False):
        self.path, self.keys = Path(path), keys
        self._current = set(keys.values()) - {None}
        self._lock = threading.Lock()  # rows are written from several grading threads
        earlier = {} if fresh else earlier or {}
        self._set_aside = [row for key, row in earlier.items() if key not in self._current]  # for set_aside()
        self.done = {} if fresh else {**{k: r for k, r in earlier.items() if k in self._current}, **self.kept()}

    def kept(self) -> dict[str, dict]:
        """This batch's rows in the journal now, but rows of status error (the grader's failure: graded again)."""
        return {key: row for key, row in resumable(self.path).items() if key in self._current}

    def set_aside(self) -> int:
        """How many rows in the journal are of this batch's files but were graded under other settings or before the
        file changed (their fingerprint is not this batch's): they are graded again, not taken."""
        files = {shown(path) for path, key in self.keys.items() if key is not None}
        journaled = [row for key, row in _read(self.path).items() if key not in self._current]
        return len({row.get("file") for row in journaled + self._set_aside} & files)

    def taken(self, path: Path) -> bool:
        """Whether ``path``'s row comes from the journal or the last report (the same command graded it before)."""
        return self.keys.get(path) in self.done

    def resumed(self, path: Path, student: str) -> dict | None:
        """The row an earlier run graded for ``path``, named as this run names it (another folder, newer rules)."""
        key = self.keys.get(path)
        return {**self.done[key], "student": student, "file": shown(path), "fingerprint": key} \
            if key in self.done else None

    def record(self, path: Path, row: dict) -> None:
        """Append ``row`` (graded just now) and sync it to disk, unless ``path`` is not journaled; the row keeps its
        fingerprint (``grades.json`` too: a rerun of the finished batch takes it from there)."""
        key = self.keys.get(path)
        if key is None:
            return
        row["fingerprint"] = key
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        """The batch is complete: ``grades.json`` holds every row, and its rows leave the journal. Rows of another
        batch graded into the same ``--out`` (one that was interrupted) stay there for that batch's rerun."""
        others = {key: row for key, row in _read(self.path).items() if key not in self._current}
        if not others:
            self.path.unlink(missing_ok=True)
            return
        lines = (json.dumps({"key": key, "row": row}) + "\n" for key, row in others.items())
        atomic_write_text(self.path, "".join(lines))


def resumable(journal: Path) -> dict[str, dict]:
    """The rows graded before an interruption that a rerun keeps: a row of status error is the grader's failure, not
    the notebook's, and is graded again."""
    return {key: row for key, row in _read(journal).items() if row.get("status") != "error"}


def _read(journal: Path) -> dict[str, dict]:
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
