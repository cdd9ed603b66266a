"""The grader's side of one notebook: start ``runner.py`` (in the sandbox), feed it the tests one question at a time,
and decide the score itself.

What a submission cannot do from inside: see the tests before its cells have run (they are sent afterwards, a
question at a time, and never written to disk), see or signal the grader or another submission (PID namespace),
leave a process behind (killed with the namespace; without the sandbox, :func:`strays.ending_strays`), answer for
another job (every line carries this job's random id and must be the reply the grader is waiting for), say ``ready``
before the runner has reported its last cell, or prepare a reply in advance (each question carries a nonce that the
reply must return: no one knew it while the cells ran), or give itself points (the score is the manifest's points
for a question whose every case passed, 0 otherwise).

What it can still do: code that reaches the runner's own objects while one of its cells runs can impersonate the
runner, read each question as it comes and answer it. The runner's audit hook (``runner.watch_memory``) ends the
process, and the grader flags it (a ``caught`` line), at the routes an audit event reports: the process's memory,
the channel's descriptors, ``gc``'s object lists, ``ctypes``' raw reads, a frame taken for the notebook's code
(``sys._getframe`` and the standard library around it, a traceback's or a generator's frame, a trace function).
Code that walks up from a frame a package outside the standard library hands it, or reads memory through an address
without ``ctypes``, is seen only by the scan (``scan.py``), where it is written plainly. No grader that runs tests
in the student's process resists every such attack; a flagged notebook scores 0 until an instructor has read it.
"""

from __future__ import annotations

import contextlib
import doctest
import json
import os
import queue
import re
import secrets
import select
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from dpo_teach.grading import sandbox
from dpo_teach.grading.assign import NOTEBOOKS, ROOT
from dpo_teach.grading.runner import code_cells
from dpo_teach.grading.scan import references

MAX_LINE = 1 << 20  # a reply longer than this is not the runner's
# How the runner itself may end a test case (``runner.run_cases``), and the message such a case gets: the grader's own
# words, never the message the notebook's process sent, which its code could write (a notebook that impersonated the
# runner wrote a hidden test's source there, and the feedback quoted it)
STOPPED = {"time_limit": "TimeoutError: time limit: a cell ran past the grader's limit of {seconds} s per cell",
           "tampered": "the code under test changed what the tests rely on while it was tested"}
_PACKAGE_MODULE = re.compile(r"\bdpo_teach\.[a-z_]+")  # the package modules a test names


def test_case(code: str, hidden: bool) -> dict:
    """One test case as the grader uses it: ``{"code": doctest text, "hidden": bool, "examples": [source, ...]}``.

    Its doctest is parsed here, once, in the grader: the scan (``rules.builtins_used``) and the runner (which only
    executes ``examples``; a notebook that patched ``doctest`` in its own process could otherwise turn every test
    into a test of nothing) read the same parse, so the two can never disagree."""
    examples = [example.source for example in doctest.DocTestParser().get_examples(code)]
    return {"code": code, "hidden": bool(hidden), "examples": examples}


def load_tests(bundle: Path) -> dict[str, list[dict]]:
    """``{question: [test_case, ...]}`` (:func:`test_case`) from an otter bundle's ``tests/*.py``."""
    tests = {}
    with zipfile.ZipFile(bundle) as z:
        for name in sorted(z.namelist()):
            if name.startswith("tests/") and name.endswith(".py"):
                scope: dict = {}
                exec(z.read(name).decode("utf-8"), scope)  # noqa: S102 - the course's own bundle, never a student's
                test = scope["test"]
                tests[test["name"]] = [test_case(case["code"], case.get("hidden"))
                                       for suite in test["suites"] for case in suite["cases"]]
    return tests


