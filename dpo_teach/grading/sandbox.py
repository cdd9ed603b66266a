"""The sandbox each submitted notebook runs in: Linux namespaces, entered by the notebook's process itself, plus
rlimits.

The process is a fork of the grader's zygote (``zygote.py``). :func:`isolate` does what util-linux's ``unshare --user
--map-root-user --pid --fork --kill-child --mount-proc --net --mount --ipc --uts`` did when each notebook was a new
Python: unshare(2), root mapped to the grader's user, a fork into the new PID namespace. No extra package and no root
are needed wherever unprivileged user namespaces are enabled (the default on Debian and Fedora; Ubuntu 24.04 and
later restrict them through AppArmor: ``sysctl kernel.apparmor_restrict_unprivileged_userns=0``, or grade as root in a
container); it works as root too (containers, CI). What the notebook gets (:func:`isolate`, then :func:`enter`):

- its own PID namespace: it sees no other process, so it cannot signal the grader or another submission, and when
  its first process ends the kernel kills every process it started (the grader kills the process that waits for it
  outside the namespace, and that death kills the first process: ``PR_SET_PDEATHSIG``);
- no network (its own network namespace, loopback only), its own IPC and host name;
- a read-only view of every file system, in which the course's folder shows only what a notebook needs (the
  package, the student notebooks, the Python environment and the cache, :func:`covered`): everything else there
  (tests, bundles, masters, ``.git``, ``results/``) and the other submissions and the grades are covered by empty
  file systems; the temporary folder, people's homes and the folders where daemons listen on Unix sockets
  (``/run``, :data:`PRIVATE_FOLDERS`) are empty ones but for what the notebook needs there (:func:`cover`: another
  copy of the course in /tmp or in a home stays out of view, and no socket of the machine's, Docker's included, can be
  reached); ``/dev`` holds only :data:`DEVICES` (no disk in view), read-only too (they work; no node can be made or
  deleted);
- one private writable folder (a fresh tmpfs over the job's folder) for its home, temporary files and working
  copy, and its own ``/dev/shm``;
- after the set-up it drops every privilege over these mounts (a second, unmapped user namespace), so it cannot
  undo them; then rlimits on memory, file size and CPU time, and a seccomp filter (:func:`no_unix_sockets`): no Unix
  socket, so no daemon's socket connects wherever it lies in view;
- of the grader's environment variables, only those a notebook needs (:func:`notebook_environment`): no token or key
  that the grader holds in a variable reaches it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no rlimits (and no grading: grade.py refuses); the student's grader cell still imports
    resource = None

LINUX = sys.platform.startswith("linux")  # namespaces and /proc; elsewhere no sandbox (``unavailable_reason``)
_CLONE_NEWUSER = 0x10000000
# isolate()'s namespaces: user, mount, PID, network, IPC, host name
_CLONE_ALL = _CLONE_NEWUSER | 0x00020000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000
_PR_SET_PDEATHSIG = 1
# The namespace's own /proc stays as mounted and writable; every other mount is remounted read-only, /dev's
# (DEVICES) too: its device nodes still work (a read-only mount stops writes to files, not to devices), but no notebook
# can create, rename or delete a node (as root it could delete the machine's /dev/null for every later row).
KEEP_WRITABLE = ("/proc",)


class SandboxUnavailable(RuntimeError):
    """This machine cannot run a notebook in the sandbox; the message says why and what to do."""


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when the sandbox works here, else why not (checked once per process: a new Python enters the
    namespaces, as every notebook's process does)."""
    if not LINUX:
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    try:
        probe = subprocess.run([sys.executable, "-c", "from dpo_teach.grading import sandbox; sandbox.isolate()"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the sandbox's probe could not start: {e}"
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1:] or ["no message"]
        return (f"the kernel refused to create namespaces ({detail[0]}); unprivileged user namespaces may be off "
                "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 and later AppArmor restricts them: "
                "sysctl kernel.apparmor_restrict_unprivileged_userns=0; or run the grader in a container)")
    return None


_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 1 << 14, 1 << 18
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
# a remount inside a user namespace must keep the flags the mount has (the kernel locks them)
_KEPT = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
         "relatime": 1 << 21}


