"""Wall time of the course notebooks, executed headless as a student's kernel runs them.

    python benchmarks/bench_notebooks.py                 # fast mode (DPO_TEACH_FAST=1, what CI runs), every notebook
    python benchmarks/bench_notebooks.py --full 05 07    # full mode, the named notebooks
    make bench-notebooks                                  # both: fast mode for all, full mode for 05 and 07

Each notebook runs in a fresh kernel from a temporary copy (the committed files are never touched), with π_ref
already in the cache, as in CI. It prints a table and writes ``results/notebooks_bench.json`` (atomically) with the
seconds of each run and the course's time targets: fast mode 00–04 together ≤ 5 min, 05 + 07 together ≤ 5 min;
full mode ≤ 10 min per notebook (issues 3 and 5). A notebook that raises is reported with its error and fails the
target; the others still run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, quiet_offline  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
FAST_GROUPS = {"00–04": ["00", "01", "02", "03", "04"], "05 + 07": ["05", "07"]}
FAST_BUDGET_S = 300.0  # each group, together (issues 3 and 5)
FULL_BUDGET_S = 600.0  # each notebook (issue 5)


def notebook_paths(prefixes: list[str] | None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        unknown = [p for p in prefixes if not any(path.name.startswith(p) for path in paths)]
        if unknown:
            raise SystemExit(f"bench_notebooks: no notebook in {NOTEBOOKS} starts with {', '.join(unknown)}; "
                             f"have {', '.join(p.name[:2] for p in paths)}")
        paths = [path for path in paths if any(path.name.startswith(p) for p in prefixes)]
    return paths


def execute(path: Path, fast: bool, timeout: float, keep: Path | None = None, edit=None, env: dict | None = None,
            name: str | None = None) -> dict:
    """Run one notebook in a fresh kernel; return its seconds and error (None when every cell ran).

    ``edit(nb)`` changes the copy that runs (never the file); ``env`` adds variables for its kernel. With ``keep``,
    the executed notebook (outputs included) is saved there as ``NAME.fast.ipynb``/``NAME.full.ipynb`` (``name`` in
    place of the mode, when given).
    """
    import nbformat

    from dpo_teach.headless import notebook_client
    from dpo_teach.site import link_assets
    from dpo_teach.utils import environment

    with tempfile.TemporaryDirectory(prefix="dpo-teach-bench-nb-") as tmp:
        copy = Path(shutil.copy(path, Path(tmp) / path.name))
        link_assets(path, Path(tmp))  # shipped results that a notebook opens (06)
        nb = nbformat.read(copy, as_version=4)
        if edit is not None:
            edit(nb)
        client = notebook_client(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": tmp}})
        start, error = time.perf_counter(), None
        with environment({"DPO_TEACH_FAST": "1" if fast else "0", **(env or {})}):  # the kernel inherits them
            try:
                client.execute()
            except Exception as exc:  # noqa: BLE001 - a failing notebook is a result to report, not a crash
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        seconds = time.perf_counter() - start
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, keep / f"{path.stem}.{name or ('fast' if fast else 'full')}.ipynb")
    return {"notebook": path.stem, "mode": "fast" if fast else "full", "seconds": round(seconds, 1), "error": error}


def targets(runs: list[dict]) -> dict:
    out = {}
    fast = {r["notebook"][:2]: r for r in runs if r["mode"] == "fast"}
    for group, members in FAST_GROUPS.items():
        if all(m in fast for m in members):
            total = sum(fast[m]["seconds"] for m in members)
            ok = all(fast[m]["error"] is None for m in members)
            out[f"fast mode {group} together"] = {"value": round(total, 1), "target": f"<= {FAST_BUDGET_S:.0f} s",
                                                 "met": ok and total <= FAST_BUDGET_S}
    for r in runs:
        if r["mode"] == "full":
            out[f"full mode {r['notebook']}"] = {"value": r["seconds"], "target": f"<= {FULL_BUDGET_S:.0f} s",
                                                 "met": r["error"] is None and r["seconds"] <= FULL_BUDGET_S}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", nargs="*", metavar="NN", default=None,
                        help="notebooks to time in fast mode (prefixes such as 05; none given: all)")
    parser.add_argument("--full", nargs="*", metavar="NN", default=None,
                        help="notebooks to time in full mode (prefixes; none given: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "notebooks_bench.json")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="also save each executed notebook, with its outputs, in DIR")
    args = parser.parse_args(argv)
    if args.fast is None and args.full is None:
        args.fast = []  # the default: fast mode, every notebook
    quiet_offline()

    from dpo_teach.utils import atomic_write_json
    from dpo_teach.world import WorldConfig, load_reference

    load_reference(WorldConfig(preset="tiny"))  # build π_ref once, outside the timings (CI has it cached too)
    plan = [(p, True) for p in notebook_paths(args.fast)] if args.fast is not None else []
    plan += [(p, False) for p in notebook_paths(args.full)] if args.full is not None else []
    runs, load_before = [], os.getloadavg()[0]
    for path, fast in plan:
        print(f"{path.stem} ({'fast' if fast else 'full'} mode) ...", flush=True)
        runs.append(execute(path, fast, timeout=FULL_BUDGET_S * 2, keep=args.keep))
        print(f"  {runs[-1]['seconds']:.1f} s" + (f"  FAILED: {runs[-1]['error']}" if runs[-1]["error"] else ""),
              flush=True)
    result = {"runs": runs, "targets": targets(runs),
              "environment": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0]}}
    atomic_write_json(args.out, result, sort_keys=False)
    print(f"\n{'notebook':<32}{'mode':>6}{'seconds':>9}")
    for r in runs:
        print(f"{r['notebook']:<32}{r['mode']:>6}{r['seconds']:>9.1f}" + ("  FAILED" if r["error"] else ""))
    for name, t in result["targets"].items():
        print(f"{name:<38} {t['value']:>7.1f} s  target {t['target']}  {'met' if t['met'] else 'NOT MET'}")
    print(f"(load average {load_before:.1f} before, {result['environment']['load_after']:.1f} after, "
          f"{os.cpu_count()} cores) → {args.out}")
    return 0 if all(t["met"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
