"""A batch's journal, ``OUT/grades.partial.jsonl``: every row is appended (and synced) as soon as it is graded, so
that a batch that was interrupted (Ctrl-C, a reboot, a sandbox that failed) resumes where it stopped.

A row is keyed by what it depends on (:func:`fingerprint`: the file, its bytes, the bundle, the settings), so a rerun
takes only the rows that the same command would grade the same way; a row of status ``error`` (the grader failed,
not the notebook) is graded again. A finished batch takes its rows out of the journal (``grades.json`` then holds
them), and deletes it where no other batch's are left.
"""

from __future__ import annotations

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
    return digest.hexdigest()


class Journal:
    """The journal of one batch: ``keys`` maps each notebook it grades to its :func:`fingerprint` (None: not
    journaled); ``done`` holds the rows of those keys that an interrupted run of the same command left."""

    def __init__(self, path: Path, keys: dict[Path, str | None]):
        self.path, self.keys = Path(path), keys
        self._current = set(keys.values()) - {None}
        self._lock = threading.Lock()  # rows are written from several grading threads
        self.done = self.kept()

    def kept(self) -> dict[str, dict]:
        """This batch's rows in the journal now, but rows of status error (the grader's failure: graded again)."""
        return {key: row for key, row in resumable(self.path).items() if key in self._current}

    def set_aside(self) -> int:
        """How many rows in the journal are of this batch's files but were graded under other settings or before the
        file changed (their fingerprint is not this batch's): they are graded again, not taken."""
        files = {shown(path) for path, key in self.keys.items() if key is not None}
        return sum(row.get("file") in files for key, row in _read(self.path).items() if key not in self._current)

    def taken(self, path: Path) -> bool:
        """Whether ``path``'s row comes from the journal (an interrupted run of the same command graded it)."""
        return self.keys.get(path) in self.done

    def resumed(self, path: Path, student: str) -> dict | None:
        """The row an earlier run graded for ``path``, named as this run names it (another folder, newer rules)."""
        key = self.keys.get(path)
        return {**self.done[key], "student": student, "file": shown(path)} if key in self.done else None

    def record(self, path: Path, row: dict) -> None:
        """Append ``row`` (graded just now) and sync it to disk, unless ``path`` is not journaled."""
        key = self.keys.get(path)
        if key is None:
            return
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