def _mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None):
    """mount(2) itself (no `mount` process per call: a sandbox is set up in milliseconds)."""
    libc = ctypes.CDLL(None, use_errno=True)
    encode = (lambda x: None if x is None else x.encode())  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        error = ctypes.get_errno()
        raise SandboxUnavailable(f"mount {fstype or source} on {target}: {os.strerror(error)}")


def isolate(grader: int | None = None) -> None:
    """What ``unshare --user --map-root-user --pid --fork --kill-child --mount-proc --net --mount --ipc --uts`` does,
    done by a freshly forked, single-threaded process itself (``zygote.py``): new namespaces with root mapped to the
    caller's user, then a fork. The child, the new PID namespace's first process, returns and goes on (to
    :func:`enter`); this process only waits for it and exits with its status, and when this process is killed the
    child is killed too, and with it the whole namespace.

    ``grader``: the read end of a pipe whose write end only the grader holds (``zygote.lifeline``). This process then
    also ends the child when the grader ends, however it ends (:func:`_wait`); the child does not keep it."""
    uid, gid, libc = os.geteuid(), os.getegid(), ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_ALL) != 0:
        raise SandboxUnavailable(f"unshare(2): {os.strerror(ctypes.get_errno())}")
    for name, text in [("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")]:
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    lifeline, held = os.pipe()  # open as long as this process lives
    # Opened before the fork: the child shares this mount namespace and covers /dev at once (``enter``), so an open
    # after the fork could find /dev empty on a busy machine (it did, once in a thousand tests).
    null = os.open(os.devnull, os.O_RDWR)
    child = os.fork()
    if child:
        os.close(lifeline)
        for fd in (0, 1, 2):  # the runner's channels stay with the runner alone: its end is the grader's EOF
            os.dup2(null, fd)
        os._exit(_wait(child, grader))
    os.close(held)
    os.close(null)
    if grader is not None:
        os.close(grader)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:  # --kill-child: this process dies with its parent
        raise SandboxUnavailable(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if select.select([lifeline], [], [], 0)[0]:  # EOF already: the parent was killed before the line above
        os._exit(1)
    os.close(lifeline)
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)  # --mount-proc: this namespace's own /proc
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)


def _wait(child: int, grader: int | None) -> int:
    """The exit status of ``child``, once it has ended. Where ``grader`` hangs up first (the grader ended without
    ending this notebook: SIGTERM, SIGKILL, out of memory), the child is killed then, and with it its namespace: a
    notebook that swallows every alarm while it sleeps, which the grader would kill at its time limit, no longer
    outlives a grader that is gone."""
    if grader is not None:
        poller = select.poll()
        poller.register(grader, 0)  # a hang-up is reported without asking; the grader never writes
        tick = None
        try:
            poller.register(os.pidfd_open(child), select.POLLIN)  # readable once the child has ended
        except (AttributeError, OSError):  # a kernel before 5.3: look every second
            tick = 1000
        while os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # not reaped: below
            if any(fd == grader for fd, _ in poller.poll(tick)):
                os.kill(child, signal.SIGKILL)
                break
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) & 0xFF


MEMORY_MB = 6144  # a notebook's address space (RLIMIT_AS); the course's notebooks need about 2 GiB


def memory_limit_mb(wanted: int = MEMORY_MB) -> int:
    """The address space a sandboxed notebook gets: ``wanted`` MiB, or the machine's own hard limit where it is lower
    (``ulimit -Hv``; :func:`enter` cannot raise it)."""
    if resource is None:
        return wanted
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard >> 20)


