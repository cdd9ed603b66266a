"""Small shared helpers: seeding and atomic writes (a crash mid-write never leaves a half-written result)."""

from __future__ import annotations

import atexit
import errno
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so that the same seed gives the same numbers on CPU."""
    import numpy as np  # imported here so that torch-free tools (grading) can use this module cheaply
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` in the block (None: as they are; code in it may set them), the caller's
    count after, also when the block raises."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set in the block (what a process started inside inherits: a notebook's kernel,
    the comparison's workers), then each of them as it was before, also when the block raises."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else the nearest folder above it that does (the root at last): where anything made at
    ``path`` would have to start. A path under a folder that cannot be searched counts as missing (os.path.exists),
    where ``Path.exists`` raises."""
    return next((p for p in (path, *path.parents) if os.path.exists(p)), Path(path.anchor))


def leads_through_loop(path: str | Path) -> bool:
    """Whether ``path`` leads through a loop of symbolic links (``a -> b``, ``b -> a``; or ``a -> a``): it exists for
    no call (``os.path.exists`` says False), and a write through it fails."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one rename.

    Readers see the old file or the new one, never half of one; if the block raises, ``path`` is untouched
    (:func:`atomic_files` of one file).
    """
    with atomic_files([path]) as (tmp,):
        yield tmp


