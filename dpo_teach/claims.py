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

STRICT_ENV = "DPO_TEACH_STRICT"  # "1": a failed claim raises (CI)
MODE_ENV = "DPO_TEACH_CLAIMS"  # "fail": every claim fails; "record": log each outcome, then act as "fail"
LOG_ENV = "DPO_TEACH_CLAIMS_LOG"  # with "record": the JSON-lines file each check appends {"claim", "held", "at"} to
WHY = ("the number comes from a run tuned on seed 0 of the course's machine; another CPU, torch build or thread "
       "count changes the floating-point sums, and a short training run can land elsewhere (as the same run with "
       "another seed can)")


class ClaimFailed(AssertionError):
    """A claim of the notebook's text did not hold (raised only in strict mode)."""


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "0") == "1"


def forced_to_fail() -> bool:
    return os.environ.get(MODE_ENV, "") in ("fail", "record")


def _record(held: bool, what: str) -> None:
    path = os.environ.get(LOG_ENV)
    if os.environ.get(MODE_ENV, "") == "record" and path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"claim": what, "held": held, "at": _caller_line()}, ensure_ascii=False) + "\n")


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
    _record(bool(condition), what)
    if bool(condition) and not forced_to_fail():
        return
    if strict():
        raise ClaimFailed(what)
    forced = f" (forced: {MODE_ENV}={os.environ[MODE_ENV]})" if forced_to_fail() else ""
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
