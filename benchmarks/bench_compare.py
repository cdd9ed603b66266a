"""What the whole family costs against today's comparison, measured side by side in one run on one machine.

Today's comparison is ``dpo-teach compare --methods DPO PPO PPO-GT`` (the three methods it ran before GRPO, RLOO and
online DPO joined, at the same settings); the new one is ``dpo-teach compare`` with every method. Both run as child
processes, one after the other, in full and in ``--fast`` mode; the ratios all/today are the acceptance numbers
(full ≤ 3×, fast ≤ 2×). Machines differ by about 2× and other work slows wall times, so the load average is
recorded before and after each run: compare ratios, not seconds, and only from runs with a similar load. The ratio
of CPU seconds (the seed processes' own, from ``results.json``) is printed beside it: it barely depends on the load.

Run alone: ``python benchmarks/bench_compare.py [--modes fast full] [--asset notebooks/assets/compare_results.json]``
(``--asset`` keeps the full all-methods run as the shipped results; ``make bench-compare`` does exactly that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_demo import demo_command
from common import RESULTS, ROOT

TODAY = ("DPO", "PPO", "PPO-GT")
LIMITS = {"full": 3.0, "fast": 2.0}  # acceptance: all methods ≤ this many times today's comparison


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_compare(args: list[str], out: Path) -> dict:
    """One ``dpo-teach compare`` child process: its wall seconds, the load around it, and the results' wall_s."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = demo_command() + ["compare", "--quiet", "--out", str(out), *args]
    before, start = load(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 1), "results_wall_s": results["wall_s"],
            "cpu_s": round(sum(results["environment"]["seed_cpu_s"].values()), 1),
            "runs": len(results["runs"]), "load_before": before, "load_after": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=("fast", "full"), default=["fast", "full"])
    parser.add_argument("--asset", help="also write the full all-methods results compactly here")
    parser.add_argument("--out", default=str(RESULTS / "bench_compare.json"))
    args = parser.parse_args()
    report = {"cpus": os.cpu_count(), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            flag = ["--fast"] if mode == "fast" else []
            today = run_compare([*flag, "--methods", *TODAY], Path(tmp) / f"{mode}-today")
            print(f"{mode:4s} today ({', '.join(TODAY)}): {today['wall_s']:7.1f} s, load {today['load_before']} → "
                  f"{today['load_after']}", flush=True)
            extra = ["--asset", args.asset] if mode == "full" and args.asset else []
            family = run_compare([*flag, *extra], Path(tmp) / f"{mode}-all")
            ratio, cpu_ratio = family["wall_s"] / today["wall_s"], family["cpu_s"] / today["cpu_s"]
            print(f"{mode:4s} all methods ({family['runs']} runs): {family['wall_s']:7.1f} s, load "
                  f"{family['load_before']} → {family['load_after']}", flush=True)
            print(f"{mode:4s} ratio all / today = {ratio:.2f} wall (limit {LIMITS[mode]:g}×: "
                  f"{'OK' if ratio <= LIMITS[mode] else 'OVER'}), {cpu_ratio:.2f} CPU seconds", flush=True)
            report["modes"][mode] = {"today": today, "all": family, "ratio": round(ratio, 3),
                                     "cpu_ratio": round(cpu_ratio, 3), "limit": LIMITS[mode]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
