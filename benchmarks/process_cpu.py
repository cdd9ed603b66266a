"""Where a command's CPU time goes, by kind of process: notebook kernels, the grader's sandbox, test workers, ...

    with ProcessCPU() as cpu:
        subprocess.run(["make", "test"])
    cpu.by_kind()   # {"notebook kernels": 152.0, "grading sandbox (zygotes, forks)": 147.0, ...} CPU seconds
    cpu.busy()      # CPU seconds / (wall seconds × cores): 1.0 when every core was busy throughout

A background thread reads /proc every ``interval_s`` seconds: each process's user + system time (all its threads) and
its command line, keeping the last value seen. It counts the descendants of ``root`` (by default this process) that
started while it ran: a process that lives less than ``interval_s`` may be missed, so may one whose parent ended
before it was first seen, and one that ends loses the time since its last sample (all small next to the suite's
minutes).
Linux only: elsewhere ``available`` is False and nothing is measured. ``bench_test_suite.py`` reports it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PROC = Path("/proc")
# kind -> what its processes run (any of these in ``what_runs``), in order: the first kind that matches counts.
# "What runs" is the program's file name, then the module after -m, the script's file name or the code after -c, so
# that a checkout in /tmp/dpo-teach-bench-test-x/ is not taken for a dpo-teach command.
KINDS = {
    "notebook kernels": ("ipykernel_launcher", "dpo_teach.warm_kernel"),  # cold, and warm (launcher, zygote, forks)
    "grading sandbox (zygotes, forks)": ("dpo_teach.grading",),
    "multiprocessing workers (the comparison's seeds)": ("multiprocessing",),
    "pytest-xdist workers (tests run in process)": ("exec(eval(sys.stdin.readline()))",),
    "pytest (main process)": ("pytest",),
    "browser (the site's test)": ("chrom", "headless_shell", "node cli.js"),  # the last: Playwright's driver
    "installers (uv, pip, bytecode)": ("compileall", "uv ", "python pip", "__pip-runner__", "pip_install.py"),
    "jupyter servers": ("jupyter",),
    "dpo-teach commands": ("dpo_teach", "dpo-teach"),
    "other Python processes": ("python",),
}


def what_runs(argv: list[str]) -> str:
    """``"python ipykernel_launcher"``, ``"chromium"``, ``"python import sys;exec(...)"``: a process's program (its
    file name) and what it runs (-m's module, -c's code, or the script's file name)."""
    if not argv:
        return ""
    entry, args = "", iter(argv[1:])
    for arg in args:
        if arg in ("-W", "-X"):  # options with a value of their own
            next(args, "")
        elif arg in ("-m", "-c"):
            entry = next(args, "")
            break
        elif not arg.startswith("-"):
            entry = os.path.basename(arg)  # a script, or a program's first argument
            break
    return f"{os.path.basename(argv[0])} {entry}".strip()


def _argv(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:  # it ended meanwhile
        return []


def kind_of(argv: list[str]) -> str:
    """The kind a process with this command line is counted as (``KINDS``; "other" for anything else)."""
    runs = what_runs(argv)
    return next((kind for kind, needles in KINDS.items() if any(n in runs for n in needles)), "other")


class ProcessCPU:
    """CPU seconds of every process started while the block runs, by kind (see the module's docstring)."""

    def __init__(self, interval_s: float = 0.5, root: int | None = None):
        self.interval_s, self.root = interval_s, root or os.getpid()
        self.available = (PROC / "self" / "stat").is_file()
        self.processes: dict[tuple[int, int], dict] = {}  # (pid, start time) -> {"argv", "cpu_s"}
        self.wall_s = 0.0
        self._hz = os.sysconf("SC_CLK_TCK") if self.available else 100
        self._stop = threading.Event()

    def __enter__(self) -> ProcessCPU:
        self._start, self._t0 = self._clock_ticks(), time.perf_counter()
        if self.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._sample()
        self.wall_s = time.perf_counter() - self._t0

    def _clock_ticks(self) -> int:
        """Now, in the clock ticks since boot that /proc/PID/stat gives a process's start time in."""
        try:
            return int(float((PROC / "uptime").read_text().split()[0]) * self._hz)
        except (OSError, ValueError, IndexError):
            return 0

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        seen = {}  # pid -> (parent pid, start time, CPU seconds), every process alive now
        for entry in os.scandir(PROC):
            if entry.name.isdigit():
                try:
                    stat = (PROC / entry.name / "stat").read_text()
                except OSError:  # it ended meanwhile
                    continue
                fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": proc(5)'s field 3 is fields[0]
                cpu_s = (int(fields[11]) + int(fields[12])) / self._hz  # utime + stime, every thread
                seen[int(entry.name)] = (int(fields[1]), int(fields[19]), cpu_s)
        by_start = sorted(seen.items(), key=lambda item: (item[1][1], item[0]))  # parents before their children
        for pid, (ppid, started, cpu_s) in by_start:
            key = (pid, started)
            if key not in self.processes:
                parent = (ppid, seen[ppid][1]) if ppid in seen else None
                if started < self._start or not (ppid == self.root or parent in self.processes):
                    continue  # not started by the block (or its parent ended before it was seen)
                self.processes[key] = {"argv": [], "cpu_s": 0.0}
            # What it runs now: a fork execs its program after it is first seen, and a process caught inside execve
            # shows an empty command line; the last one read stands (empty only if every read came too early or late)
            argv = _argv(pid)
            if argv:
                self.processes[key]["argv"] = argv
            self.processes[key]["cpu_s"] = max(self.processes[key]["cpu_s"], cpu_s)

    def total(self) -> float:
        return sum(p["cpu_s"] for p in self.processes.values())

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per kind, the largest first."""
        kinds: dict[str, float] = {}
        for p in self.processes.values():
            kind = kind_of(p["argv"])
            kinds[kind] = kinds.get(kind, 0.0) + p["cpu_s"]
        return {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}

    def busy(self, cores: int | None = None) -> float | None:
        """CPU seconds over what the cores could give in the block's wall time (1.0: every core busy throughout)."""
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return round(self.total() / (self.wall_s * cores), 3) if self.available and self.wall_s > 0 else None

    def largest(self, n: int = 20) -> list[dict]:
        """The ``n`` processes that used the most CPU: what each ran (``what_runs``, cut to 100 characters)."""
        top = sorted(self.processes.values(), key=lambda p: -p["cpu_s"])[:n]
        return [{"cpu_s": round(p["cpu_s"], 1), "kind": kind_of(p["argv"]), "runs": what_runs(p["argv"])[:100]}
                for p in top]

    def as_dict(self) -> dict:
        return {"cpu_s": round(self.total(), 1), "busy": self.busy(), "by_kind": self.by_kind(),
                "largest": self.largest(), "sampled_every_s": self.interval_s} if self.available else {"cpu_s": None}
