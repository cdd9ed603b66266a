"""The demo as a user runs it: wall time (π_ref built vs cached), peak memory, and its metrics over three seeds.

Each run is ``dpo-teach demo --quiet --seed S --out DIR`` in a child process whose reference cache
(``$DPO_TEACH_CACHE``) is a fresh temporary directory, so the first run of a seed builds π_ref. Peak memory is the
child's high-water resident set size (``VmHWM``), polled every 50 ms while it runs. Seed 0 runs twice:
first building π_ref (``demo_wall_s_build``), then loading it from the cache (``demo_wall_s_cached``).

Run alone: ``python benchmarks/bench_demo.py [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, summary

METRICS = ("reward_gain", "policy.fluency", "heldout_accuracy", "bt_ceiling", "policy.kl", "win_rate")
TARGETS = {"reward_gain": 0.4, "policy.fluency": 0.70, "heldout_accuracy": 0.78}  # acceptance: value ≥ target


def demo_command() -> list[str]:
    """The installed ``dpo-teach`` script next to this Python, or the module when it is not installed."""
    script = Path(sys.executable).parent / "dpo-teach"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dpo_teach.cli"]


def _resident_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (Linux ``VmHWM``), else its current RSS via psutil, in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - psutil missing, or the process has just exited
        return None


def run_demo(seed: int, out: Path, cache: Path, poll_s: float = 0.05) -> dict:
    """One ``dpo-teach demo`` child process. Returns wall seconds, peak RSS in MB and the metrics it wrote.

    The peak is polled from the child itself while it runs: the kernel's ``ru_maxrss`` of a child would also count
    this (larger) benchmark process, which the child briefly shares memory with before it starts the demo.
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DPO_TEACH_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = demo_command() + ["demo", "--quiet", "--seed", str(seed), "--out", str(out)]
    peak = 0.0
    with open(out / "stdout.txt", "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while child.poll() is None:
            peak = max(peak, _resident_mb(child.pid) or 0.0)
            time.sleep(poll_s)
        wall = time.perf_counter() - start
    if child.returncode != 0:
        tail = (out / "stdout.txt").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {child.returncode}:\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "wall_s": wall, "peak_rss_mb": peak, "metrics": metrics}


def lookup(metrics: dict, dotted: str):
    """``metrics["policy"]["kl"]`` for ``"policy.kl"``."""
    value = metrics
    for part in dotted.split("."):
        value = value[part]
    return value


def bench_demo(seeds: tuple[int, ...] = (0, 1, 2), verbose: bool = True) -> dict:
    """Run the demo for each seed (seed ``seeds[0]`` twice: built, then cached) and summarise."""
    tmp = Path(tempfile.mkdtemp(prefix="dpo-teach-bench-"))
    try:
        runs = []
        for i, seed in enumerate([seeds[0], *seeds]):
            run = run_demo(seed, tmp / f"run{i}-seed{seed}", tmp / "cache")
            run["cached"] = i == 1
            runs.append(run)
            if verbose:
                print(f"  demo seed {seed}{' (π_ref cached)' if run['cached'] else ''}: {run['wall_s']:.1f} s, "
                      f"peak RSS {run['peak_rss_mb']:.0f} MB, gain {run['metrics']['reward_gain']:+.3f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    built, cached = runs[0], runs[1]
    by_seed = [r for r in runs if not r["cached"]]
    result = {
        "demo_wall_s_build": built["wall_s"],
        "demo_wall_s_cached": cached["wall_s"],
        "demo_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "demo_runs": [{k: r[k] for k in ("seed", "cached", "wall_s", "peak_rss_mb")} for r in runs],
        "demo_cached_metrics_identical": built["metrics"] == cached["metrics"],  # out_dir is not in them
        "seeds": list(seeds),
    }
    for name in METRICS:
        result[name] = summary([lookup(r["metrics"], name) for r in by_seed])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="demo seeds (%(default)s)")
    result = bench_demo(tuple(parser.parse_args().seeds))
    print(json.dumps({k: v for k, v in result.items() if k != "demo_runs"}, indent=2))


if __name__ == "__main__":
    main()