def process_limit() -> int | None:
    """RLIMIT_NPROC for a notebook started by this user: what the user runs now plus 256 (it counts every process
    of the user's real uid, in every namespace); None for root, whom the kernel does not hold to it, and off Linux
    (no sandbox there, and no ``/proc`` to count with)."""
    if not LINUX or os.geteuid() == 0:
        return None
    mine = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == os.geteuid())
    return mine + 256


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def outermost(paths: list[str]) -> list[str]:
    """``paths`` without those inside another of them: once a folder is covered, what was inside it is gone (a
    mount on ``course/autograder`` after one on ``course`` would fail: no such folder)."""
    chosen: list[Path] = []
    for path in sorted({Path(p) for p in paths}, key=lambda p: len(p.parts)):
        if not any(path == c or c in path.parents for c in chosen):
            chosen.append(path)
    return [str(p) for p in chosen]


def covered(root: Path, keep: list[Path]) -> list[str]:
    """What to cover under ``root`` so that only ``keep`` stays in view there: every file and folder of ``root``
    except the kept ones, the folders on the way to them and the symbolic links (a link is covered, or not, where it
    points). Nothing when ``root`` is itself inside a kept folder (an installed package's ``site-packages``).

    The grader keeps the package, the student notebooks, the Python environment, the cache and the temporary
    folder: whatever else the course's folder holds (masters, bundles, tests, ``.git``, ``results/`` with its
    Gradescope bundles and grades) a notebook never needs, so it never sees it."""
    root, keep = Path(root).resolve(), [Path(k).resolve() for k in keep]
    if any(root == k or k in root.parents for k in keep):
        return []
    hidden = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink() or any(entry == k or k in entry.parents for k in keep):
            continue
        if any(entry in k.parents for k in keep):
            hidden += covered(entry, keep)
        else:
            hidden.append(str(entry))
    return hidden


# The folders a submission has no business reading, covered like the temporary folder (:func:`cover`): people's homes
# (another copy of the course, keys, tokens) and the folders where the machine's daemons listen on Unix sockets. A
# socket connects on a read-only mount and across network namespaces: through the Docker daemon's /run/docker.sock a
# notebook would start a container as root on the machine.
PRIVATE_FOLDERS = ("/home", "/root", "/run", "/var/run", "/var/tmp", "/mnt", "/media", "/srv")


# What a notebook's process keeps of the grader's environment variables: where programs, libraries and the course's
# files are, the locale, and the settings of Python, matplotlib, the thread libraries and the course (DPO_TEACH_*),
# each by its own name or prefix. Nothing else: a token or a key held in a variable (HF_TOKEN, AWS_SECRET_ACCESS_KEY,
# GITHUB_TOKEN, a CI's secret variables) would be one `print(os.environ)` or one error message away from the report
# that a student reads. Python's own are PYTHON and capitals (PYTHONPATH, PYTHONHASHSEED), not PYTHON_PYPI_TOKEN.
KEPT_VARIABLES = frozenset({
    "PATH", "HOME", "TMPDIR", "TEMP", "TMP", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "VIRTUAL_ENV",
    "CONDA_PREFIX", "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLBACKEND", "MPLCONFIGDIR",
    "MATPLOTLIBRC", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
    *(f"LC_{c}" for c in ("ALL", "CTYPE", "NUMERIC", "TIME", "COLLATE", "MONETARY", "MESSAGES", "PAPER", "NAME",
                          "ADDRESS", "TELEPHONE", "MEASUREMENT", "IDENTIFICATION"))})
KEPT_PREFIXES = ("DPO_TEACH_", "OMP_", "MKL_", "OPENBLAS_", "KMP_")
_PYTHONS_OWN = re.compile(r"PYTHON[A-Z]+")


def notebook_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that a sandboxed notebook's process gets: :data:`KEPT_VARIABLES`, Python's own
    and those that begin with one of :data:`KEPT_PREFIXES`. The grader starts its zygote with them alone, so that
    nothing else is in the memory a notebook's process inherits or in its ``/proc/self/environ`` either."""
    return {name: value for name, value in environ.items()
            if name in KEPT_VARIABLES or name.startswith(KEPT_PREFIXES) or _PYTHONS_OWN.fullmatch(name)}


