"""``make bench``: every benchmark in one run → ``results/bench.json`` (written atomically) and a table.

- throughput of our DPO loop vs TRL's ``DPOTrainer`` on the "tiny" (demo) and "small" presets (bench_throughput);
- cost of a DPO step with cached reference log-probs relative to an SFT step on the same tokens (bench_steps);
- the demo's wall time (π_ref built / cached), peak memory, and its metrics over seeds 0, 1, 2 (bench_demo).

``--skip-demo`` and ``--skip-small`` shorten it; ``--threads N`` steadies it on a busy machine; ``--out`` writes
elsewhere. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* modules, however this is started

from bench_demo import METRICS, TARGETS, bench_demo  # noqa: E402
from bench_steps import step_ratio  # noqa: E402
from bench_throughput import compare  # noqa: E402
from common import RESULTS, quiet_offline, set_threads  # noqa: E402

COUNTED = "training steps only: the one-off reference log-prob precompute (and setup) is excluded for both sides"


def environment() -> dict:
    """Versions and machine, so that a number can be read in its context."""
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    try:
        import trl

        env["trl"] = trl.__version__
    except ImportError:
        env["trl"] = None
    return env


def throughput_keys(r: dict, suffix: str) -> dict:
    """bench.json keys for one preset's ours-vs-TRL comparison."""
    return {f"dpo_pairs_per_s{suffix}": r["ours_pairs_per_s"], f"trl_pairs_per_s{suffix}": r["trl_pairs_per_s"],
            f"speedup_vs_trl{suffix}": r["speedup"]}


def targets(result: dict) -> dict:
    """Each acceptance target with the measured value and whether it is met."""
    checks = {"speedup_vs_trl": (">=", 1.5), "dpo_step_over_sft_step": ("<=", 1.1),
              "demo_wall_s_build": ("<=", 90.0), "demo_wall_s_cached": ("<=", 30.0)}
    checks.update({f"{name} (min over seeds)": (">=", t) for name, t in TARGETS.items()})
    out = {}
    for name, (op, target) in checks.items():
        key = name.split(" ")[0]
        if key not in result:
            continue
        value = result[key]["min"] if isinstance(result[key], dict) else result[key]
        out[name] = {"value": value, "target": f"{op} {target}",
                     "met": value is not None and (value >= target if op == ">=" else value <= target)}
    return out


def run(skip_demo: bool = False, skip_small: bool = False) -> dict:
    """Run the benchmarks and return the bench.json dict."""
    quiet_offline()
    start, load_before = time.perf_counter(), os.getloadavg()
    if load_before[0] >= (os.cpu_count() or 1):
        print(f"note: the machine is busy (load {load_before[0]:.1f} on {os.cpu_count()} cores); timings will be "
              f"low and noisy — consider --threads 1", flush=True)
    result: dict = {"throughput_counts": COUNTED, "details": {}}
    presets = ["tiny"] if skip_small else ["tiny", "small"]
    for preset in presets:
        suffix = "" if preset == "tiny" else f"_{preset}"
        print(f"throughput, ours vs TRL DPOTrainer ({preset}) ...", flush=True)
        tp = compare(preset)
        result.update(throughput_keys(tp, suffix))
        print(f"DPO step / SFT step ({preset}) ...", flush=True)
        st = step_ratio(preset)
        result[f"dpo_step_over_sft_step{suffix}"] = st["ratio"]
        result["details"][preset] = {"throughput": tp, "steps": st}
    if not skip_demo:
        print("demo runs (seed 0 built, seed 0 cached, seeds 1, 2) ...", flush=True)
        demo = bench_demo()
        result["details"]["demo_runs"] = demo.pop("demo_runs")
        result.update(demo)
    result["targets"] = targets(result)
    result["environment"] = {**environment(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                             "bench_wall_s": time.perf_counter() - start}
    return result


def table(result: dict) -> str:
    """A readable summary of bench.json."""
    lines = [f"{'metric':34} {'value':>12}  note"]

    def add(name: str, key: str, fmt: str, note: str = "") -> None:
        if key in result and result[key] is not None:
            lines.append(f"{name:34} {format(result[key], fmt):>12}  {note}")

    for suffix, label in (("", "tiny"), ("_small", "small")):
        add(f"ours, pairs/s ({label})", f"dpo_pairs_per_s{suffix}", ".0f", "train_dpo, precomputed π_ref")
        add(f"TRL DPOTrainer, pairs/s ({label})", f"trl_pairs_per_s{suffix}", ".0f", "precompute_ref_log_probs=True")
        add(f"speed-up vs TRL ({label})", f"speedup_vs_trl{suffix}", ".2f", "target ≥ 1.5 (tiny)" if not suffix else "")
        add(f"DPO step / SFT step ({label})", f"dpo_step_over_sft_step{suffix}", ".3f",
            "target ≤ 1.1" if not suffix else "")
    add("demo wall, π_ref built (s)", "demo_wall_s_build", ".1f", "target ≤ 90")
    add("demo wall, π_ref cached (s)", "demo_wall_s_cached", ".1f", "target ≤ 30")
    add("demo peak RSS (MB)", "demo_peak_rss_mb", ".0f")
    for name in METRICS:
        if name in result:
            s = result[name]
            note = f"target ≥ {TARGETS[name]}" if name in TARGETS else ""
            vals = ", ".join(f"{v:.3f}" for v in s["values"])
            lines.append(f"{name + ' (seeds)':34} {s['mean']:>12.3f}  [{vals}] min {s['min']:.3f}  {note}")
    lines.append(f"throughput counts {COUNTED}")
    missed = [k for k, v in result.get("targets", {}).items() if not v["met"]]
    lines.append("all targets met" if not missed else "targets missed: " + ", ".join(missed))
    return "\n".join(lines)


def main() -> None:
    from dpo_teach.utils import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "bench.json"), help="output file (%(default)s)")
    parser.add_argument("--skip-demo", action="store_true", help="no demo runs (wall time, memory, seed spread)")
    parser.add_argument("--skip-small", action="store_true", help="only the tiny preset")
    parser.add_argument("--threads", type=int, help="torch threads, also for the demo runs (default: one per core)")
    args = parser.parse_args()
    set_threads(args.threads)
    result = run(args.skip_demo, args.skip_small)
    atomic_write_json(args.out, result)
    print("\n" + table(result))
    print(f"\nwrote {args.out} in {result['environment']['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
