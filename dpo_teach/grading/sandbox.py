"""The sandbox each submitted notebook runs in: Linux namespaces through util-linux's ``unshare``, plus rlimits.

Why ``unshare``: it ships with util-linux, so it is on every Linux machine (bubblewrap is a separate package that
Debian does not install by default), it works without root wherever unprivileged user namespaces are enabled (the
default on Debian, Ubuntu and Fedora) and as root (containers, CI), and it starts in about 5 ms. What the notebook
gets (``unshare`` flags, then :func:`enter` inside):

- its own PID namespace: it sees no other process, so it cannot signal the grader or another submission, and when
  its first process ends the kernel kills every process it started (``--kill-child`` ties that to the grader's
  kill of ``unshare``);
- no network (its own network namespace, loopback only), its own IPC and host name;
- a read-only view of every file system: the course, the package, the Python environment, the cache; the folders
  that hold tests, bundles, masters, other submissions and the grades are covered by empty file systems;
- one private writable folder (a fresh tmpfs over the job's folder) for its home, temporary files and working
  copy, and its own ``/dev/shm``;
- after the set-up it drops every privilege over these mounts (a second, unmapped user namespace), so it cannot
  undo them; then rlimits on memory, file size and CPU time.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

UNSHARE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc", "--net",
           "--mount", "--ipc", "--uts"]
_CLONE_NEWUSER = 0x10000000
KEEP_WRITABLE = ("/proc", "/dev")  # the namespace's own /proc; devices (/dev/shm gets its own tmpfs)


class SandboxUnavailable(RuntimeError):
    """This machine cannot run a notebook in the sandbox; the message says why and what to do."""


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when the sandbox works here, else why not (checked once per process by starting an empty one)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if shutil.which("unshare") is None:
        return "util-linux's `unshare` is not on PATH (Debian/Ubuntu: apt-get install util-linux)"
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare` could not start: {e}"
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1:] or ["no message"]
        return (f"`unshare` refused to create namespaces ({detail[0]}); unprivileged user namespaces may be off "
                "(sysctl kernel.unprivileged_userns_clone=1, or run the grader in a container)")
    return None


def command() -> list[str]:
    """The prefix that starts a process in fresh namespaces (it then calls :func:`enter` itself)."""
    return list(UNSHARE)


_MS_RDONLY, _MS_REMOUNT, _MS_BIND = 1, 32, 4096
# a remount inside a user namespace must keep the flags the mount has (the kernel locks them)
_KEPT = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}


def _mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None):
    """mount(2) itself (no `mount` process per call: a sandbox is set up in milliseconds)."""
    libc = ctypes.CDLL(None, use_errno=True)
    encode = (lambda x: None if x is None else x.encode())  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        error = ctypes.get_errno()
        raise SandboxUnavailable(f"mount {fstype or source} on {target}: {os.strerror(error)}")


def process_limit() -> int | None:
    """RLIMIT_NPROC for a notebook started by this user: what the user runs now plus 256 (it counts every process
    of the user's real uid, in every namespace); None for root, whom the kernel does not hold to it."""
    if os.geteuid() == 0:
        return None
    mine = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == os.geteuid())
    return mine + 256


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def enter(private: str, hide: list[str], memory_mb: int, cpu_s: int, nproc: int | None, file_mb: int = 256) -> None:
    """Inside the new namespaces, before any student code: everything read-only, ``hide`` covered, ``private``
    a fresh writable tmpfs; then drop the privilege to change mounts, and set rlimits."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()  # id parent dev root mount-point options ...
        mounts[fields[4].replace("\\040", " ")] = sum(_KEPT.get(o, 0) for o in fields[5].split(","))
    for point, kept in sorted(mounts.items()):
        if point == "/" or not point.startswith(KEEP_WRITABLE):
            _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | kept)
    for path in [p for p in hide if Path(p).is_dir()]:
        _mount("tmpfs", path, "tmpfs", 0, "size=1k,mode=0555")
    for path in [p for p in hide if Path(p).is_file()]:
        _mount("/dev/null", path, None, _MS_BIND)
    _mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=64m")
    _mount("tmpfs", private, "tmpfs", 0, f"size={max(64, file_mb * 2)}m,mode=0777")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:  # from here on no capability over the mounts above
        raise SandboxUnavailable(f"could not drop privileges (errno {ctypes.get_errno()})")
    limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, cpu_s),
              (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_CORE, 0)]
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, nproc))  # a fork bomb stops here
    for which, value in limits:
        resource.setrlimit(which, (value, value))
