"""What the sandbox covers beyond the course's folder: the temporary folder, people's homes and the folders where
daemons listen on Unix sockets (``sandbox.cover``). The attacks themselves (a copy of the course in a home, a daemon's
socket in /run) are graded in tests/test_grading_hostile.py's batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dpo_teach.grading import sandbox

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="needs the sandbox (Linux namespaces)")

# Inside the sandbox's namespaces, a file system mounted under a folder that the sandbox then covers (as a user's
# runtime folder is mounted under /run): entering must neither fail on that mount nor show it.
NESTED = """
import json, os, sys, tempfile
from pathlib import Path
from dpo_teach.grading import sandbox

base = Path(sys.argv[1])
sandbox.isolate()
(base / "inner").mkdir()
sandbox._mount("tmpfs", str(base / "inner"), "tmpfs", 0, "size=1m")
(base / "inner" / "secret.txt").write_text("SECRET")
out = {}
try:
    sandbox.enter(tempfile.mkdtemp(), [], 4096, 60, None, cover_too=[str(base)])
    out["secret seen"] = (base / "inner" / "secret.txt").exists()
except Exception as e:
    out["error"] = repr(e)
print(json.dumps(out))
"""


def real_home() -> Path:
    """The grading user's home as the password file has it (the suite's $HOME is a temporary folder in CI), else
    $HOME (a user without an entry, ``docker run -u 1234``)."""
    import pwd

    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return Path.home()


def sandboxed(script: str, *args) -> dict:
    """Run ``script`` (which enters the sandbox itself) in a fresh Python, ``args`` its ``sys.argv[1:]``; what it
    printed last, read as JSON."""
    run = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["the temporary folder", "the grading user's home"])
def test_a_mount_inside_a_covered_folder_is_out_of_reach_and_no_error(where):
    parent = Path(tempfile.mkdtemp(prefix=".dpo-teach-nested-", dir=real_home() if "home" in where else None))
    try:
        out = sandboxed(NESTED, parent)
        assert "error" not in out, f"entering the sandbox failed on a mount it covers: {out['error']}"
        assert out == {"secret seen": False}, out
    finally:
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def test_the_covered_folders_are_homes_and_sockets_folders_not_the_root_nor_inside_the_temporary_one(monkeypatch,
                                                                                                   tmp_path):
    tmp = Path(tempfile.gettempdir()).resolve()
    monkeypatch.setenv("HOME", str(tmp_path))  # a home in the temporary folder (as in CI): covered with it already
    folders = [Path(f) for f in sandbox.private_folders()]
    assert folders and all(f.is_dir() and f != Path("/") and f.resolve() == f for f in folders), folders
    assert not any(f == tmp or tmp in f.parents for f in folders), folders
    assert len(folders) == len(set(folders)) and not any(a in b.parents for a in folders for b in folders), folders
    home = real_home().resolve()
    if home.is_dir() and home != Path("/") and tmp not in home.parents:
        assert any(home == f or f in home.parents for f in folders), f"the grading user's home {home}: {folders}"
    for known in ("/home", "/root", "/run", "/mnt"):
        if Path(known).is_dir() and not Path(known).is_symlink():
            assert Path(known) in folders, f"{known} is not covered: {folders}"
    for system in ("/", "/dev", "/usr/sbin", "/etc"):  # a system user's home: covering it would break every notebook
        monkeypatch.setenv("HOME", system)
        assert sandbox.private_folders() == [str(f) for f in folders], f"HOME={system} changed what is covered"


def test_a_kept_folder_that_holds_a_covered_one_stops_the_sandbox_with_what_to_do(tmp_path):
    """DPO_TEACH_CACHE=/home, say: covering /home would hide the cache, keeping the cache would show all of /home."""
    (tmp_path / "home").mkdir()
    with pytest.raises(sandbox.SandboxUnavailable, match=r"holds .*home, which the sandbox empties: move it"):
        sandbox.cover(tmp_path / "home", [str(tmp_path)], "0755")  # refused before anything is mounted


# A kept path reached through a symbolic link inside a covered folder (a ~/venv that links elsewhere).
LINKED = """
import json, os, sys, tempfile
from pathlib import Path
from dpo_teach.grading import sandbox

