"""``make clean``: delete ``results/`` and the pytest and ruff caches, but never a folder of grades.

    python3 scripts/clean.py [--root DIR]

``results/`` holds what a make target writes again on demand (the demo, the comparison, the benchmarks, the site,
the Gradescope bundles, the student release), and, by default, what ``dpo-teach grade`` wrote (``results/grades/``):
a class's grades, the students' feedback files and an interrupted batch's journal, which only grading the whole
class again would bring back. A folder that holds grades stays, with everything in it, and is named; the rest of
``results/`` goes. Only the standard library: ``make clean`` runs before ``.venv`` exists too.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# What marks a folder of grades: dpo_teach.grading.submissions.REPORT_FILES and JOURNAL_FILE (a test keeps them equal)
GRADES = ("grades.csv", "grades.json", "grades_by_student.csv", "grades.partial.jsonl")
CACHES = (".pytest_cache", ".ruff_cache")


def holds_grades(folder: Path) -> bool:
    return any((folder / name).is_file() for name in GRADES)


def clean(folder: Path) -> list[Path]:
    """Delete what lies in ``folder`` but the folders of grades below it (those stay whole); return them. ``folder``
    itself goes when nothing in it stays."""
    if holds_grades(folder):
        return [folder]
    kept = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            kept += clean(entry)
        else:
            entry.unlink()  # a file, or a link: the link goes, never what it points to
    if not kept:
        folder.rmdir()
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the course's folder (default: here)")
    root = parser.parse_args(argv).root
    for cache in CACHES:
        shutil.rmtree(root / cache, ignore_errors=True)
    results = root / "results"
    if not results.is_dir() or results.is_symlink():
        return
    for folder in clean(results):
        print(f"make clean: kept {folder.relative_to(root)}/, which holds grades (dpo-teach grade's); delete it by "
              "hand once they are no longer needed")


if __name__ == "__main__":
    main()