# The devices a notebook may open: /dev is a tmpfs with these bound back from the machine's (where it has them), their
# usual links and /dev/shm. The rest (disks, /dev/kvm, /dev/kmsg, /dev/fuse) is out of view: a grader that runs as
# root would otherwise hand every notebook the raw disk, and with it every file, hidden tests included.
DEVICES = ("null", "zero", "full", "random", "urandom")
DEVICE_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                "stderr": "/proc/self/fd/2"}


# Where a home is no home (a system user's, or $HOME pointed at a system folder): covering it would hide what every
# notebook needs (/dev, /usr), so such a home is left as it is
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys",
                  "/usr", "/var", "/opt")


def private_folders() -> list[str]:
    """What the sandbox covers besides the temporary folder, as the grader (not yet in the sandbox) finds it:
    :data:`PRIVATE_FOLDERS` and the grading user's own home wherever it lies (``$HOME`` and the password file's),
    those that exist, resolved (``/var/run`` is ``/run``) and outermost; not ``/``, none inside the temporary folder
    (covered already), and no home that is, holds or lies inside a system folder but ``/var`` and ``/opt``
    (``/var/lib/jenkins`` is covered, ``/usr/sbin`` or ``/dev`` is not: :data:`SYSTEM_FOLDERS`)."""
    homes = [os.environ.get("HOME", "")]
    with contextlib.suppress(ImportError, KeyError):  # KeyError: a user without a password-file entry
        import pwd

        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    tmp = Path(tempfile.gettempdir()).resolve()
    found = {Path(f).resolve() for f in (*PRIVATE_FOLDERS, *filter(_is_home, homes)) if f and os.path.isdir(f)}
    return outermost([str(f) for f in found if f != Path("/") and f != tmp and tmp not in f.parents])


def _is_home(path: str) -> bool:
    """Whether ``path`` can be covered as a home: a folder that is not a system folder, holds none and lies in none
    (but ``/var`` and ``/opt``, where services have their homes)."""
    if not path or not os.path.isdir(path):
        return False
    home = Path(path).resolve()
    for system in map(Path, SYSTEM_FOLDERS):
        inside = system in home.parents and system not in (Path("/var"), Path("/opt"))
        if home == system or home in system.parents or inside:
            return False
    return True


def cover(folder: Path, keep: list[str], mode: str) -> list[Path] | None:
    """An empty tmpfs over ``folder``, with only what a notebook needs there bound back (the ``keep`` paths inside it:
    a course folder, its environment and cache when they lie there, and the symbolic links on the way to them, a
    ``~/venv`` that links to ``/opt/venv``); returns the paths bound back, or None where ``folder`` is ``/`` or
    missing.

    Raises:
        SandboxUnavailable: a kept path is ``folder`` or holds it (``DPO_TEACH_CACHE=/home``): covering ``folder``
            would hide it, and keeping it would show the whole folder.
    """
    folder, resolved = Path(folder).resolve(), [Path(k).resolve() for k in keep]
    if folder == Path("/") or not folder.is_dir():
        return None
    holding = [str(k) for k in resolved if folder == k or k in folder.parents]
    if holding:
        raise SandboxUnavailable(f"{holding[0]} is kept in view for the notebooks (the cache, the Python environment) "
                                 f"and holds {folder}, which the sandbox empties: move it into a folder of its own")
    links = [link for k in keep for link in _links_inside(Path(os.path.abspath(k)), folder)]
    inside = outermost([str(k) for k in resolved if folder in k.parents])
    opened = [(path, os.open(path, os.O_PATH)) for path in inside if os.path.exists(path)]
    _mount("tmpfs", str(folder), "tmpfs", 0, f"size=1m,mode={mode}")
    for path, fd in opened:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)
    for path, target in links:
        if not os.path.lexists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(target, path)
    return [Path(path) for path, _ in opened]


