"""Wall time of a fresh clone's ``make test`` (set-up included): a given commit vs the working tree, back to back.

    python benchmarks/bench_test_suite.py --base efe1393      # or: make bench-test BASE=efe1393
    python benchmarks/bench_test_suite.py --base efe1393 --new-first --keep /tmp/bench-trees

Two trees are made in a temporary directory:

- ``base``: ``git clone`` of this repository, checked out at ``--base``;
- ``new``: a copy of the working tree as a commit of it would hold it: every file git tracks (as it is on disk now,
  uncommitted edits included; deleted ones left out) plus untracked files that .gitignore does not exclude. No
  .venv, no results, no caches are copied.

In each, ``make .venv/.installed`` (the set-up: a new .venv and every pip install) then ``make test`` run with an empty
HOME (so an empty pip cache and Hugging Face cache), an empty $DPO_TEACH_CACHE and ``PYTEST_ADDOPTS`` adding
``--durations=N``. Nothing is shared between the two runs but the machine. The script prints both times (set-up,
tests, total), the ratio base / new, the load average before and after each run, and the slowest tests of the new
tree, and where each tree's test CPU time went, by kind of process (``process_cpu.py``: notebook kernels, the
grading sandbox, test workers, ...), and writes ``results/bench_test_suite.json`` (atomically). It exits 1 if either
``make test`` fails.

``--same-tests`` adds a third run, like for like: the working tree's ``make test`` again (fresh HOME and caches, its
set-up already made), on only the tests that the base has too (same node ids, as each tree's pytest collects them;
the base's tests that the working tree no longer has are listed). Its time, with the working tree's set-up added, is
compared with the base's: how much faster the same tests run, apart from the tests added since.

The runs take what the two suites take (10-30 minutes on 2 cores; ``--same-tests`` adds the third run). Speed-ups
are only meaningful side by side on one machine: a load average above the core count means other jobs shared the
CPUs during the runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_cpu import ProcessCPU

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAMP = ".venv/.installed"  # the Makefile's set-up target, in both trees
SUMMARY = re.compile(r"^=*\s*(\d+ \w+(?:, \d+ \w+)* in [\d.]+s\b.*?)\s*=*$", re.M)  # "3 passed, 1 failed in 9.1s"
SLOWEST = re.compile(r"^=+ slowest (?:\d+ )?durations =+\n", re.M)
DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S.*)$")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def clone_at(commit: str, dest: Path) -> str:
    """``git clone`` of this repository into ``dest`` at ``commit``; returns the full commit id."""
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", commit], cwd=dest, check=True)
    return git("rev-parse", "HEAD", cwd=dest).strip()


def copy_working_tree(dest: Path) -> list[str]:
    """Tracked files as they are on disk plus untracked, not ignored ones, copied to ``dest``; returns the paths."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    copied = []
    for rel in sorted(set(filter(None, listed))):
        src = ROOT / rel
        if src.is_file() or src.is_symlink():  # a tracked file deleted on disk is left out, as a commit would
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
            copied.append(rel)
    return copied


def clean_env(home: Path, cache: Path, durations: int, select: Path | None = None) -> dict:
    """The caller's environment with a fresh HOME and reference cache, no active venv, and pytest's --durations
    (and ``@select``: only the node ids listed in that file)."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PIP_CACHE_DIR", "XDG_CACHE_HOME", "HF_HOME", "DPO_TEACH_CACHE",
            "PYTEST_ADDOPTS", "PYTEST_XDIST_AUTO_NUM_WORKERS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = os.environ.get("VIRTUAL_ENV")
    if venv_bin:  # a venv active in the caller's shell must not shadow the tree's own
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(venv_bin))
    home.mkdir(parents=True)
    cache.mkdir(parents=True)
    return {**env, "HOME": str(home), "DPO_TEACH_CACHE": str(cache),
            "PYTEST_ADDOPTS": f"--durations={durations} -p no:cacheprovider" + (f" @{select}" if select else "")}


def run_logged(cmd: list[str], cwd: Path, env: dict, log) -> tuple[int, float]:
    """Run ``cmd``, its output appended to ``log``; return (exit status, seconds)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - start