class _Process:
    """The runner process and its lines; ``kill`` ends it with everything it started.

    Sandboxed, it is a fork of the grader's zygote (``zygote.py``) that enters its own namespaces; with ``--unsafe``,
    a plain new Python."""

    def __init__(self, env: dict, sandboxed: bool):
        self.log = tempfile.TemporaryFile("w+", encoding="utf-8", errors="backslashreplace")  # any bytes on stderr
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
        os.set_blocking(self.stdin.fileno(), False)  # send() waits for the pipe until a deadline, never for ever
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

    def send(self, message: dict, deadline: float) -> None:
        """Write ``message`` as one line; ``TimeoutError`` where the process has not taken it all by ``deadline``
        (``time.monotonic()``): a notebook that stops reading its end of the pipe, the pipe full, held the grader, and
        every notebook after it, for ever."""
        data, fd = memoryview((json.dumps(message) + "\n").encode()), self.stdin.fileno()
        while data:
            if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                raise TimeoutError("the notebook's process stopped reading what the grader sends")
            with contextlib.suppress(BlockingIOError):  # room for less than a whole write: wait again
                data = data[os.write(fd, data):]

    def stderr_tail(self) -> str:
        self.log.seek(0)
        tail = [line for line in self.log.read().strip().splitlines()[-3:] if line.strip()]
        return " | ".join(tail)[-400:]

    def end(self) -> None:
        """SIGKILL, and nothing else: the thread that waits on this process sees its end and cleans up."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.proc is None:  # the fork outside the namespaces: its death kills the namespace's first process
                os.kill(self.pid, signal.SIGKILL)
            else:
                os.killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        self.end()
        if self.proc is not None:
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
                 env: dict, sandboxed: bool, hide: list[str], memory_mb: int = sandbox.MEMORY_MB) -> dict:
    """Run one notebook's cells, then its tests (``{question: [test_case, ...]}``, :func:`load_tests`). Returns
    ``{"status", "reason", "phase", "cases", "errors", "tampered"}`` (and ``caught``: what the runner's audit hook ended
    the process for); ``cases`` maps each question to its cases'
    ``{"passed", "message", "hidden", "stopped"}`` (``stopped``: one of ``STOPPED`` when the runner itself ended the
    case, else None).

    ``status``: ``graded`` (it ran to its end), ``timeout`` (the per-notebook limit), ``flagged`` (a line on the
    grader's channel that the runner did not write, or the audit hook's ``caught``), ``crashed`` (its process ended
    once the notebook's own code had started: a cell or a test of its functions ended it, or it broke a resource
    limit) or ``error`` (its process ended before any of the notebook's code ran: the grader's or the machine's
    failure, graded again on a rerun).

    Raises:
        sandbox.SandboxUnavailable: the notebook's process could not enter its sandbox (it said so before any of the
            notebook's code ran: the machine's problem, not the notebook's).
    """
    # the job's private folder (the sandbox mounts a tmpfs over it), gone however the job ends, a failed start too
    with tempfile.TemporaryDirectory(prefix="dpo-grade-", ignore_cleanup_errors=True) as private:
        process = _Process(env, sandboxed)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
            if _ENDING.is_set():  # started while the batch was being interrupted: end it too
                process.end()
        try:
            return _run(process, private, text, file_name, tests, cell_timeout, timeout, sandboxed, hide, memory_mb)
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
            process.kill()


_RUNNING: set[_Process] = set()  # the notebooks' processes running now, in any thread
_RUNNING_LOCK = threading.Lock()
_ENDING = threading.Event()  # set from end_running() until allow_running(): a process started meanwhile is ended


def end_running() -> None:
    """End every notebook running now, and any started until :func:`allow_running` (the batch was interrupted:
    Ctrl-C). Each :func:`run_notebook` then returns the row of a notebook whose process ended, which the caller
    must not keep."""
    with _RUNNING_LOCK:
        _ENDING.set()
        for process in _RUNNING:
            process.end()


def ending() -> bool:
    """Whether the batch is being interrupted (between :func:`end_running` and :func:`allow_running`): a row that
    comes back now is of a notebook ended by the interrupt, not by its own code."""
    return _ENDING.is_set()


def allow_running() -> None:
    """After :func:`end_running`, once the interrupted batch has stopped: notebooks may run again."""
    _ENDING.clear()


def _run(process: _Process, private: str, text: str, file_name: str, tests: dict[str, list[dict]],
         cell_timeout: int, timeout: float, sandboxed: bool, hide: list[str], memory_mb: int) -> dict:
    """:func:`run_notebook` once its process has started: the job, the cells' reports, then the tests."""
    job_id = secrets.token_hex(16)
    out = {"status": "graded", "reason": "", "phase": "start", "cases": {}, "errors": [], "tampered": []}
    channel = _Channel(process, job_id, time.monotonic() + timeout, timeout, out)
    limits = {"hide": hide, "memory_mb": memory_mb, "cpu_s": int(timeout) + 5,
              "nproc": sandbox.process_limit() if sandboxed else None,
              "keep": [str(p) for p in kept()] if sandboxed else [],
              "cover_too": sandbox.private_folders() if sandboxed else []}
    try:
        preload = sorted({m for cases in tests.values() for case in cases
                          for m in _PACKAGE_MODULE.findall(case["code"])})
        channel.send({"id": job_id, "notebook": text, "file_name": file_name, "cell_timeout": cell_timeout,
                      "private": private, "preload": preload, "sandbox": limits if sandboxed else None,
                      "references": {q: sorted(names) for q, names in references(tests).items()}})
        _cell_phase(channel, [index for index, _ in code_cells(json.loads(text))], out)
        out["phase"] = "tests"
        # every question's public cases before any hidden one: a function that records the hidden cases' inputs
        # cannot pass them on through a later public case's message, which the student reads
        for hidden in (False, True):
            for question, cases in tests.items():
                part = [case for case in cases if case["hidden"] is hidden]
                if part:
                    _test_question(channel, question, part, out, cell_timeout)
        channel.send({"id": job_id, "end": True})
    except _Abort as e:
        out["status"], out["reason"] = e.status, e.reason
    except OSError as e:  # the runner's stdin closed under us: it has died
        out["status"] = _ended(out["phase"])
        out["reason"] = (f"the notebook's process ended while {_phase_words(out['phase'])}: {e}; "
                         f"{_last_words(process, out['phase'])}")
    return out