home = Path(sys.argv[1])
sandbox.isolate()
sandbox.enter(tempfile.mkdtemp(), [], 4096, 60, None, keep=[str(home / "venv")], cover_too=[str(home)])
print(json.dumps({"home": sorted(os.listdir(home)), "python": (home / "venv" / "python").read_text()}))
"""


def test_a_kept_path_behind_a_symbolic_link_stays_reachable_by_its_own_name(tmp_path):
    home = Path(tempfile.mkdtemp(prefix=".dpo-teach-linked-", dir=real_home()))
    try:
        (tmp_path / "real-venv").mkdir()
        (tmp_path / "real-venv" / "python").write_text("the interpreter")
        (home / "venv").symlink_to(tmp_path / "real-venv")
        (home / "secrets").write_text("not for notebooks")
        assert sandboxed(LINKED, home) == {"home": ["venv"], "python": "the interpreter"}
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_a_mount_is_shadowed_only_under_a_covered_folder_and_not_where_it_was_bound_back():
    covered, bound = [Path("/run"), Path("/tmp")], [Path("/run/keep")]
    assert sandbox.shadowed("/run/user/1000", covered, bound)
    assert sandbox.shadowed("/tmp/.X11-unix", covered, bound)
    assert not sandbox.shadowed("/run", covered, bound)  # the covering tmpfs itself
    assert not sandbox.shadowed("/run/keep", covered, bound) and not sandbox.shadowed("/run/keep/sub", covered, bound)
    assert not sandbox.shadowed("/proc", covered, bound) and not sandbox.shadowed("/running", covered, bound)


# A daemon's socket where the notebook can see it (a folder it keeps: the course's, the environment's), and what the
# notebook can still do with sockets: a pair of its own (multiprocessing, asyncio), an internet socket (loopback only).
SOCKETS = """
import asyncio, json, os, socket, sys, tempfile, threading
from dpo_teach.grading import sandbox

folder = sys.argv[1]
server = socket.socket(socket.AF_UNIX)
server.bind(os.path.join(folder, "daemon.sock"))
server.listen(4)
threading.Thread(target=lambda: server.accept()[0].sendall(b"a"), daemon=True).start()
read, write = os.pipe()
if os.fork() == 0:
    out = {}
    sandbox.isolate()
    sandbox.enter(tempfile.mkdtemp(), [], 4096, 60, None, keep=[folder])
    out["in view"] = os.path.exists(os.path.join(folder, "daemon.sock"))
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(folder, "daemon.sock"))
            out["daemon said"] = s.recv(4).decode()
    except OSError as e:
        out["refused"] = e.errno
    a, b = socket.socketpair()
    a.sendall(b"x")
    out["pair"] = b.recv(1).decode()
    out["asyncio"] = asyncio.run(asyncio.sleep(0, "ok"))
    socket.socket(socket.AF_INET).close()
    socket.socket(socket.AF_INET6).close()
    for name, make in [("datagram pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)),
                       ("vsock", lambda: socket.socket(40, socket.SOCK_STREAM))]:  # AF_VSOCK: a VM's host
        try:
            make()
            out[name] = "made"
        except OSError as e:
            out[name] = e.errno
    os.write(write, json.dumps(out).encode())
    os._exit(0)
os.wait()
print(os.read(read, 4000).decode())
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64", "riscv64"),
                    reason="the seccomp filter knows x86_64, arm64 and riscv64")
def test_no_unix_socket_connects_even_where_it_is_in_view(tmp_path):
    import errno

    out = sandboxed(SOCKETS, tmp_path)
    assert out == {"in view": True, "refused": errno.EPERM, "pair": "x", "asyncio": "ok",
                   "datagram pair": errno.EPERM, "vsock": errno.EPERM}, out


DEV = """
import json, os, tempfile
from dpo_teach.grading import sandbox

sandbox.isolate()
sandbox.enter(tempfile.mkdtemp(), [], 4096, 60, None)
with open("/dev/null", "w") as f:
    f.write("works")
print(json.dumps({"dev": sorted(os.listdir("/dev")), "urandom": len(open("/dev/urandom", "rb").read(8)),
                  "shm writable": os.access("/dev/shm", os.W_OK), "fd": os.path.exists("/dev/fd/1")}))
"""