def _links_inside(path: Path, folder: Path) -> list[tuple[str, str]]:
    """The symbolic links inside ``folder`` on the way to ``path`` (an absolute path, not resolved), each with what
    it points to: following ``path`` from ``/``, a link is read and the walk goes on from where it leads."""
    links, at = [], Path("/")
    for part in path.parts[1:]:
        at = at / part
        if at.is_symlink():
            if folder in at.parents:
                links.append((str(at), os.readlink(at)))
            at = at.resolve()
    return links


def shadowed(point: str, emptied: list[Path], bound: list[Path]) -> bool:
    """Whether the mount at ``point`` lies under a tmpfs that :func:`cover` put over one of the ``emptied`` folders,
    and was not ``bound`` back: nothing reaches it any more (a path there now names the tmpfs's own folder, or
    nothing)."""
    path = Path(point)
    return (any(e in path.parents for e in emptied)
            and not any(path == b or b in path.parents for b in bound))


def enter(private: str, hide: list[str], memory_mb: int, cpu_s: int, nproc: int | None, file_mb: int = 256,
          keep: list[str] = (), cover_too: list[str] = ()) -> None:
    """Inside the new namespaces, before any student code: the temporary folder and the ``cover_too`` folders
    (:func:`private_folders`) emptied but for ``keep`` (:func:`cover`), everything read-only, ``hide`` covered,
    ``private`` a fresh writable tmpfs; then drop the privilege to change mounts, and set rlimits (none above the
    machine's own hard limit for it).

    Each covered folder hides what lies in it, the job's ``private`` folder too where it lies there (a temporary
    folder in ``/run/user/N``): it is made again after the covers, and once more after ``/dev/shm``'s own tmpfs (a
    temporary folder in ``/dev/shm``)."""
    emptied, bound = [], []  # the folders a tmpfs now covers (not covered(), the course folder's list), what is back
    devices = [f"/dev/{d}" for d in DEVICES]
    folders = [(Path(tempfile.gettempdir()), "1777", list(keep)), *((Path(f), "0755", list(keep)) for f in cover_too),
               (Path("/dev"), "0755", devices)]
    for folder, mode, kept_there in folders:
        back = cover(folder, kept_there, mode)
        if back is not None:
            emptied.append(folder.resolve())
            bound += back
    for name, target in DEVICE_LINKS.items():
        os.symlink(target, f"/dev/{name}")
    os.makedirs("/dev/shm")  # its own tmpfs comes below
    os.makedirs(private, exist_ok=True)  # under a covered folder it is gone (the tmpfs over it comes below)
    mounts = {}  # mount point → its locked flags; where mounts are stacked (a covering tmpfs over the machine's /run)
    # the later line, the mount on top, wins: mountinfo lists mounts in the order they were made
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()  # id parent dev root mount-point options ...
        mounts[fields[4].replace("\\040", " ")] = sum(_KEPT.get(o, 0) for o in fields[5].split(","))
    for point, kept in sorted(mounts.items()):
        if shadowed(point, emptied, bound):  # under a covering tmpfs (a user's runtime folder in /run): out of reach
            continue
        if point == "/" or not point.startswith(KEEP_WRITABLE):
            _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | kept)
    for path in outermost(hide):  # an empty tmpfs over a folder, /dev/null over a file
        if Path(path).is_dir() and not Path(path).is_symlink():
            _mount("tmpfs", path, "tmpfs", 0, "size=1k,mode=0555")
        elif Path(path).is_file() and not Path(path).is_symlink():
            _mount("/dev/null", path, None, _MS_BIND)
    _mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=64m")
    os.makedirs(private, exist_ok=True)
    _mount("tmpfs", private, "tmpfs", 0, f"size={max(64, file_mb * 2)}m,mode=0777")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:  # from here on no capability over the mounts above
        raise SandboxUnavailable(f"could not drop privileges (errno {ctypes.get_errno()})")
    limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, cpu_s),
              (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_CORE, 0)]
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, nproc))  # a fork bomb stops here
    for which, value in limits:
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:  # the machine's own limit is lower (ulimit -H): it holds for every
            value = min(value, hard)  # process anyway, and no process may raise it (ValueError, every row an error)
        resource.setrlimit(which, (value, value))
    no_unix_sockets()


