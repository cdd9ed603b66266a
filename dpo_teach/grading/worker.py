"""The grading process (``python -m dpo_teach.grading _worker``): ``otter run`` on one notebook at a time.

Each notebook gets a per-cell time limit inside its kernel (:data:`TIME_GUARD`); the parent (``grade.py``) adds a
per-notebook wall-clock limit by killing the worker's whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import nbformat

from dpo_teach.utils import atomic_write_json

TIME_GUARD = '''\
# Added by `dpo-teach grade`: a time limit per cell, so that an endless loop costs only the points that depend on it.
def _dpo_teach_time_guard(seconds, grace):
    import signal
    from IPython import get_ipython

    def expire(signum, frame):
        signal.alarm(grace)  # the rest of this cell (e.g. the next test of the same looping function) gets `grace` s
        raise TimeoutError(f"time limit: a cell ran past the grader's limit of {seconds} s per cell")

    def arm(*args):
        signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)

    def disarm(*args):
        signal.alarm(0)

    get_ipython().events.register("pre_run_cell", arm)
    get_ipython().events.register("post_run_cell", disarm)


_dpo_teach_time_guard({seconds}, {grace})
del _dpo_teach_time_guard
'''


def time_guard_cell(seconds: int) -> str:
    """The code cell put in front of each graded notebook. After a first expiry, the same cell gets a 3 s grace
    per further expiry: the tests of one question are fast, so each further call to a looping function should
    not cost a full cell limit."""
    return TIME_GUARD.replace("{seconds}", str(int(seconds))).replace("{grace}", str(min(int(seconds), 3)))


def _feedback(message: str) -> str:
    """The informative part of otter's doctest report: the first failed example and the exception it raised."""
    at = message.find("Failed example:")
    if at < 0:
        return message.strip()[:800]
    block = message[at:].split("\nTrying:")[0]
    if "\nException raised:" in block:
        head, trace = block.split("\nException raised:", 1)
        raised = re.findall(r"^\s*([\w.]+(?:Error|Exception|Interrupt)\b.*)$", trace, flags=re.M)
        block = head + "\nException raised:\n    " + (raised[-1] if raised else trace.strip().splitlines()[-1])
    return block.strip()[:800]


def _grade_one(bundle: str, submission: str, result_path: str, cell_timeout: int, assignment: str) -> None:
    """Grade one notebook with ``otter run`` and write per-question results and cell errors as JSON.

    The notebook is graded under the file name its ``otter.Notebook("<assignment>.ipynb")`` cell expects, so a
    renamed submission grades the same.
    """
    import otter.run

    nb = nbformat.read(submission, as_version=4)
    guard = nbformat.v4.new_code_cell(time_guard_cell(cell_timeout))
    nb.cells.insert(0, guard)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{assignment}.ipynb"
        nbformat.write(nb, copy)
        results = otter.run.main(str(copy), autograder=bundle, output_dir=None, no_logo=True)
    questions = {}
    for name, test_file in results.results.items():
        failed = [r for r in test_file.test_case_results if not r.passed]
        questions[name] = {
            "score": float(test_file.score), "possible": float(test_file.possible),
            "public_passed": all(r.passed for r in test_file.test_case_results if not r.test_case.hidden),
            "feedback": _feedback(failed[0].message or "") if failed else "",
        }
    errors = []
    for cell in results.notebook.cells if results.notebook is not None else []:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and cell.source != guard.source:
                first_line = next((s for s in cell.source.splitlines() if s.strip()), "")[:60]
                errors.append(f"{out['ename']}: {out['evalue'][:200]} (in cell `{first_line}`)")
    error = results.catastrophic_error
    atomic_write_json(Path(result_path), {"questions": questions, "errors": errors,
                                          "catastrophic": f"{type(error).__name__}: {error}" if error else None})


def _worker(cell_timeout: int) -> None:
    """Grade the jobs read from stdin, one JSON line each; answer one line per job. otter is imported once."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever otter or a notebook prints goes to stderr, never into the protocol
    import otter.run  # noqa: F401 - the slow import, paid once per worker

    for line in sys.stdin:
        job = json.loads(line)
        try:
            _grade_one(job["bundle"], job["submission"], job["result"], cell_timeout, job["assignment"])
        except Exception as e:  # noqa: BLE001 - report, then take the next job
            atomic_write_json(Path(job["result"]), {"crash": f"{type(e).__name__}: {e}"})
        protocol.write("done\n")


class _Worker:
    """A ``_worker`` process in its own process group, so that a runaway notebook can be killed with its driver."""

    def __init__(self, cell_timeout: int, env: dict):
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "dpo_teach.grading", "_worker", str(cell_timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, start_new_session=True, bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def run(self, job: dict, timeout: float) -> str:
        """``"done"``, ``"timeout"`` (the worker was killed) or ``"crashed: <stderr tail>"``."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return "timeout"
        except OSError:
            reply = None
        if reply is None:
            self.kill()
            self.log.seek(0)
            tail = [line for line in self.log.read().strip().splitlines()[-3:] if line.strip()]
            return "crashed: " + " | ".join(tail)[-400:]
        return "done"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the driver; its kernel exits when its parent dies
        self.proc.wait()
        self.log.close()

    def close(self) -> None:
        """End of the batch: the worker leaves its loop when stdin closes; kill it if it does not."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
            self.log.close()
        except subprocess.TimeoutExpired:
            self.kill()