def kept() -> list[Path]:
    """What a notebook needs to see, wherever it lies: the package and its metadata, the student notebooks, the
    cache (and where its entries link to) and the Python environment (with the user's own site-packages, where
    ``pip install --user`` puts packages). In the temporary folder and in people's homes nothing else stays in view
    (``sandbox.cover``); in the course's folder nothing else does either (``grade._hidden``)."""
    from dpo_teach.world import cache_dir  # not at the top: torch; each notebook's process imports this module

    cache = cache_dir()
    links = [p.resolve() for p in cache.iterdir() if p.is_symlink()] if cache.is_dir() else []
    user_site = [Path(site.getusersitepackages())] if site.ENABLE_USER_SITE else []
    return [ROOT / "dpo_teach", *ROOT.glob("*.egg-info"), NOTEBOOKS, cache, *links, Path(sys.prefix),
            Path(sys.base_prefix), *(p for p in user_site if p.is_dir()), *_import_folders()]


def _import_folders() -> list[Path]:
    """The folders on ``sys.path`` besides the environment's (``PYTHONPATH``, another package installed in editable
    mode from a home folder): what a notebook imports later must be there. Not the course's folder or one above it (it
    would show the tests and masters: what a notebook needs of it is kept on its own), not the working folder (a
    ``python -m`` run puts it first) and not a top-level folder or a home itself (it would show all of it)."""
    root, found = ROOT.resolve(), []
    never = {Path.cwd().resolve(), Path.home().resolve()}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        path = Path(entry).resolve()
        if path == root or root in path.parents or path in root.parents or path in never or len(path.parts) <= 2:
            continue
        found.append(path)
    return found


def _last_words(process: _Process, phase: str) -> str:
    """What a process that ended early printed last, for the row's reason; not once the tests ran, when the student's
    code may have printed the hidden tests' inputs before ending its own process."""
    if phase == "tests":
        return "what it printed last is not shown (it may hold the tests' inputs)"
    return process.stderr_tail() or "no message"


def _ended(phase: str) -> str:
    """The status of a notebook whose process ended early: ``crashed`` once its own code had started (the runner
    reports a cell before running it, and the phase only moves forward: no notebook code can bring it back to
    ``start``), ``error`` before that (the grader's or the machine's failure, not the student's)."""
    return "error" if phase == "start" else "crashed"


