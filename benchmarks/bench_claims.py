"""How far a notebook's claims carry: the notebook run at several training seeds, and which claim checks held in each.

    python benchmarks/bench_claims.py 07 --seeds 0 1 2 3 4 5     # make bench-claims (NB=07 SEEDS="0 1 2 3 4 5")

A claim check (``dpo_teach.claims.check``) holds at seed 0 on the course's machine, or CI fails. This asks what a
student's machine asks: does it hold for another run? Each run executes a temporary copy of the notebook in a fresh
kernel, in fast mode (``--full``: full mode), with one change: the ``seed=0`` of every ``DPOConfig(...)`` in its code
becomes ``seed=S``, the order of the training minibatches (π_ref, the preference pairs and the evaluation prompts
stay those of seed 0). Every check logs whether it held (``DPO_TEACH_CLAIMS=record``). The table lists each check
that failed in at least one run, with how often it held and where; ``results/claims_bench.json`` (atomically; ``--out``
elsewhere) holds every check of every run, and ``--keep DIR`` keeps the executed notebooks. The exit status is 1 when a
run stopped before its end or seed 0 lost a claim (as CI would), 0 otherwise: that a claim fails at another seed is the
measurement, not a failure of it.

``--set NAME=VALUE`` (``make bench-claims SET="lr=2.5e-4"``) also writes VALUE for the keyword NAME in every
``DPOConfig(...)`` of the copy that has it (07: ``BASE``, which its other runs change one or two settings of): how
far the claims would carry with another configuration, before anyone edits the notebook. With settings, a claim lost
at seed 0 is measured too, not a failure (CI does not run that notebook).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_notebooks import execute, notebook_paths  # noqa: E402
from common import RESULTS, quiet_offline  # noqa: E402

TRAINING_SEED = re.compile(r"(\bDPOConfig\([^()]*\bseed=)0(\s*\))")  # DPOConfig(..., seed=0) in one call, any lines


def with_training_seed(nb, seed: int) -> int:
    """Set the training seed of every ``DPOConfig(..., seed=0)`` in ``nb``'s code cells to ``seed``; the count."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source, n = TRAINING_SEED.subn(rf"\g<1>{seed}\g<2>", cell.source)
            count += n
    return count


CONFIG_CALL = re.compile(r"\bDPOConfig\([^()]*\)")  # one DPOConfig(...) call, any lines, no call inside it


def with_settings(nb, settings: dict[str, str]) -> dict[str, int]:
    """In every ``DPOConfig(...)`` of ``nb``'s code cells, the value of each keyword of ``settings`` replaced by the
    settings' (code, as written: ``"2.5e-4"``); how many values of each keyword were replaced."""
    counts = dict.fromkeys(settings, 0)

    def one(call: re.Match) -> str:
        text = call.group(0)
        for name, value in settings.items():
            text, n = re.subn(rf"(\b{re.escape(name)}=)[^,()\s]+", lambda m, v=value: m.group(1) + v, text)
            counts[name] += n
        return text

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = CONFIG_CALL.sub(one, cell.source)
    return counts


def run_at_seed(path: Path, seed: int, fast: bool, timeout: float, keep: Path | None = None,
                settings: dict[str, str] | None = None) -> dict:
    """Execute notebook ``path`` at training seed ``seed`` (and ``settings``, :func:`with_settings`): ``{"seed",
    "seconds", "error", "claims": [...]}``, each claim ``{"claim", "held", "at"}`` in the order the checks ran."""

    def edit(nb) -> None:
        with_training_seed(nb, seed)
        with_settings(nb, settings or {})

    with tempfile.TemporaryDirectory(prefix="dpo-teach-bench-claims-") as tmp:
        log = Path(tmp) / "claims.jsonl"
        env = {"DPO_TEACH_CLAIMS": "record", "DPO_TEACH_CLAIMS_LOG": str(log), "DPO_TEACH_STRICT": "0"}
        run = execute(path, fast, timeout, keep, edit=edit, env=env, name=f"seed{seed}")
        claims = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
    return {"seed": seed, "seconds": run["seconds"], "error": run["error"], "claims": claims}


def fragile(runs: list[dict]) -> list[dict]:
    """The checks that failed in at least one run: ``{"index", "claim", "at", "held": {seed: bool}}``, in the order
    the notebook runs them. Checks are matched by their place in that order (a run that stopped early has fewer)."""
    longest = max(runs, key=lambda r: len(r["claims"]))["claims"]
    rows = []
    for i, first in enumerate(longest):
        held = {r["seed"]: r["claims"][i]["held"] for r in runs if i < len(r["claims"])}
        if not all(held.values()) or len(held) < len(runs):
            rows.append({"index": i, "claim": first["claim"], "at": first.get("at", ""), "held": held})
    return rows


