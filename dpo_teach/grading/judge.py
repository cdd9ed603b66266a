"""The grader's side of one notebook: start ``runner.py`` (in the sandbox), feed it the tests one question at a time,
and decide the score itself.

What a submission cannot do from inside: see the tests before its cells have run (they are sent afterwards, a
question at a time, and never written to disk), see or signal the grader or another submission (PID namespace),
leave a process behind (killed with the namespace), answer for another job (every line carries this job's random
id and must be the reply the grader is waiting for), or give itself points (the score is the manifest's points
for a question whose every case passed, 0 otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from dpo_teach.grading import sandbox

MAX_LINE = 1 << 20  # a reply longer than this is not the runner's
_PACKAGE_MODULE = re.compile(r"\bdpo_teach\.[a-z_]+")  # the package modules a test names


def load_tests(bundle: Path) -> dict[str, list[dict]]:
    """``{question: [{"code": doctest text, "hidden": bool}, ...]}`` from an otter bundle's ``tests/*.py``."""
    tests = {}
    with zipfile.ZipFile(bundle) as z:
        for name in sorted(z.namelist()):
            if name.startswith("tests/") and name.endswith(".py"):
                scope: dict = {}
                exec(z.read(name).decode("utf-8"), scope)  # noqa: S102 - the course's own bundle, never a student's
                test = scope["test"]
                tests[test["name"]] = [{"code": case["code"], "hidden": bool(case.get("hidden"))}
                                       for suite in test["suites"] for case in suite["cases"]]
    return tests


class _Process:
    """The runner process and its lines; ``kill`` ends it with everything it started.

    Sandboxed, it is a fork of the grader's zygote (``zygote.py``) that enters its own namespaces; with ``--unsafe``,
    a plain new Python."""

    def __init__(self, env: dict, sandboxed: bool):
        self.log = tempfile.TemporaryFile("w+")
        if sandboxed:
            stdin_r, stdin_w = os.pipe()
            stdout_r, stdout_w = os.pipe()
            try:
                self.pid = _spawn(env, stdin_r, stdout_w, self.log.fileno())
            except BaseException:
                for fd in (stdin_w, stdout_r):
                    os.close(fd)
                self.log.close()
                raise
            finally:
                os.close(stdin_r)
                os.close(stdout_w)
            self.proc = None
            self.stdin, self.stdout = os.fdopen(stdin_w, "wb"), os.fdopen(stdout_r, "rb")
        else:
            self.proc = subprocess.Popen([sys.executable, "-m", "dpo_teach.grading", "_run"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.log, env=env, start_new_session=True)
            self.pid, self.stdin, self.stdout = self.proc.pid, self.proc.stdin, self.proc.stdout
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            line = self.stdout.readline(MAX_LINE + 1)
            if not line:
                break
            self.lines.put(line)
        self.stdout.close()  # here, not in kill(): this thread may be reading while kill() runs
        self.lines.put(None)

    def send(self, message: dict) -> None:
        self.stdin.write((json.dumps(message) + "\n").encode())
        self.stdin.flush()

    def stderr_tail(self) -> str:
        self.log.seek(0)
        tail = [line for line in self.log.read().strip().splitlines()[-3:] if line.strip()]
        return " | ".join(tail)[-400:]

    def kill(self) -> None:
        if self.proc is None:  # the fork outside the namespaces: its death kills the namespace's first process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.stdin.close()
        self.log.close()


def _spawn(env: dict, *fds: int) -> int:
    """A notebook's process forked by the zygote for ``env`` (started, or started again, when needed)."""
    from dpo_teach.grading import zygote

    warm = zygote.for_env(env)
    try:
        return warm.spawn(env, *fds)
    except OSError:  # a zygote that has died since its last fork: once more with a new one
        return zygote.for_env(env, replacing=warm).spawn(env, *fds)


class _Abort(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def run_notebook(text: str, file_name: str, tests: dict[str, list[dict]], cell_timeout: int, timeout: float,
                 env: dict, sandboxed: bool, hide: list[str], memory_mb: int = 6144) -> dict:
    """Run one notebook's cells, then its tests. Returns ``{"status", "reason", "phase", "cases", "errors",
    "tampered"}``; ``cases`` maps each question to its cases' ``{"passed", "message", "hidden"}``."""
    job_id = secrets.token_hex(16)
    private = tempfile.mkdtemp(prefix="dpo-grade-")
    limits = {"private": private, "hide": hide, "memory_mb": memory_mb, "cpu_s": int(timeout) + 5,
              "nproc": sandbox.process_limit()}
    out = {"status": "graded", "reason": "", "phase": "start", "cases": {}, "errors": [], "tampered": []}
    process = _Process(env, sandboxed)
    deadline = time.monotonic() + timeout

    def receive(*expected: str) -> dict:
        try:
            line = process.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise _Abort("timeout", f"killed after {timeout:g} s (per-notebook time limit) while "
                                    f"{_phase_words(out['phase'])}") from None
        if line is None:
            raise _Abort("error", f"the notebook's process ended while {_phase_words(out['phase'])}: "
                                  f"{process.stderr_tail() or 'no message'}")
        try:
            message = json.loads(line)
            ok = isinstance(message, dict) and message.get("id") == job_id and message.get("event") in expected
        except ValueError:
            ok = False
        if not ok:
            out["tampered"].append("a line on the grader's channel that the grader did not ask for")
            raise _Abort("flagged", "the notebook wrote to the grader's channel")
        return message

    try:
        preload = sorted({m for cases in tests.values() for case in cases
                          for m in _PACKAGE_MODULE.findall(case["code"])})
        process.send({"id": job_id, "notebook": text, "file_name": file_name, "cell_timeout": cell_timeout,
                      "private": private, "preload": preload,
                      "sandbox": {k: v for k, v in limits.items() if k != "private"} if sandboxed else None})
        while True:
            message = receive("cell", "error", "ready")
            if message["event"] == "cell":
                out["phase"] = f"cell {int(message['index'])}"
            elif message["event"] == "error":
                out["errors"].append(str(message["text"])[:400])
            else:
                out["tampered"] += [str(t) for t in message.get("tampered", [])][:20]
                break
        out["phase"] = "tests"
        for question, cases in tests.items():
            process.send({"id": job_id, "question": question, "cases": cases})
            message = receive("result")
            results = message.get("cases")
            if message.get("question") != question or not isinstance(results, list) or len(results) != len(cases):
                out["tampered"].append("a reply to another question")
                raise _Abort("flagged", "the notebook wrote to the grader's channel")
            out["tampered"] += [str(t) for t in message.get("tampered", [])][:20]
            out["cases"][question] = [{"passed": r.get("passed") is True, "message": str(r.get("message", ""))[:300],
                                       "hidden": case["hidden"]} for r, case in zip(results, cases)]
        process.send({"id": job_id, "end": True})
    except _Abort as e:
        out["status"], out["reason"] = e.status, e.reason
    except OSError as e:  # the runner's stdin closed under us: it has died
        out["status"], out["reason"] = "error", f"the notebook's process ended: {e}; {process.stderr_tail()}"
    finally:
        process.kill()
        shutil.rmtree(private, ignore_errors=True)
    return out


def _phase_words(phase: str) -> str:
    return {"start": "starting (before any cell ran)", "tests": "the tests ran"}.get(phase, f"running {phase}")