# socket(2)'s and socketpair(2)'s numbers and the kernel's name for the architecture, where the filter below knows
# them (elsewhere the folders covered above are the whole defence against a daemon's socket)
_SOCKET_SYSCALLS = {"x86_64": (41, 53, 0xC000003E), "aarch64": (198, 199, 0xC00000B7),
                    "riscv64": (198, 199, 0xC00000F3)}
_IO_URING_SETUP = 425  # the same number on every architecture; io_uring makes sockets without socket(2)
_AF_INET, _AF_INET6, _AF_NETLINK, _SOCK_DGRAM, _EPERM = 2, 10, 16, 2, 1


def no_unix_sockets() -> None:
    """A seccomp filter, for this process and all it starts: ``socket(2)`` makes only internet and netlink sockets
    (the network namespace holds only a loopback), a ``socketpair`` is a stream or packet pair, never a datagram
    pair (which could send to a datagram socket by its path: ``/dev/log``), and ``io_uring_setup`` fails, all with
    EPERM; a system call of another ABI (32-bit ``int 0x80``) ends the process, and one of x32 fails. Everything else
    is allowed.

    The network namespace keeps a notebook off the network and off abstract sockets, and :func:`cover` hides the
    folders where daemons keep their sockets, but a Unix socket anywhere else in view connects, read-only mount or
    not, and a vsock reaches the host of a virtual machine. A stream pair of its own still works (Python's
    ``multiprocessing`` and ``asyncio`` use one); what needs a Unix socket by name does not (a ``multiprocessing``
    manager, a forkserver, a torch ``DataLoader`` with workers: keep ``num_workers=0``)."""
    import platform

    machine = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    if machine not in _SOCKET_SYSCALLS or struct.calcsize("P") != 8:  # the kernel's machine; a 32-bit Python on it
        return  # makes its calls through the 32-bit ABI, which the filter would end
    nr_socket, nr_socketpair, arch = _SOCKET_SYSCALLS[machine]
    ld, jeq, jge, ret, and_ = 0x20, 0x15, 0x35, 0x06, 0x54  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K, ALU|AND|K
    allow, deny, kill = 0x7FFF0000, 0x00050000 | _EPERM, 0x80000000  # SECCOMP_RET_ALLOW, _ERRNO(EPERM), _KILL_PROCESS
    program = [  # (code, jump if true, jump if false, k); a jump skips that many instructions
        (ld, 0, 0, 4),  # 0: seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, kill),  # another ABI
        (ld, 0, 0, 0),  # 3: seccomp_data.nr
        (jge, 11, 0, 0x40000000),  # 4: x32's numbers (x86_64) → deny
        (jeq, 10, 0, _IO_URING_SETUP),  # → deny
        (jeq, 5, 0, nr_socketpair),  # → 12
        (jeq, 0, 7, nr_socket),  # 7: else → allow
        (ld, 0, 0, 16),  # 8: seccomp_data.args[0], its low 32 bits: the address family
        (jeq, 5, 0, _AF_INET), (jeq, 4, 0, _AF_INET6), (jeq, 3, 4, _AF_NETLINK),  # → allow, else → deny
        (ld, 0, 0, 24),  # 12: seccomp_data.args[1], low bits: the type (SOCK_CLOEXEC and SOCK_NONBLOCK above 0xf)
        (and_, 0, 0, 0xF),
        (jeq, 1, 0, _SOCK_DGRAM),  # → deny
        (ret, 0, 0, allow),  # 15
        (ret, 0, 0, deny),  # 16
    ]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(program))(*[Filter(*line) for line in program])
    prog = Program(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if (libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0
            or libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0):
        raise SandboxUnavailable(f"could not install the seccomp filter: {os.strerror(ctypes.get_errno())}")
