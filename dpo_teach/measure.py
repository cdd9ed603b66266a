"""Measuring a run while it trains: wall and CPU time, peak resident memory, the machine's load, model sizes.

Process-level measures for the comparison's cost table (:mod:`dpo_teach.compare`). CPU seconds, unlike wall
seconds, do not depend on what else the machine runs; the load average says how busy it was.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc; psutil elsewhere if installed; else None)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except Exception:  # noqa: BLE001 - no way to measure: report None
            return None


def _peak_rss_bytes() -> int | None:
    """This process's peak resident memory as the kernel counts it (Linux: VmHWM in /proc/self/status), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Set the kernel's peak of this process back to its resident memory now (Linux >= 4.0: ``5`` into
    /proc/self/clear_refs). False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss_bytes() is not None


class PeakMemory:
    """Peak resident memory above the level at entry.

    On Linux the kernel keeps each process's peak: it is reset at entry and read at exit, so every spike counts, and
    measuring costs nothing while the block runs. Elsewhere (``kernel=False``, or no /proc) a background thread
    samples the resident memory every ``interval_s``; it misses spikes shorter than that, and its CPU time counts in
    the process's. Freed heap is handed back to the OS first (glibc ``malloc_trim``), so that one run's leftovers do
    not hide the next run's peak. A process-level measure: it includes everything Python and torch allocate meanwhile;
    blocks must not be nested (the kernel's peak is one per process).
    """

    def __init__(self, interval_s: float = 0.003, kernel: bool = True):
        self.interval_s, self.kernel, self.peak_mb = interval_s, kernel, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._base = self._peak = _rss_bytes()
        if not (self.kernel and _reset_peak()):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    @property
    def sampled(self) -> bool:
        """True when the peak comes from the sampling thread, not from the kernel."""
        return self._thread is not None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and self._peak is not None:
                self._peak = max(self._peak, rss)

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            peak = _peak_rss_bytes()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak or 0, _rss_bytes() or 0)
        if self._base is not None and peak is not None:
            self.peak_mb = round((peak - self._base) / 2**20, 1)


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """Yield a dict that holds ``wall_s`` and ``cpu_s`` (this process's CPU time) of the block once it ends."""
    times: dict[str, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield times
    finally:
        times["wall_s"], times["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages: how busy the cores were (other work slows wall times)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def n_params(*models) -> int:
    """Parameters held by ``models`` together."""
    return sum(p.numel() for m in models for p in m.parameters())
