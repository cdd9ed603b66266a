"""Notebook kernels that start warm: torch, transformers and IPython imported once, not once per kernel.

A notebook's kernel (``python -m ipykernel_launcher``) spends 3-5 s of CPU importing those libraries before its first
cell; a short notebook's whole run is not much more. For the runs that the test suite makes,
:func:`kernel_manager_class` (``headless.notebook_client(nb, warm=True)``) gives nbclient a kernel that starts as a
fork of a **zygote**: a process that imported the libraries once and waits (the grader does the same for graded
notebooks: ``dpo_teach/grading/zygote.py``). Jupyter starts the kernel's
command as always; that command is a small **launcher** (``python -m dpo_teach.warm_kernel SOCKET -f FILE``) that
hands its three channels, its environment, its folder and its arguments to the zygote over a Unix socket. The zygote
forks; the fork takes all of those as its own, starts a session of its own and runs ipykernel as
``ipykernel_launcher`` would. A fork is a new process, with nothing of an earlier notebook in it: what a notebook
imports, defines or changes is its own, as in a kernel started cold.

The launcher stands for the kernel towards Jupyter: it passes on the signals Jupyter sends it (an interrupt, a
shutdown), it ends when the kernel ends, and when it is killed the kernel and what it started are killed too. Only
the third-party libraries are imported early, never the course's own modules, and nothing that reads the variables a
run sets (``DPO_TEACH_*``, ``TMPDIR``): a change to them is seen as in a cold kernel. Students' kernels are Jupyter's
own; ``make bench-notebooks`` times those.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from dpo_teach.utils import KeptProcesses

# What a kernel of the course imports at start or in its first cells; nothing that reads DPO_TEACH_* or TMPDIR, and
# nothing that imports pdb: the kernel replaces pdb.Pdb when it starts, and a class that doctest (otter's checks)
# derived from the old one before that fails. So otter's heavy part (nbformat's schema checks), not otter itself.
PRELOAD = ("numpy", "torch", "transformers", "transformers.models.gpt2.modeling_gpt2", "ipykernel.kernelapp",
           "ipywidgets", "nbformat.validator")
# Variables a run sets that no import of PRELOAD reads: a zygote started under other values serves the kernel, which
# takes its launcher's exact environment. Any other difference gets a zygote of its own.
VOLATILE = ("TMPDIR", "TEMP", "TMP", "PYTEST_CURRENT_TEST", "JPY_PARENT_PID", "MPLBACKEND")
VOLATILE_PREFIXES = ("DPO_TEACH_",)
_MAX_ZYGOTES = 2


class Zygote:
    """A zygote process started with ``env``, listening on a Unix socket in a private folder."""

    def __init__(self, env: dict):
        self.folder = tempfile.mkdtemp(prefix="dpo-teach-kernels-")  # mode 0700: only this user may connect
        self.socket_path = os.path.join(self.folder, "zygote")
        self.process = subprocess.Popen([sys.executable, "-m", "dpo_teach.warm_kernel", "--zygote", self.socket_path],
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=self.folder)
        ready = self.process.stdout.readline()  # the imports, on a busy machine: seconds
        if ready.strip() != b"ready":
            self.close()
            raise OSError("the warm kernels' zygote did not start")

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # EOF: the zygote exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
            os.rmdir(self.folder)


_zygotes = KeptProcesses(Zygote, volatile=lambda name: name in VOLATILE or name.startswith(VOLATILE_PREFIXES),
                         keep=_MAX_ZYGOTES)


def zygote_for(env: dict) -> Zygote:
    """The running zygote for ``env`` (started on first use, or again when it has died); at most two are kept."""
    return _zygotes.get(env)


def kernel_manager_class() -> type:
    """A ``jupyter_client.AsyncKernelManager`` class for nbclient (``headless.notebook_client(nb, warm=True)``, which
    then starts and shuts down the kernel as its own) whose kernels start warm, from the zygote for this process's
    environment (which the kernels inherit). On Linux only; elsewhere Jupyter's own class (kernels that start
    cold)."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec

    if not sys.platform.startswith("linux"):  # macOS: a fork of a process that loaded torch is not safe; cold starts
        return AsyncKernelManager
    zygote = zygote_for(dict(os.environ))
    launcher = [sys.executable, "-m", "dpo_teach.warm_kernel", zygote.socket_path, "-f", "{connection_file}"]
    spec = KernelSpec(argv=launcher, display_name="Python 3 (warm start)", language="python",
                      metadata={"debugger": True})

    class WarmKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self):  # the python3 kernel, with the launcher as its command
            return spec

    return WarmKernelManager


# --- the launcher: the process Jupyter starts and signals ----------------------------------------------------------

