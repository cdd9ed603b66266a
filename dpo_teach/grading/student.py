"""What a student notebook runs before its exercises: the set-up check and the grader that finds its own tests.

otter keeps a notebook's public tests in the notebook file's metadata and reads them from the file name the grader
cell gives (``otter.Notebook("07_variants_and_pitfalls.ipynb")``), so a copy saved as
``07_variants_and_pitfalls (1).ipynb`` stopped at that cell. ``make assign`` writes this cell instead::

    grader = otter.Notebook(find_notebook("07_variants_and_pitfalls"))

and puts ``SETUP_CHECK`` first in every student notebook, so that a notebook opened where the package is not
installed says how to install it instead of failing on its first import.
"""

from __future__ import annotations

import doctest
import json
import os
from pathlib import Path

# The first cell of every student notebook. It cannot import the package it checks for: plain Python only.
SETUP_CHECK = '''\
# Set-up check: this notebook needs the course's Python package dpo_teach (README, "Quick start").
try:
    import dpo_teach  # noqa: F401
except ModuleNotFoundError as missing:
    class SetupError(Exception):
        def _render_traceback_(self):  # Jupyter shows this message alone, without a traceback
            return [f"SetupError: {self}"]

    raise SetupError(
        f"this kernel cannot import {missing.name!r}, which the course needs. From a clone of the course "
        "repository run `make lab` (it installs everything into .venv and opens the notebooks there), or "
        "`pip install -e .` in the clone with this kernel's Python; then restart the kernel."
    ) from None'''


class _AssertsOnly(doctest.OutputChecker):
    """The course's checks are asserts, which print nothing: an example that expects no output passes whatever the
    code it ran printed (a ``print`` left in a correct answer). An assert that fails still fails: doctest tells an
    exception from output before it asks the checker."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return want == "" or super().check_output(want, got, optionflags)


class _Doctest:
    """otter's ``doctest`` as otter's check cells see it, with the runner given :class:`_AssertsOnly` and
    ``FAIL_FAST``: a test case stops at its first failing line, as ``dpo-teach grade`` stops it. Doctest went on
    with the case's later lines, and each of them that read a name the failing line would have set added a
    ``NameError`` (``name '_out' is not defined``) to the feedback, burying the one line that mattered."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def DocTestRunner(self, *args, **kwargs):  # noqa: N802 - doctest's name
        flags = kwargs.pop("optionflags", 0) | self.real.FAIL_FAST
        return self.real.DocTestRunner(*args, **{"checker": _AssertsOnly(), "optionflags": flags, **kwargs})


def checks_ignore_prints() -> None:
    """Make ``grader.check`` pass a correct answer that prints: otter runs each check as a doctest, which failed it
    with "Expected nothing, Got: debug ..." while ``dpo-teach grade`` (which runs the asserts) gave it every point.
    Each check also stops at its first failing line (:class:`_Doctest`).
    The grader cell calls this; it leaves otter as it is where otter no longer runs its checks this way."""
    try:
        from otter.test_files import ok_test
    except ImportError:
        return
    if isinstance(getattr(ok_test, "doctest", None), type(doctest)):
        ok_test.doctest = _Doctest(ok_test.doctest)


def assignment_of(path: Path) -> str | None:
    """The otter assignment a notebook file belongs to (``metadata.otter.assignment_name``), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["metadata"]["otter"]["assignment_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def candidates(assignment: str, cwd: Path) -> list[Path]:
    """Where the notebook of ``assignment`` may be, most likely first (see :func:`find_notebook`)."""
    found = []
    session = os.environ.get("JPY_SESSION_NAME")  # set by Jupyter for the file it started this kernel for
    if session:
        found.append(cwd / session)  # an absolute path stays as it is
    found.append(cwd / f"{assignment}.ipynb")
    found += sorted(cwd.glob("*.ipynb"))
    from dpo_teach.grading.assign import NOTEBOOKS  # the course's own copy, in a clone (editable install)

    found.append(NOTEBOOKS / f"{assignment}.ipynb")
    return found


def find_notebook(assignment: str, cwd: str | Path | None = None) -> str | None:
    """The path of a notebook file of ``assignment``, for ``otter.Notebook(...)``, under any file name.

    The first of these whose otter metadata names ``assignment``: the file this kernel was started for (Jupyter
    sets ``$JPY_SESSION_NAME``); ``<assignment>.ipynb`` in the working directory; any notebook there (a renamed or
    downloaded copy); the course's copy in ``notebooks/``. Every copy holds the same public tests.

    Raises:
        FileNotFoundError: when none is found (while otter grades, None: otter reads the tests from its bundle).
    """
    cwd = Path(cwd or os.getcwd())
    for path in candidates(assignment, cwd):
        if path.is_file() and assignment_of(path) == assignment:
            return str(path)
    import otter

    if getattr(otter.Notebook, "_grading_mode", False):
        return None
    raise FileNotFoundError(
        f"cannot find the notebook file of {assignment!r} (its tests are stored in it): open this notebook from "
        f"the folder it is saved in, or keep a copy of {assignment}.ipynb in {cwd}")
