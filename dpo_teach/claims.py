"""Claim checks for the notebooks: strict in CI, informative on a student's machine.

Every number a notebook's text rests on is computed in a cell and checked there. Some of those numbers come from a
training run on seed 0 of the course's machine; another CPU or torch build can move them a little. So a demo cell
checks a claim with :func:`check` instead of ``assert``:

- in CI (``DPO_TEACH_STRICT=1``, which the test suite sets) a failed check raises :class:`ClaimFailed`, exactly as
  strictly as an ``assert``;
- on a student's machine it prints what differs and why that can happen, and the notebook goes on.

``DPO_TEACH_CLAIMS=fail`` makes every check fail (not strict), to show that no demo cell can stop a student's *Run
All*. ``DPO_TEACH_CLAIMS=record`` (the test suite's one run of each notebook) does both at once: every check writes
whether its claim held to the file ``$DPO_TEACH_CLAIMS_LOG`` (the suite fails on any claim that did not: as strict as
an ``assert``) and then takes the path of a failed check (prints, goes on), so the same run shows that the notebook
reaches its end whatever the checks find.

:func:`try_exercise` is the one rule for a student's function inside a demo cell: whatever it raises, the cell
prints a message naming the exercise and the notebook continues with the package's version.
"""

from __future__ import annotations

import json
import linecache
import os
import sys
from collections.abc import Callable
from typing import Any

STRICT_ENV = "DPO_TEACH_STRICT"  # "1" (or true, yes, on): a failed claim raises (CI)
MODE_ENV = "DPO_TEACH_CLAIMS"  # "fail": every claim fails; "record": log each outcome, then act as "fail"
LOG_ENV = "DPO_TEACH_CLAIMS_LOG"  # with "record": the JSON-lines file each check appends {"claim", "held", "at"} to
WHY = ("the number comes from a run tuned on seed 0 of the course's machine; another CPU, torch build or thread "
       "count changes the floating-point sums, and a short training run can land elsewhere (as the same run with "
       "another seed can)")


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ClaimFailed(AssertionError):
    """A claim of the notebook's text did not hold (raised only in strict mode)."""


class ClaimSettingError(ValueError):
    """A ``DPO_TEACH_STRICT``, ``DPO_TEACH_CLAIMS`` or ``DPO_TEACH_CLAIMS_LOG`` that cannot be used (set by CI or an
    instructor; a student sets none of them): read as another value, a CI would pass on claims that failed."""


def _setting(name: str, allowed: tuple[str, ...]) -> str:
    """The value of the environment variable ``name``, in lower case and stripped, which must be one of ``allowed``."""
    value = os.environ.get(name, "").strip().lower()
    if value not in allowed:
        raise ClaimSettingError(f"{name}={os.environ[name]!r} is none of {', '.join(v for v in allowed if v)}; "
                                f"set one of them, or unset {name}")
    return value


def strict() -> bool:
    return _setting(STRICT_ENV, _ON + _OFF) in _ON


def _mode() -> str:
    """``DPO_TEACH_CLAIMS``: "fail", "record" or "" (unset)."""
    return _setting(MODE_ENV, ("fail", "record", ""))


def forced_to_fail() -> bool:
    return _mode() != ""


def _record(held: bool, what: str) -> None:
    if _mode() != "record":
        return
    path = os.path.expanduser(os.environ.get(LOG_ENV, ""))
    if not path:  # else nothing recorded, and every claim taken as failed: the suite would see no claim at all
        raise ClaimSettingError(f"{MODE_ENV}=record writes each claim to the file ${LOG_ENV}, which is not set; "
                                f"set it to a file path")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"claim": what, "held": held, "at": _caller_line()}, ensure_ascii=False) + "\n")
    except OSError as e:  # a folder, a missing folder, a full disk
        raise ClaimSettingError(f"{LOG_ENV}={os.environ[LOG_ENV]}: a claim cannot be appended to it ({e.strerror or e}"
                                "); set it to a file path in a folder you can write to") from None


def _caller_line() -> str:
    """The source line of the ``check`` call being recorded (a notebook cell's line: IPython keeps each cell's source
    for tracebacks), so that a log tells apart the checks of one cell that share "a claim of this cell"."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return ""
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()


def check(condition: Any, message: str = "", why: str = WHY) -> None:
    """Check one claim of the text (returns nothing, so a cell that ends with a check shows no ``True``).

    Args:
        condition: the claim, computed (truthy when it holds).
        message: what the claim says, in the words of the text.
        why: why it can differ on another machine (the default: seed-0 numbers of a training run).
    """
    what = message or "a claim of this cell"
    raises = strict()  # read at every check: a value of no meaning is said at the first claim, held or not
    _record(bool(condition), what)
    if bool(condition) and not forced_to_fail():
        return
    if raises:
        raise ClaimFailed(what)
    forced = f" (forced: {MODE_ENV}={_mode()})" if forced_to_fail() else ""
    print(f"⚠ claim not reproduced on this machine{forced}: {what}\n"
          f"  why this can happen: {why}.\n"
          f"  The notebook goes on; compare the printed numbers with the text.")


def try_exercise(exercise: str, call: Callable[[], Any], fallback: str = "the package's version") -> tuple[bool, Any]:
    """Run ``call()`` (a student's function on some input); return ``(True, result)`` or ``(False, None)``.

    Whatever the student's code raises, the message names the exercise and what the notebook uses instead, and
    the notebook goes on.
    """
    try:
        return True, call()
    except NotImplementedError:
        print(f"{exercise} is still a stub (NotImplementedError); {fallback} is used instead.")
    except Exception as error:  # noqa: BLE001 - a student's function may raise anything
        print(f"{exercise} raised {type(error).__name__}: {error}\n  {fallback} is used instead; fix the "
              f"exercise and rerun its check cell to see which test fails.")
    return False, None