def launch(socket_path: str, argv: list[str]) -> int:
    """Have the zygote at ``socket_path`` fork a kernel with this process's channels, environment, folder and
    ``argv``; pass on the signals this process gets; return when the kernel (and all it started) has ended."""
    ended_r, ended_w = os.pipe()  # the kernel holds the write end: EOF here when it has ended
    alive_r, alive_w = os.pipe()  # this process holds the write end: EOF in the kernel when this one has ended
    request = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": argv}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.connect(socket_path)
        socket.send_fds(channel, [request], [0, 1, 2, ended_w, alive_r])
        reply = channel.recv(32)
    os.close(ended_w)
    os.close(alive_r)
    if not reply.isdigit():
        print(f"dpo_teach.warm_kernel: the zygote did not start the kernel ({reply!r})", file=sys.stderr)
        return 1
    kernel = int(reply)  # it leads a process group of its own

    def relay(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(kernel, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, relay)
    while os.read(ended_r, 1):  # after a relayed signal, Python goes on reading by itself
        pass
    return 0


# --- the zygote ----------------------------------------------------------------------------------------------------

def serve(socket_path: str) -> int:
    """Import ``PRELOAD``, listen on ``socket_path``, say ``ready``, then fork a kernel per launcher that connects;
    exit when the process that started this one closes its end of stdin."""
    import selectors

    if sys.path and sys.path[0] in ("", os.getcwd()):  # `python -m` put its folder first: a kernel's path has not it
        del sys.path[0]  # (ipykernel_launcher drops it)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    if threading.active_count() != 1:  # a fork keeps only the forking thread: a lock another Python thread held
        print("the zygote has Python threads after its imports", file=sys.stderr)  # would stay held in every kernel
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernels are reaped by the kernel (no zombies)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is for the tests, not for the zygote
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.fileobj is not listener:  # stdin: EOF (or anything) from the process that started this one
                with contextlib.suppress(OSError):  # which may have ended without closing this one (its exit
                    os.unlink(socket_path)  # handlers not run: a pytest-xdist worker): the folder goes here too
                    os.rmdir(os.path.dirname(socket_path))
                return 0
            channel, _ = listener.accept()
            with channel:
                try:
                    message, fds, _, _ = socket.recv_fds(channel, 1 << 22, 5)
                except OSError:
                    continue
                if len(fds) != 5 or not message:
                    for descriptor in fds:
                        os.close(descriptor)
                    continue
                pid = os.fork()
                if pid == 0:
                    _kernel(listener, channel, fds, message)
                for descriptor in fds:
                    os.close(descriptor)
                with contextlib.suppress(OSError):
                    channel.sendall(str(pid).encode())


def _kernel(listener: socket.socket, channel: socket.socket, fds: list[int], request: bytes) -> None:
    """The fork: the launcher's channels, environment, folder and arguments, a session of its own, then ipykernel as
    ``ipykernel_launcher`` runs it. Never returns."""
    code = 1
    try:
        os.setsid()
        listener.close()
        channel.close()
        import fcntl

        high = [fcntl.fcntl(descriptor, fcntl.F_DUPFD_CLOEXEC, 10) for descriptor in fds]  # out of 0-4's way
        for target, descriptor in enumerate(high):  # 0-2: the launcher's channels; 3: ended_w; 4: alive_r
            os.dup2(descriptor, target, inheritable=target <= 2)
        os.closerange(5, os.sysconf("SC_OPEN_MAX"))  # nothing else of the zygote's (its socket, its selector)
        alive_r = 4  # 3, the write end the launcher waits on, stays open until this process ends
        request = json.loads(request)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        tempfile.tempdir = None  # where temporary files go: $TMPDIR as this kernel has it
        if "numpy" in sys.modules:  # a cold kernel's global NumPy generator starts from fresh entropy
            sys.modules["numpy"].random.seed()
        sys.argv = [os.path.join(os.path.dirname(sys.modules["ipykernel"].__path__[0]), "ipykernel_launcher.py"),
                    *request["argv"]]

        def watch() -> None:  # the launcher killed (SIGKILL cannot be passed on): end this kernel and what it started
            while os.read(alive_r, 1):
                pass
            os.killpg(0, signal.SIGKILL)

        threading.Thread(target=watch, daemon=True, name="launcher-watch").start()
        from ipykernel import kernelapp

        # two defaults ipykernel read from the environment when the zygote imported it: read again from this one
        kernelapp.IPKernelApp.launch_instance(parent_handle=int(os.environ.get("JPY_PARENT_PID") or 0),
                                              interrupt=int(os.environ.get("JPY_INTERRUPT_EVENT") or 0))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:  # noqa: BLE001 - the kernel's stderr is the launcher's: Jupyter logs it
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):  # what a cold kernel does when it exits: e.g. a notebook's
            atexit._run_exitfuncs()  # TemporaryDirectory is deleted (its finalizer runs at exit)
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never back into the zygote's loop


def main(argv: list[str]) -> int:
    if argv[:1] == ["--zygote"] and len(argv) == 2:
        return serve(argv[1])
    if len(argv) >= 1:
        return launch(argv[0], argv[1:])
    print("usage: python -m dpo_teach.warm_kernel SOCKET -f CONNECTION_FILE  (or --zygote SOCKET)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