@contextmanager
def atomic_files(paths: list[str | Path]) -> Iterator[list[Path]]:
    """:func:`atomic_file` for files that belong together (a run's results, its table, its figure): yield one
    temporary path beside each of ``paths``; when the block succeeds they replace their paths one after another.

    If the block raises, no path is touched. If an interrupt (Ctrl-C) or an error comes while they replace their
    paths, the files already replaced get their earlier contents back (kept as hard links until the end), so the set
    is the earlier one or the new one, never a mix. Temporary files that a killed run left (SIGKILL: no ``except``
    ran) go at the next call.
    """
    paths = [Path(os.path.realpath(p)) for p in paths]  # a symbolic link stays: the file it points to is replaced
    tmps: list[Path] = []
    kept: dict[Path, Path | None] = {}  # path -> a hard link to its earlier contents (None: it had none)
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(path)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
            os.close(fd)
            tmps.append(Path(name))
        yield list(tmps)
        for tmp in tmps:
            os.chmod(tmp, _file_mode())  # mkstemp makes 0600; give the file the usual permissions
        for path, tmp in zip(paths, tmps, strict=True):
            kept[path] = _hard_link(path, tmp.with_suffix(".old")) if path.exists() else None
            os.replace(tmp, path)
        for link in kept.values():  # the new set is in place: the earlier contents go
            if link is not None:
                link.unlink(missing_ok=True)
    except BaseException:
        for path, tmp in zip(paths, tmps, strict=False):
            if path not in kept:  # the swap had not reached it
                continue
            earlier = kept.pop(path)
            if tmp.exists():  # not replaced yet: the link is a second name of what it holds (renaming one onto the
                if earlier is not None:  # other would do nothing and keep both)
                    earlier.unlink()
            elif earlier is not None:
                os.replace(earlier, path)  # its earlier contents back
            else:  # new (nothing before) and already in place
                path.unlink(missing_ok=True)
        raise
    finally:  # (a second Ctrl-C in the loop above leaves an earlier file not put back as a hidden .old beside it)
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _hard_link(path: Path, link: Path) -> Path:
    """``link`` made a second name of ``path``'s contents (a copy where the file system has no hard links)."""
    try:
        os.link(path, link)
    except OSError:
        shutil.copy2(path, link)
    return link


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(obj: object, sort_keys: bool = True) -> str:
    """``obj`` as the indented UTF-8 JSON that the package writes."""
    return json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | Path, obj: object, sort_keys: bool = True) -> None:
    """``atomic_write_text`` of ``obj`` as indented UTF-8 JSON (:func:`json_text`)."""
    atomic_write_text(path, json_text(obj, sort_keys))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; when the block succeeds it takes the place of ``path``.

    Everything a run writes goes into the temporary directory, so an interrupted or failed run (an exception, a
    Ctrl-C, also one between the two renames that swap the folders) leaves ``path`` exactly as it was and removes the
    temporary directory; a finished one leaves only the new contents (whatever ``path`` held before is deleted: check
    with :func:`check_replaceable` first). A run killed outright between the renames leaves the earlier folder aside;
    the next call puts it back before it starts.
    """
    path = Path(os.path.realpath(path))  # "results/." has the parent "results", not "."; a link stays, its folder
    path.parent.mkdir(parents=True, exist_ok=True)  # is replaced
    _remove_abandoned(path)
    prefix = f".{path.name}.{os.getpid()}."  # the owner's process id: a later run can tell an abandoned folder
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if path.exists() or path.is_symlink():  # a link still there after realpath: a loop of links, replaced too
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".old"))
            os.replace(path, old / "x")
        os.replace(tmp, path)
    except BaseException as e:  # a Ctrl-C between the two renames: back to the state before the run, whichever came
        if not tmp.exists():  # the new run had already taken path's place
            os.replace(path, tmp)
        if old is not None and (old / "x").exists():
            os.replace(old / "x", path)
        if old is not None:
            old.rmdir()  # empty now (if a second Ctrl-C came first, the next run puts the earlier one back)
        if isinstance(e, OSError):  # the swap itself failed: keep the finished run where it is, and say where
            raise OSError(e.errno, f"{e.strerror}; the finished run is in {tmp}, and is deleted by the next run "
                                   f"into {path.name}", e.filename) from e
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        try:
            shutil.rmtree(old, ignore_errors=True)
        except KeyboardInterrupt:  # the new run is in place, as the caller goes on to say; what is left of the
            pass  # earlier one beside it goes at the next run (_remove_abandoned)


def _remove_abandoned(path: Path) -> None:
    """Delete what :func:`atomic_dir` or :func:`atomic_files` left beside ``path`` in a run that was killed outright
    (SIGKILL, a power cut: no ``except`` ran): its ``.NAME.PID.*.tmp``/``.old`` folders and files whose process no
    longer runs on this machine. An ``.old`` that holds the earlier contents while ``path`` is gone (killed between
    two renames) is put back in ``path``'s place: it is the only copy of them."""
    form = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.(tmp|old)")  # mkstemp's part has no dot
    for found_path in path.parent.glob(f".{glob_escape(path.name)}.*"):
        found = form.fullmatch(found_path.name)
        if not found or _running(int(found[1])):
            continue
        earlier = found_path / "x" if found_path.is_dir() else found_path
        if found[2] == "old" and earlier.exists() and not path.exists():
            os.replace(earlier, path)
        if found_path.is_dir():
            shutil.rmtree(found_path, ignore_errors=True)
        else:
            found_path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (its leftovers are then its own, not to be cleaned up)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT there, not probe
        try:
            import psutil  # ipykernel's dependency, so there with Jupyter
        except ImportError:
            return True  # cannot tell: leave its leftovers alone
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    return True