def table(runs: list[dict], rows: list[dict]) -> str:
    seeds = [r["seed"] for r in runs]
    lines = [f"{'#':>3}  {'held':>6}  " + " ".join(f"{s:>3}" for s in seeds) + "  claim (where)"]
    for row in rows:
        marks = " ".join(f"{'yes' if row['held'].get(s) else 'no' if s in row['held'] else '—':>3}" for s in seeds)
        count = f"{sum(row['held'].values())}/{len(runs)}"
        lines.append(f"{row['index']:>3}  {count:>6}  {marks}  {row['claim']}" + (f"  ({row['at'][:70]})"
                                                                                if row["at"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="the notebook, by its number (07) or any prefix of its name")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5], metavar="S",
                        help="training seeds to run (0 1 2 3 4 5)")
    parser.add_argument("--full", action="store_true", help="full mode (default: fast mode, what CI runs)")
    parser.add_argument("--notebooks", type=Path, default=None, help=argparse.SUPPRESS)  # tests: another folder
    parser.add_argument("--out", type=Path, default=RESULTS / "claims_bench.json")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR", help="save each executed notebook in DIR")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", dest="settings",
                        help="a keyword's value in every DPOConfig(...) that has it, e.g. lr=2.5e-4 beta=1.0")
    args = parser.parse_args(argv)
    if any(s < 0 for s in args.seeds):
        parser.error(f"--seeds: a seed is a number from 0 up, got {min(args.seeds)}")
    settings = {}
    for item in args.settings:
        name, _, value = item.partition("=")
        if not name.isidentifier() or not value or re.search(r"[,()\s]", value):
            parser.error(f"--set: {item!r} is not NAME=VALUE with one value written as code, e.g. lr=2.5e-4")
        if name == "seed":
            parser.error("--set: the seed is what --seeds varies; name the other settings")
        settings[name] = value
    paths = sorted(args.notebooks.glob(f"{args.notebook}*.ipynb")) if args.notebooks else notebook_paths(
        [args.notebook])
    if len(paths) != 1:
        parser.error(f"{args.notebook!r} names {len(paths)} notebooks ({', '.join(p.name for p in paths)}); name one")
    import nbformat

    if not with_training_seed(nbformat.read(paths[0], as_version=4), 1):
        parser.error(f"{paths[0].name} has no DPOConfig(..., seed=0) in its code: nothing to vary")
    missing = [n for n, count in with_settings(nbformat.read(paths[0], as_version=4), settings).items() if not count]
    if missing:
        parser.error(f"--set: no DPOConfig(...) in {paths[0].name}'s code has {missing[0]}=...: nothing to change")
    quiet_offline()

    from dpo_teach.utils import atomic_write_json

    load_before, runs = os.getloadavg()[0], []
    changed = "".join(f", {name}={value}" for name, value in settings.items())
    for seed in args.seeds:
        print(f"{paths[0].stem}, training seed {seed}{changed} ({'full' if args.full else 'fast'} mode) ...",
              flush=True)
        runs.append(run_at_seed(paths[0], seed, fast=not args.full, timeout=1200, keep=args.keep, settings=settings))
        run = runs[-1]
        print(f"  {run['seconds']:.1f} s, {sum(c['held'] for c in run['claims'])} of {len(run['claims'])} checks held"
              + (f"  STOPPED: {run['error']}" if run["error"] else ""), flush=True)
    rows = fragile(runs)
    result = {"notebook": paths[0].stem, "mode": "full" if args.full else "fast", "settings": settings, "runs": runs,
              "fragile": rows,
              "environment": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0]}}
    atomic_write_json(args.out, result, sort_keys=False)
    checks = max(len(r["claims"]) for r in runs)
    print(f"\n{checks - len(rows)} of {checks} checks held in every run; these did not:\n" if rows else
          f"\nall {checks} checks held in every run\n")
    if rows:
        print(table(runs, rows))
    print(f"\n(load average {load_before:.1f} before, {result['environment']['load_after']:.1f} after) → {args.out}")
    seed0 = next((r for r in runs if r["seed"] == 0), None)
    lost_at_0 = seed0 is not None and not all(c["held"] for c in seed0["claims"])
    broken = any(r["error"] for r in runs) or (lost_at_0 and not settings)  # with settings, not what CI runs
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