def test_dev_holds_only_the_devices_a_notebook_opens():
    """No disk, /dev/kvm, /dev/kmsg or /dev/fuse in view (as root, the raw disk would hold every file, hidden tests
    included): null, zero, full, random and urandom, the usual links and a private /dev/shm."""
    out = sandboxed(DEV)
    devices = [d for d in sandbox.DEVICES if os.path.exists(f"/dev/{d}")]
    assert out["dev"] == sorted([*devices, *sandbox.DEVICE_LINKS, "shm"]), out["dev"]
    assert set(os.listdir("/dev")) - set(out["dev"]), "the machine's /dev holds more, which the test should see hidden"
    assert out["urandom"] == 8 and out["shm writable"] and out["fd"], out


def test_a_notebooks_shell_commands_run_in_the_sandbox():
    """`!cmd` lines ran on a pseudo-terminal, which the sandbox's /dev lacks: every one failed with "OSError: out of
    pty devices", the command not run (a student's `!pip list` read as a crash of the grader's). They run through a
    pipe, as in Jupyter, still inside the sandbox: no other process, no network."""
    from test_zygote import grade, notebook

    text = notebook("!echo hi from the shell > marker.txt", "x = open('marker.txt').read()",
                    "!ls /proc | grep -c '^[0-9]' > processes.txt", "n = int(open('processes.txt').read())")
    out = grade(text, ">>> x\n'hi from the shell\\n'\n>>> assert n <= 4, n\n", dict(os.environ))
    assert out["status"] == "graded" and out["errors"] == [] and out["cases"]["q"][0]["passed"], out


# isolate()'s parent is slowed after the fork while the child, in the same mount namespace, covers /dev at once (as
# enter() does on a busy machine): the parent must have nothing left to open by then.
SLOW_PARENT = """
import json, os, sys, time
from dpo_teach.grading import sandbox

fork = os.fork
def slow_fork():
    pid = fork()
    if pid:
        time.sleep(1)
    return pid
os.fork = slow_fork
sandbox.isolate()
sandbox._mount("tmpfs", "/dev", "tmpfs", 0, "size=1m")
time.sleep(2)
print(json.dumps({"child": "done"}))
"""


def test_the_waiting_parent_opens_nothing_after_the_fork():
    """The namespace's first process's parent (which only waits) once failed with "No such file or directory:
    '/dev/null'": it opened /dev/null after the fork, by when the child had covered /dev."""
    assert sandboxed(SLOW_PARENT) == {"child": "done"}


def test_a_private_folder_in_dev_shm_is_writable():
    """TMPDIR=/dev/shm: the job's folder lies under /dev/shm, which gets its own tmpfs; it is made again in it (every
    notebook failed with "mount tmpfs on /dev/shm/...: No such file or directory")."""
    script = ("import json, os, sys\nfrom dpo_teach.grading import sandbox\n"
              "private = sys.argv[1]\nsandbox.isolate()\nsandbox.enter(private, [], 4096, 60, None)\n"
              "open(os.path.join(private, 'notes.txt'), 'w').write('ok')\nprint(json.dumps(os.listdir(private)))")
    private = tempfile.mkdtemp(prefix="dpo-grade-", dir="/dev/shm")
    try:
        assert sandboxed(script, private) == ["notes.txt"]
    finally:
        subprocess.run(["rm", "-rf", private], check=False)


def test_the_folders_on_sys_path_stay_in_view_but_not_the_course_or_a_whole_home(tmp_path, monkeypatch):
    """A package on PYTHONPATH, or installed in editable mode from a home folder, is imported later by a notebook:
    its folder is kept. The course's folder (its tests and masters), the working folder, a home itself and a
    top-level folder are not: each would show all it holds."""
    from dpo_teach.grading import judge

    library = tmp_path / "lib"
    library.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(library), "", str(tmp_path), str(judge.ROOT), str(judge.ROOT / "tests"),
                                      str(judge.ROOT.parent), str(Path.home()), "/home", "/", "/no/such/folder"])
    assert judge._import_folders() == [library.resolve()]
