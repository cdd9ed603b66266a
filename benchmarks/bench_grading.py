"""Grading throughput: the sandboxed grader vs the same grader without the sandbox vs the in-kernel otter grader
it replaced, on the same submissions, one run each, side by side.

    python benchmarks/bench_grading.py                 # or: make bench-grading
    python benchmarks/bench_grading.py --whole --base c3f4382

The submissions are made from the masters (``make assign`` into a temporary folder): every master's solution and
every student notebook, cut to their exercises as the test suite cuts them (``--whole``: the solutions run in
full, which takes minutes; the fixed cost of a sandbox is then a smaller share). The same folder is graded by

- ``otter (base)``: ``dpo-teach grade`` of commit ``--base`` (otter run in a kernel per notebook), ``--jobs 1``;
- ``sandbox``: this tree's ``dpo-teach grade``, ``--jobs 1``;
- ``no sandbox``: this tree's with ``--unsafe``, ``--jobs 1``;
- ``sandbox, 2 jobs``: this tree's, ``--jobs 2``.

It prints notebooks per minute for each, the ratios, whether every run gave the same scores, and the load
average; it writes ``results/bench_grading.json`` (atomically).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

BASE = "c3f4382"  # the last commit whose grader ran otter inside the student's kernel


def submissions(folder: Path, assigned: Path, whole: bool) -> int:
    import nbformat
    from test_grading import exercises_only

    from dpo_teach import grading

    grading.assign(notebooks=assigned / "notebooks", autograder=assigned / "autograder",
                   solutions=assigned / "solutions")
    for master in sorted(grading.MASTERS.glob("*.ipynb")):
        solution = nbformat.read(assigned / "solutions" / master.name, as_version=4)
        nbformat.write(solution if whole else exercises_only(solution), folder / f"full_{master.name}")
        blank = nbformat.read(assigned / "notebooks" / master.name, as_version=4)
        nbformat.write(exercises_only(blank), folder / f"blank_{master.name}")
    return len(list(folder.glob("*.ipynb")))


GRADE = """
import json, sys
from pathlib import Path
from dpo_teach import grading
folder, out, autograder, jobs, unsafe = sys.argv[1:6]
extra = {"unsafe": True} if unsafe == "1" else {}
report = grading.grade(Path(folder), Path(out), autograder=Path(autograder), jobs=int(jobs), cell_timeout=120,
                       timeout=900, log=lambda m: None, **extra)
print(json.dumps({r["student"]: r["score"] for r in report["results"]}))
"""


def run(folder: Path, out: Path, autograder: Path, jobs: int, unsafe: bool, pythonpath: str | None) -> dict:
    env = {**os.environ, "DPO_TEACH_FAST": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", GRADE, str(folder), str(out), str(autograder), str(jobs),
                           "1" if unsafe else "0"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"grading failed: {done.stderr[-2000:]}")
    return {"seconds": round(seconds, 1), "scores": json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help="commit of the otter grader to compare with (%(default)s)")
    parser.add_argument("--whole", action="store_true", help="grade whole solution notebooks, not exercises only")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_grading.json"))
    args = parser.parse_args(argv)
    from dpo_teach.utils import atomic_write_json
    from dpo_teach.world import WorldConfig, load_reference

    load_reference(WorldConfig(preset="tiny"))  # the notebooks' π_ref, cached before any timing
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, old = tmp / "submissions", tmp / "base"
        folder.mkdir()
        old.mkdir()
        n = submissions(folder, tmp / "assigned", args.whole)
        archive = subprocess.run(["git", "archive", args.base, "dpo_teach"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        autograder = tmp / "assigned" / "autograder"
        load = [os.getloadavg()[0]]
        modes = {}
        for name, jobs, unsafe, path in [("otter (base)", 1, True, str(old)), ("sandbox", 1, False, None),
                                         ("no sandbox", 1, True, None), ("sandbox, 2 jobs", 2, False, None)]:
            if name == "otter (base)":
                result = run(folder, tmp / "out-base", autograder, jobs, False, path)  # it has no --unsafe
            else:
                result = run(folder, tmp / f"out-{len(modes)}", autograder, jobs, unsafe, path)
            result["notebooks_per_min"] = round(60 * n / result["seconds"], 2)
            modes[name] = result
            load.append(os.getloadavg()[0])
            print(f"{name:<17} {result['seconds']:>7.1f} s  {result['notebooks_per_min']:>6.2f} notebooks/min",
                  flush=True)
    rate = {k: v["notebooks_per_min"] for k, v in modes.items()}
    report = {
        "notebooks": n, "whole_notebooks": args.whole, "base": args.base, "cores": os.cpu_count(),
        "load_average": load, "modes": modes,
        "sandbox_cost": round(1 - rate["sandbox"] / rate["no sandbox"], 3),
        "sandbox_vs_otter": round(rate["sandbox"] / rate["otter (base)"], 3),
        "two_jobs_speedup": round(rate["sandbox, 2 jobs"] / rate["sandbox"], 3),
        "same_scores": len({json.dumps(m["scores"], sort_keys=True) for m in modes.values()}) == 1,
    }
    print(f"sandbox cost vs no sandbox: {100 * report['sandbox_cost']:.1f} %  (target ≤ 15 %)")
    print(f"sandboxed grader vs otter in-kernel grader: {report['sandbox_vs_otter']:.2f}× the throughput")
    print(f"--jobs 2 vs --jobs 1: {report['two_jobs_speedup']:.2f}×; same scores in every run: {report['same_scores']}")
    print(f"load average: {', '.join(f'{x:.2f}' for x in load)} ({os.cpu_count()} cores)")
    atomic_write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