def _writable(value):
    """``value`` with every string made encodable (a lone surrogate, ``chr(0xdce7)`` in a student's error message,
    becomes the text ``\\udce7``): else writing grades.json, or printing the table, would fail for the whole class."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_writable(v) for v in value]
    if isinstance(value, dict):
        return {_writable(k): _writable(v) for k, v in value.items()}
    return value


class _Channel:
    """The runner's replies, each checked: this job's id, an event the grader is waiting for, in time."""

    def __init__(self, process: _Process, job_id: str, deadline: float, timeout: float, out: dict):
        self.process, self.job_id, self.deadline, self.timeout, self.out = process, job_id, deadline, timeout, out

    def send(self, message: dict) -> None:
        """``message`` to the runner, within the notebook's time limit like every reply."""
        try:
            self.process.send(message, self.deadline)
        except TimeoutError:
            raise _Abort("timeout", f"killed after {self.timeout:g} s (per-notebook time limit) while "
                                    f"{_phase_words(self.out['phase'])}") from None

    def receive(self, *expected: str) -> dict:
        try:
            line = self.process.lines.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            raise _Abort("timeout", f"killed after {self.timeout:g} s (per-notebook time limit) while "
                                    f"{_phase_words(self.out['phase'])}") from None
        if line is None:
            phase = self.out["phase"]
            raise _Abort(_ended(phase), f"the notebook's process ended while {_phase_words(phase)}: "
                                        f"{_last_words(self.process, phase)}")
        message = None
        try:
            message = _writable(json.loads(line))
            ok = isinstance(message, dict) and message.get("id") == self.job_id and message.get("event") in expected
        except (ValueError, RecursionError):  # not JSON; nested deeper than json can read (a notebook's "[[[[...")
            ok = False
        if isinstance(message, dict) and message.get("id") == self.job_id \
                and message.get("event") == "caught":  # the runner's audit hook ended the process (runner.watch_memory)
            what = str(message.get("what", ""))[:200]
            self.out.setdefault("caught", []).append(f"the notebook's code {what}")
            raise _Abort("flagged", f"the notebook's code {what}; its process was ended at once")
        if not ok:
            self.forged("a line on the grader's channel that the grader did not ask for")
        return message

    def forged(self, what: str) -> None:
        self.out["tampered"].append(what)
        raise _Abort("flagged", "the notebook wrote to the grader's channel")


def _cell_phase(channel: _Channel, cells: list[int], out: dict) -> None:
    """The runner's reports while the cells run, until ``ready``: a ``cell`` for each code cell of the notebook,
    in order, before it. A ``ready`` any earlier came from the notebook's own code, not from the runner; so did a
    ``sandbox_failed`` after the first ``cell`` (the runner sends it only instead of running any cell)."""
    reported = []
    while True:
        message = channel.receive("cell", "error", "ready", "sandbox_failed")
        if message["event"] == "sandbox_failed":
            if reported:
                channel.forged(f"'sandbox_failed' after cell {reported[-1]}: not the runner's")
            raise sandbox.SandboxUnavailable(str(message.get("reason") or "no reason given"))
        if message["event"] == "cell":
            if type(message.get("index")) is not int:
                channel.forged("a 'cell' report without a cell number")
            reported.append(message["index"])
            out["phase"] = f"cell {message['index']}"
        elif message["event"] == "error":
            out["errors"].append(str(message["text"])[:1200])
        elif reported != cells:
            channel.forged(f"'ready' after cells {reported[-3:]} of {len(cells)}: not the runner's")
        else:
            out["tampered"] += [str(t) for t in message.get("tampered", [])][:20]
            return


def _test_question(channel: _Channel, question: str, cases: list[dict], out: dict, cell_timeout: int) -> None:
    """Send one question's cases with a fresh nonce; take the reply that returns it, with a result per case."""
    nonce = secrets.token_hex(16)
    channel.send({"id": channel.job_id, "question": question, "nonce": nonce,
                  "cases": [{"examples": case["examples"]} for case in cases]})
    message = channel.receive("result")
    results = message.get("cases")
    if message.get("nonce") != nonce or message.get("question") != question or not isinstance(results, list) \
            or len(results) != len(cases) or not all(isinstance(r, dict) for r in results):
        channel.forged("a reply that does not answer the question asked (another question, or no nonce)")
    out["tampered"] += [str(t) for t in message.get("tampered", [])][:20]
    called = message.get("reference_calls")
    if isinstance(called, list) and called:
        out.setdefault("reference_calls", {}).setdefault(question, []).extend(str(c)[:200] for c in called[:5])
    for r, case in zip(results, cases):
        stopped = _stopped(r)
        message = STOPPED[stopped].format(seconds=cell_timeout) if stopped else str(r.get("message", ""))[:300]
        out["cases"].setdefault(question, []).append(
            {"passed": r.get("passed") is True, "message": message, "hidden": case["hidden"], "stopped": stopped})


def _stopped(result: dict) -> str | None:
    """How the runner itself ended a failed case (``"time_limit"``, ``"tampered"``), or None: a case it ended is
    marked by the runner in a field of its own, never read from the message (the student's code writes messages)."""
    stopped = result.get("stopped")
    return stopped if stopped in STOPPED and result.get("passed") is not True else None


def _phase_words(phase: str) -> str:
    return {"start": "starting (before any cell ran)", "tests": "the tests ran"}.get(phase, f"running {phase}")