def parse_pytest(output: str, top: int) -> dict:
    """pytest's summary line and its slowest tests (``--durations``) from a ``make test`` log."""
    summaries = SUMMARY.findall(output)
    slowest = []
    header = SLOWEST.search(output)
    for line in output[header.end():].splitlines() if header else []:
        match = DURATION.match(line)
        if not match:
            break
        slowest.append({"seconds": float(match.group(1)), "when": match.group(2), "test": match.group(3).strip()})
    return {"summary": summaries[-1] if summaries else None, "slowest": slowest[:top]}


def collect_ids(tree: Path) -> list[str]:
    """The node ids that ``tree``'s pytest collects, in its order (its .venv must exist)."""
    out = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=tree, capture_output=True, text=True)
    ids = [line.strip() for line in out.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if out.returncode != 0 or not ids:
        raise RuntimeError(f"pytest could not collect the tests in {tree}:\n{(out.stdout + out.stderr)[-2000:]}")
    return ids


def same_tests(base_ids: list[str], new_ids: list[str]) -> tuple[list[str], list[str]]:
    """(the new tree's tests that the base has too, in the new tree's order; the base's tests the new tree lacks)."""
    new_set, base_set = set(new_ids), set(base_ids)
    return [t for t in new_ids if t in base_set], [t for t in base_ids if t not in new_set]


def ratios(base: dict, run: dict) -> dict:
    """``{"ratio_total", "ratio_test"}``: base / ``run`` in total (set-up included) and for the tests alone; None
    unless both runs passed."""
    ok = base["ok"] and run["ok"]
    return {f"ratio_{part}": round(base[f"{part}_s"] / run[f"{part}_s"], 3) if ok else None
            for part in ("total", "test")}


def bench_tree(name: str, tree: Path, work: Path, durations: int, select: Path | None = None) -> dict:
    """Fresh-clone ``make test`` in ``tree`` (only the tests listed in ``select``, if given), timed as set-up (the
    .venv; nothing to do if a run before made it) then tests."""
    env = clean_env(work / f"home-{name}", work / f"cache-{name}", durations, select)
    log_path = work / f"{name}.log"
    load_before = os.getloadavg()
    print(f"[{name}] make {STAMP} && make test in {tree} (log: {log_path}) ...", flush=True)
    with open(log_path, "w") as log:
        rc_setup, setup_s = run_logged(["make", STAMP], tree, env, log)
        with ProcessCPU() as cpu:  # where the tests' CPU time goes
            rc_test, test_s = run_logged(["make", "test"], tree, env, log) if rc_setup == 0 else (None, 0.0)
    output = log_path.read_text(errors="replace")
    result = {"setup_s": round(setup_s, 1), "test_s": round(test_s, 1), "total_s": round(setup_s + test_s, 1),
              "setup_rc": rc_setup, "test_rc": rc_test, "ok": rc_setup == 0 and rc_test == 0,
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "test_cpu": cpu.as_dict(),
              **parse_pytest(output, durations)}
    if not result["ok"]:
        result["log_tail"] = output[-3000:]
    print(f"[{name}] set-up {setup_s:.0f} s + tests {test_s:.0f} s = {setup_s + test_s:.0f} s"
          f" ({result['summary'] or 'no pytest summary'}); load average {load_before[0]:.2f} -> "
          f"{result['load_after'][0]:.2f}", flush=True)
    return result


def report(result: dict, top: int) -> str:
    base, new = result["base"], result["new"]
    lines = [f"{'':<6}{'set-up':>9}{'tests':>9}{'total':>9}  load avg before -> after  pytest",
             *[f"{k:<6}{r['setup_s']:>8.0f}s{r['test_s']:>8.0f}s{r['total_s']:>8.0f}s  "
               f"{r['load_before'][0]:>6.2f} -> {r['load_after'][0]:<14.2f}  {r['summary']}"
               for k, r in (("base", base), ("new", new))]]
    if result["ratio_total"] is not None:
        lines.append(f"speed-up base / new: {result['ratio_total']:.2f}x in total, {result['ratio_test']:.2f}x for "
                     f"the tests alone ({result['environment']['cpus']} cores)")
    same = result.get("same_tests")
    if same:
        lines.append(f"\nlike for like, the new tree on the base's {same['tests']} tests that it still has "
                     f"({len(same['gone'])} gone): set-up {same['setup_s']:.0f} s (the new tree's) + tests "
                     f"{same['test_s']:.0f} s = {same['total_s']:.0f} s ({same['summary']}); load average "
                     f"{same['load_before'][0]:.2f} -> {same['load_after'][0]:.2f}")
        if same.get("ratio_total") is not None:
            lines.append(f"speed-up base / new on the same tests: {same['ratio_total']:.2f}x in total, "
                         f"{same['ratio_test']:.2f}x for the tests alone")
        lines += [f"  gone: {t}" for t in same["gone"]]
    for k, r in (("base", base), ("new", new), ("new on the base's tests", same or {})):
        cpu = r.get("test_cpu", {})
        if cpu.get("cpu_s") is not None:
            lines.append(f"\n{k}: the tests used {cpu['cpu_s']:.0f} CPU s, the cores {cpu['busy']:.0%} busy; "
                         "by process:")
            lines += [f"{s:>8.0f} s  {kind}" for kind, s in cpu["by_kind"].items() if s >= 1]
    lines.append(f"\nslowest {top} tests of the new tree:")
    lines += [f"{t['seconds']:>8.2f}s {t['when']:<8} {t['test']}" for t in new["slowest"][:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="commit to compare against (default: HEAD)")
    parser.add_argument("--durations", type=int, default=15, help="slowest tests to report (default: 15)")
    parser.add_argument("--new-first", action="store_true", help="run the working tree first, then the base")
    parser.add_argument("--same-tests", action="store_true",
                        help="then run the working tree's suite again on only the base's tests (like for like)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="make the trees, logs and venvs in DIR (must not exist) and keep them")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_test_suite.json")
    args = parser.parse_args(argv)

    from dpo_teach.utils import atomic_write_json

    if args.keep is not None:
        args.keep.mkdir(parents=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="dpo-teach-bench-test-"))
    try:
        commit = clone_at(args.base, work / "base")
        (work / "new").mkdir()
        files = copy_working_tree(work / "new")
        head = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=normal").strip())
        print(f"base: {args.base} = {commit[:12]}; new: working tree of {head[:12]}"
              f"{' with uncommitted changes' if dirty else ''} ({len(files)} files)", flush=True)
        start = time.perf_counter()
        order = ["new", "base"] if args.new_first else ["base", "new"]
        runs = {name: bench_tree(name, work / name, work, args.durations) for name in order}
        base, new = runs["base"], runs["new"]
        same = None
        if args.same_tests and base["ok"] and new["ok"]:
            kept, gone = same_tests(collect_ids(work / "base"), collect_ids(work / "new"))
            select = work / "same-tests.txt"
            select.write_text("".join(f"{t}\n" for t in kept))
            print(f"[new-same] the base's tests that the new tree has: {len(kept)} ({len(gone)} gone)", flush=True)
            same = bench_tree("new-same", work / "new", work, args.durations, select)
            same.update(tests=len(kept), gone=gone, setup_s=new["setup_s"],
                        total_s=round(new["setup_s"] + same["test_s"], 1))
            same.update(ratios(base, same))
            runs["new-same"] = same
        result = {
            "base": {"commit": commit, "ref": args.base, **base},
            "new": {"head": head, "uncommitted_changes": dirty, "files": len(files), **new},
            **ratios(base, new),
            "same_tests": same,
            "order": order,
            "environment": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform,
                            "wall_s": round(time.perf_counter() - start, 1),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        }
        atomic_write_json(args.out, result, sort_keys=False)
        print("\n" + report(result, args.durations))
        print(f"\n→ {args.out}")
        for name in runs:
            if not runs[name]["ok"]:
                print(f"\n[{name}] make test FAILED; the end of its log:\n{runs[name]['log_tail']}", file=sys.stderr)
        return 0 if all(run["ok"] for run in runs.values()) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
