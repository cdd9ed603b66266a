"""A warm start for every graded notebook: torch, transformers and IPython are imported once per grader, not once per
notebook.

Each notebook's process used to be a new Python started by ``unshare`` that imported torch, transformers and IPython
before its first cell: 1.5-3 s of CPU per notebook, most of the time a short submission takes. Now the grader starts
one **zygote** (``python -m dpo_teach.grading _zygote``) per environment it grades in, on first use, and keeps it for
its later batches: it imports those libraries and waits. For each notebook, the grader hands it the notebook's three
channels (stdin, stdout, stderr) and the call's environment (as its difference from the zygote's own) over a Unix
socket; the zygote forks, and the fork enters fresh namespaces itself (:func:`sandbox.isolate`: what ``unshare``
did) and runs ``runner.main`` as before, with nothing of another submission in it: every notebook still gets its own
process, its own namespaces, the environment of the call that graded it, and its own copy of the libraries
(copy-on-write memory).

The zygote never runs student code and holds no test. It exits when the grader closes the socket or ends. Each fork
also gets the grader's :func:`lifeline`: when the grader ends without ending its notebooks (SIGTERM, SIGKILL, out of
memory), every notebook's waiter sees it and ends its notebook (``sandbox.isolate``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback

from dpo_teach.utils import KeptProcesses

# What every notebook's process imports before its first cell (the runner's own imports and the notebooks' heavy
# ones). Not the rest of dpo_teach: the runner loads what each assignment's tests name, as before.
PRELOAD = ("numpy", "torch", "IPython.core.interactiveshell", "matplotlib.pyplot", "transformers",
           "transformers.models.gpt2.modeling_gpt2", "ipywidgets")
_MAX_ZYGOTES = 2  # one per environment the grader uses at a time (fast and full mode)
# Variables that differ from one grading call to the next in one grader process and that no import reads: a zygote
# started under other values serves the call (its fork takes the call's exact environment). pytest sets the first
# for every test, so without this each test that runs a notebook through judge.run_notebook would start a zygote of
# its own (grade() passes neither: sandbox.notebook_environment).
VOLATILE = ("PYTEST_CURRENT_TEST",)


@functools.cache  # (two threads at once may each make a pipe: either works, as only this process writes to it)
def lifeline() -> int:
    """The read end of a pipe whose write end only this grader process holds and never writes to (``os.pipe``'s
    descriptors are not inherited: no zygote, no notebook and no other program holds it). It hangs up when the grader
    ends, however it ends; every notebook's waiter watches it (``sandbox.isolate``)."""
    return os.pipe()[0]  # the write end stays open, unreferenced, until this process ends


class Zygote:
    """The grader's handle on one zygote process (started with ``env``); :meth:`spawn` forks a notebook's process."""

    def __init__(self, env: dict):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen([sys.executable, "-m", "dpo_teach.grading", "_zygote", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()
        self.socket, self.lock, self.env = ours, threading.Lock(), dict(env)
        self.socket.settimeout(300)  # the imports, on a busy machine
        if self.socket.recv(16) != b"ready":
            self.close()
            raise OSError("the grader's zygote did not start")
        self.socket.settimeout(60)

    def spawn(self, env: dict, stdin: int, stdout: int, stderr: int) -> int:
        """Fork a notebook's process with environment ``env``, these three file descriptors and the grader's
        :func:`lifeline`; returns its id.

        The request carries ``env`` as its difference from the environment the zygote started with (in practice
        the ``VOLATILE`` variables), so it stays one small message however large the environment is.
        """
        changes = {"set": {name: value for name, value in env.items() if self.env.get(name) != value},
                   "unset": [name for name in self.env if name not in env]}
        with self.lock:
            socket.send_fds(self.socket, [json.dumps(changes).encode()], [stdin, stdout, stderr, lifeline()])
            reply = self.socket.recv(32)
        if not reply.isdigit():
            raise OSError("the grader's zygote did not fork")
        return int(reply)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()
        self.process.kill()
        self.process.wait()


_zygotes = KeptProcesses(Zygote, volatile=VOLATILE.__contains__, keep=_MAX_ZYGOTES)


def for_env(env: dict, replacing: Zygote | None = None) -> Zygote:
    """The running zygote for ``env``, started on first use, when it has died, or in place of ``replacing`` (one
    that failed; if another thread has replaced it already, that one is returned). At most ``_MAX_ZYGOTES`` are
    kept; the oldest goes."""
    return _zygotes.get(env, replacing)


def serve(fd: int) -> int:
    """The zygote itself: import ``PRELOAD``, say ``ready``, then fork a notebook's process per request."""
    channel = socket.socket(fileno=fd)  # when the grader ends, the kernel closes its end: EOF, and the zygote exits
    started = dict(os.environ)  # each request's environment is a change of this one
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the forks
    channel.send(b"ready")
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 4)
        except OSError:
            return 0
        if not message:
            return 0
        pid = os.fork()
        if pid == 0:
            _child(channel, fds, message, started)
        for descriptor in fds:
            os.close(descriptor)
        channel.send(str(pid).encode())


def _child(channel: socket.socket, fds: list[int], request: bytes, started: dict) -> None:
    """A notebook's process: its channels on 0, 1 and 2, the grader's lifeline on 3, the environment of the grader's
    ``request`` (JSON: what to set and unset in the zygote's ``started`` environment), fresh namespaces, then the
    runner. Never returns."""
    code = 70
    try:
        channel.close()
        changes = json.loads(request)
        env = {**started, **changes["set"]}
        for name in changes["unset"]:
            env.pop(name, None)
        os.environ.clear()
        os.environ.update(env)
        os.environ.setdefault("MPLBACKEND", "Agg")  # as the zygote imported matplotlib
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, descriptor in enumerate(fds):
            os.dup2(descriptor, target)
        os.closerange(len(fds), os.sysconf("SC_OPEN_MAX"))  # nothing else of the zygote's (close_range(2): one call)
        from dpo_teach.grading import sandbox
        from dpo_teach.grading.runner import main

        os.setsid()  # not tied to the zygote: a zygote that ends (evicted, or the batch done) ends no notebook
        try:
            sandbox.isolate(grader=3 if len(fds) > 3 else None)
        except (sandbox.SandboxUnavailable, OSError) as e:  # the runner tells the grader (``sandbox_failed``)
            code = main(unavailable=sandbox.SandboxUnavailable(str(e)))
        else:
            code = main()
    except BaseException:  # noqa: BLE001 - reported on the runner's stderr (the grader's log of this job)
        traceback.print_exc()
    finally:
        os._exit(code or 0)