def check_replaceable(path: str | Path, owned: Collection[str], what: str = "a run",
                      inputs: Mapping[str, str | Path | None] | None = None) -> None:
    """Refuse to let :func:`atomic_dir` replace ``path`` when that would delete something that is not an earlier
    output: a file, the current directory (or one holding it), a directory with names not in ``owned``, or one of
    the run's own ``inputs`` (``{"--model": path}``: an earlier run's policy or pairs, which the run reads and would
    delete while its metrics still named them).

    Raises:
        FileExistsError: the message names ``path``, what is in the way, and what to do.
    """
    path = Path(path)
    for name, given in (inputs or {}).items():
        if given is not None and Path(given).resolve().is_relative_to(path.resolve()):
            named = path.resolve() if path.name in ("", "..") else path  # `.` and `..`: the folder's own name
            beside = f"e.g. {named.with_name(named.name + '-next')}" if named.name else "e.g. a new subdirectory"  # `/`
            raise FileExistsError(f"{path} holds {name} {given}, and {what} replaces {path} as a whole ({what} would "
                                  f"delete its own input); pass another folder, {beside}")
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path}: is a file, expected a directory; pass another path")
    if Path.cwd().resolve().is_relative_to(path.resolve()):
        raise FileExistsError(f"{path}: is the current directory or holds it, which {what} replaces as a whole; "
                              "pass a new subdirectory")
    foreign = sorted((p.name, p.is_dir()) for p in path.iterdir() if p.name not in owned and not _clutter(p.name))
    if foreign:
        example = foreign[0][0] if len(foreign) == 1 else f"e.g. {foreign[0][0]}"
        raise FileExistsError(f"{path}: holds {_count_entries([d for _, d in foreign])} ({example}) that {what} does "
                              f"not write, and {what} replaces the directory as a whole; pass an empty or new "
                              f"directory, or move {'it' if len(foreign) == 1 else 'them'} out")


def _file_mode() -> int:
    """The permissions ``open`` gives a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def readable_by_all(folder: Path) -> None:
    """Give every file under ``folder`` the permissions a new file gets (0666 less the umask), as ``open`` would:
    some writers (safetensors) make theirs 0600."""
    mode = _file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _clutter(name: str) -> bool:
    """What a file manager or Jupyter leaves in any folder it opens (macOS's ``.DS_Store`` and ``._`` files, Windows's
    ``Thumbs.db`` and ``desktop.ini``, Jupyter's ``.ipynb_checkpoints``): not a user's work, replaced with the rest."""
    return name in {".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints"} or name.startswith("._")


def _count_entries(is_dir: list[bool]) -> str:
    """``[False, True, True]`` → ``"1 file and 2 folders"``: what a directory holds, each kind named."""
    files, folders = is_dir.count(False), is_dir.count(True)
    parts = [f"{n} {kind}{'s' if n > 1 else ''}" for n, kind in ((files, "file"), (folders, "folder")) if n]
    return " and ".join(parts)


def lr_at(step: int, steps: int, peak: float, warmup_frac: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay from ``peak`` towards ``floor * peak`` at the last step.

    The warm-up lasts ``int(warmup_frac * steps)`` steps, at least one, and step 0 runs at ``peak / warmup``: a run
    of fewer than ``2 / warmup_frac`` steps (40 at 5 %: PPO's, GRPO's and RLOO's iterations in the comparison, an
    online-DPO round) has no ramp and starts at the peak."""
    warmup = max(1, int(warmup_frac * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class KeptProcesses:
    """Long-lived helper processes (zygotes), one per environment: ``get(env)`` starts one with ``start(env)`` on first
    use, again when it has died or in place of ``replacing`` (one that failed; if another thread has replaced it
    already, that one is returned). Environments that differ only in variables for which ``volatile(name)`` is true
    share one. At most ``keep`` are kept, the oldest goes; all are closed when this process exits. A process has
    ``alive()`` and ``close()``."""

    def __init__(self, start, volatile, keep: int = 2):
        self.start, self.volatile, self.keep = start, volatile, keep
        self.held, self.lock = {}, threading.Lock()
        atexit.register(self.close_all)

    def get(self, env: dict, replacing=None):
        key = tuple(sorted((name, value) for name, value in env.items() if not self.volatile(name)))
        with self.lock:
            process = self.held.get(key)
            if process is not None and (process is replacing or not process.alive()):
                self.held.pop(key).close()
                process = None
            if process is None:
                while len(self.held) >= self.keep:
                    self.held.pop(next(iter(self.held))).close()
                process = self.held[key] = self.start(env)
            return process

    def close_all(self) -> None:
        with self.lock:
            while self.held:
                self.held.popitem()[1].close()
