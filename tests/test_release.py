"""`make release`: the student-only tree holds the course and nothing of the instructor's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dpo_teach.grading import MASTERS, ROOT
from dpo_teach.grading.assign import solution_lines
from dpo_teach.grading.release import RELEASE_NOTE, LeakError, find_leaks, release, released_files


def test_release_has_the_course_and_no_solution_or_hidden_test(tmp_path):
    out = tmp_path / "student"
    files = release(out)
    assert {"README.md", "LICENSE", "Makefile", "pyproject.toml", "dpo_teach/__init__.py"} <= set(files)
    assert {p.name for p in (out / "notebooks").glob("*.ipynb")} >= {f"{m.stem}.ipynb" for m in MASTERS.glob("*.ipynb")}
    assert not any(f.startswith(("course/", "tests/", "benchmarks/", ".ci/")) for f in files)
    assert not list(out.rglob("*.zip"))
    assert find_leaks(out) == []
    readme = (out / "README.md").read_text()
    assert readme.startswith("# dpo-teach\n\n> This is the student release") and "`course/`" in readme.split("\n")[2]
    figures = re.findall(r"\]\((docs/images/[^)]+)\)", readme)
    assert figures and all((out / f).is_file() for f in figures), "the README's figures travel with it"


@pytest.mark.parametrize("target, missing", [("test", "tests/"), ("test-site", "tests/")] + [
    (bench, "benchmarks/") for bench in ("bench", "bench-notebooks", "bench-claims", "bench-test", "bench-compare",
                                         "bench-grading")])
def test_make_test_and_bench_in_the_release_say_they_are_not_there(tmp_path, target, missing):
    out = tmp_path / "student"
    release(out)
    done = subprocess.run(["make", "-s", "-j2", target], cwd=out, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"no {missing} (it is the student release)" in done.stderr, done.stderr
    assert not (out / ".venv").exists(), "nothing installed for what is not there"


def test_the_leak_check_finds_a_solution_line_and_release_writes_nothing(tmp_path, monkeypatch):
    master = sorted(MASTERS.glob("*.ipynb"))[1]
    line = solution_lines(master)[0]
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "notes.md").write_text(f"copied from the master:\n    {line}\n")
    assert find_leaks(tmp_path / "tree") == [f"notes.md: {line[:80]}"]

    monkeypatch.setattr("dpo_teach.grading.release.released_files",
                        lambda root: [*released_files(root), f"course/masters/{master.name}"])
    with pytest.raises(LeakError, match="instructor-only"):
        release(tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_the_instructors_commands_in_the_release_say_what_is_missing(tmp_path):
    """No masters, no bundles in the release: `assign` and `gradescope` say where they are, with status 2 (they
    used to print nothing and exit 0)."""
    out = tmp_path / "student"
    release(out)
    for command, missing in [(["assign"], "master notebooks"), (["gradescope", "--out", "bundles"], "autograder")]:
        done = subprocess.run([sys.executable, "-m", "dpo_teach.grading", *command], cwd=out, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(out)})
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert missing in done.stderr and "instructor's full repository" in done.stderr, done.stderr
        assert str(out / "course") in done.stderr, "the message names the folder it looked in"
    (out / "subs").mkdir()  # grade: it said "run `make assign` first", which the release cannot
    done = subprocess.run([sys.executable, "-m", "dpo_teach.cli", "grade", "subs"], cwd=out, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(out)})
    assert done.returncode == 2 and "make assign" not in done.stderr, done.stderr
    assert "(the student release): grade from the instructor's full repository" in done.stderr, done.stderr


def test_release_replaces_only_an_earlier_release(tmp_path, monkeypatch):
    """`--out` over a folder of someone's files deleted them; now only an earlier release (or a new or empty folder)
    is replaced, and nothing is written otherwise."""
    from dpo_teach.grading.release import OutError

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "precious.txt").write_text("mine")
    with pytest.raises(OutError, match=r"holds 1 file \(precious.txt\) that a release does not write"):
        release(notes)
    assert [p.name for p in notes.iterdir()] == ["precious.txt"]
    (tmp_path / "a_file").write_text("x")
    for out, message in ((tmp_path / "a_file", "is a file, expected a directory"),
                         (tmp_path / "a_file" / "sub", "is a file, not a folder")):
        with pytest.raises(OutError, match=message):
            release(out)
    monkeypatch.chdir(notes)
    with pytest.raises(OutError, match="is the current directory or holds it"):
        release(tmp_path)
    with pytest.raises(OutError, match="is the course's folder .* or a folder above it"):
        release(ROOT.parent)
    out = tmp_path / "student"
    release(out)
    (out / "notebooks" / "stale.ipynb").write_text("from before")
    for made in (".venv/bin", "dpo_teach.egg-info"):  # what `make lab` in the release creates
        (out / made).mkdir(parents=True)
    release(out)  # an earlier release is replaced whole, its set-up too
    assert out.is_dir() and not (out / "notebooks" / "stale.ipynb").exists() and not (out / ".venv").exists()
    assert not (out / "dpo_teach.egg-info").exists()
    done = subprocess.run([sys.executable, "-m", "dpo_teach.grading", "release", "--out", str(notes)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "nothing was written" in done.stderr and (notes / "precious.txt").is_file()


@pytest.mark.parametrize("holds, message", [
    ({"README.md": RELEASE_NOTE, "notes.txt": "mine"},
     "holds 1 file (notes.txt) that a release does not write"),
    ({"README.md": RELEASE_NOTE, "results/demo/metrics.json": "{}"}, "holds 1 folder (results) that a release"),
    ({"README.md": "# my project\n", "notebooks/mine.ipynb": "{}"}, "is not an earlier release (its README.md has no "
                                                                     "release note)"),
    ({"notebooks/mine.ipynb": "{}"}, "is not an earlier release"),
])
def test_a_folder_that_is_not_an_earlier_release_is_never_replaced(tmp_path, holds, message):
    """An earlier release is a folder with the release note in its README *and* only what a release writes: a release
    folder in which someone kept their own notes, or the results of `make demo`, is refused with its files kept
    (before: the README's note alone made it "an earlier release", and the release deleted the rest)."""
    from dpo_teach.grading.release import OutError

    out = tmp_path / "student"
    for name, text in holds.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    with pytest.raises(OutError, match=re.escape(message)):
        release(out)
    assert {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()} == holds
