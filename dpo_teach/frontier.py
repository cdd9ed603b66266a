"""Reading a comparison's results: the reward–KL frontier, reward at matched KL, summaries per setting, the figure.

Works on the dict that :func:`dpo_teach.compare.run_comparison` returns and writes as ``results.json`` (also the
file shipped in ``notebooks/assets/``), so the notebook and the command draw the same conclusions from the same
numbers. Nothing here trains or samples; :mod:`dpo_teach.conclusions` writes the table and the sentences.

The frontier of a method is made of its Pareto-optimal evaluation points over all settings (no other point has a
lower KL and a higher reward), joined by straight lines: F(k) is the reward the method reaches at KL k. Comparing
two methods "at matched KL" compares their F on a grid of KL values where both have measured points, per seed:
from the larger of their lowest evaluated KLs to the smaller of their highest. Below a method's lowest evaluation,
its F is only the straight line from π_ref, not a measurement, and a method evaluated later in training (PPO here)
would lose there to one evaluated early.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.ticker
import numpy as np
from matplotlib.lines import Line2D

from dpo_teach.plots import COLORS as SERIES
from dpo_teach.plots import plt
from dpo_teach.utils import atomic_write_text

MIN_FLUENCY = 0.7  # the course's fluency target: a "best setting" must keep at least this share well-formed
KL_QUOTED = (0.5, 1.0, 2.0, 4.0)  # KL values (nats) at which the conclusions quote both rewards, where both reach them
PANEL_HEIGHT = 4.4  # inches: the frontier figure's three panels, before its legend below them
# The methods of the comparison, in the order tables and figures list them (``dpo_teach.compare`` runs them).
# Each method's colour (3:1 contrast or more against white: matplotlib's orange, cyan, olive and pink are darkened)
# and marker: several of the colours look alike to colour-blind readers and in greyscale, the markers do not.
COLORS = {"DPO": "tab:blue", "online-DPO": "#1b8e9e", "online-DPO-fixed": "tab:purple", "online-DPO-RM": "tab:gray",
          "PPO": SERIES[1], "PPO-GT": "tab:green", "GRPO": "tab:red", "GRPO-GT": "#8a8a00",
          "GRPO-GT/token": "tab:brown", "RLOO": SERIES[6]}
MARKERS = {"DPO": "o", "online-DPO": "s", "online-DPO-fixed": "D", "online-DPO-RM": "v", "PPO": "^", "PPO-GT": "P",
           "GRPO": "X", "GRPO-GT": "*", "GRPO-GT/token": "<", "RLOO": ">"}
METHODS = tuple(COLORS)
PARAM_NAMES = {m: "kl_coef" if m in ("PPO", "PPO-GT", "RLOO") else "beta" for m in METHODS}  # the swept setting
USES_PAIRS = {"DPO", "PPO", "GRPO", "RLOO", "online-DPO-RM"}  # trained on the offline preference set (or via the RM)
USES_REWARD_MODEL = {"PPO", "GRPO", "RLOO", "online-DPO-RM"}  # optimise (or label with) the learned reward model


class ResultsError(ValueError):
    """A results file that cannot be read as a comparison's results; the message names the file and the fix."""


_RUN_KEYS = {"method": str, "param": (int, float), "seed": int, "evals": list, "final": dict, "param_name": str,
             "compute": dict}  # what the frontier, the table and notebook 06 read from every run
_EVAL_KEYS = ("kl", "reward", "fluency")


def _results_problem(results, format_: int) -> str | None:
    """What makes ``results`` unreadable as a comparison's results (None when nothing does)."""
    if not isinstance(results, dict):
        return f"expected a JSON object, got {type(results).__name__}"
    if results.get("format") != format_:
        return f"it is in format {results.get('format')!r}, this version reads format {format_}"
    for key, kind in (("runs", list), ("reference", dict), ("config", dict), ("stages", dict)):
        if not isinstance(results.get(key), kind):
            return f"'{key}' is missing or not a JSON {'array' if kind is list else 'object'}"
    if not results["runs"]:
        return "'runs' is empty"
    lengths = {}  # (method, param) → how many evaluations its runs have: the same on every seed
    for i, run in enumerate(results["runs"]):
        if not isinstance(run, dict):
            return f"runs[{i}] is not a JSON object"
        bad = [k for k, kind in _RUN_KEYS.items() if not isinstance(run.get(k), kind) or isinstance(run.get(k), bool)]
        if bad:
            return f"runs[{i}] has no usable {', '.join(repr(k) for k in bad)}"
        if run["method"] not in METHODS:
            return f"runs[{i}].method is {run['method']!r}, none of {', '.join(METHODS)}"
        if not math.isfinite(run["param"]) or not run["evals"]:
            return f"runs[{i}] needs a finite 'param' and at least one evaluation in 'evals'"
        for j, point in enumerate([*run["evals"], run["final"]]):
            if not isinstance(point, dict) or not all(_finite(point.get(k)) for k in _EVAL_KEYS) \
                    or not 0 <= point["fluency"] <= 1:
                where = f"evals[{j}]" if j < len(run["evals"]) else "final"
                return f"runs[{i}].{where} needs finite numbers 'kl', 'reward' and 'fluency' (a share, 0 to 1)"
        if lengths.setdefault((run["method"], run["param"]), len(run["evals"])) != len(run["evals"]):
            return (f"runs[{i}] ({run['method']}, {run['param_name']}={run['param']:g}) has {len(run['evals'])} "
                    f"evaluations, and the same run of another seed {lengths[run['method'], run['param']]}")
        if not isinstance(results["reference"].get(str(run["seed"])), dict):
            return f"'reference' has no entry for seed {run['seed']} of runs[{i}]"
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_results(path: str | Path) -> dict:
    """Read a ``results.json`` written by ``dpo-teach compare``, with an error that says what to do.

    Raises:
        FileNotFoundError: no such file. ResultsError: not JSON, or not the layout this version reads.
    """
    from dpo_teach.compare import FORMAT  # the layout's version lives with the code that writes it

    path = Path(path)
    fix = "rerun `dpo-teach compare` (with `--asset FILE` to rewrite a shipped asset)"
    if path.is_dir():
        raise ResultsError(f"{path}: is a folder; pass the results.json file in it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; run `dpo-teach compare` (or `--fast`) to write it")
    try:
        results = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, not UTF-8, ...
        raise ResultsError(f"{path}: not a comparison results file (not JSON: {e}); {fix}") from None
    problem = _results_problem(results, FORMAT)
    if problem:
        raise ResultsError(f"{path}: not a comparison results file ({problem}); {fix}")
    return results


def methods_in(results: dict) -> list[str]:
    return [m for m in METHODS if any(r["method"] == m for r in results["runs"])]


def runs_of(results: dict, method: str, param: float | None = None, seed: int | None = None) -> list[dict]:
    return [r for r in results["runs"] if r["method"] == method and (param is None or r["param"] == param)
            and (seed is None or r["seed"] == seed)]


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def points(results: dict, method: str, seed: int | None = None, min_fluency: float = 0.0) -> np.ndarray:
    """Every evaluation point of a method's runs, π_ref's step-0 point included.

    With ``seed`` the points of that seed's runs; without, each (setting, evaluation) averaged over seeds. Points
    below ``min_fluency`` are left out.

    Returns:
        Shape: (M, 3), columns KL, reward, fluency.
    """
    out = []
    for param in sorted({r["param"] for r in runs_of(results, method)}):
        runs = runs_of(results, method, param, seed)
        for i in range(len(runs[0]["evals"]) if runs else 0):
            out.append([np.mean([r["evals"][i][k] for r in runs]) for k in ("kl", "reward", "fluency")])
    p = np.array(out).reshape(-1, 3)
    return p[p[:, 2] >= min_fluency]


def frontier_curve(kl: np.ndarray, reward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto-optimal points, sorted by KL: no other point has lower (or equal) KL and higher reward.

    Returns:
        ``(kl, reward)`` of the frontier points, both strictly increasing. Shapes: (F,).
    """
    order = np.lexsort((-reward, kl))  # by KL, ties: best reward first
    keep, best = [], -np.inf
    for i in order:
        if reward[i] > best:
            keep.append(i)
            best = reward[i]
    return kl[keep], reward[keep]


def reward_at_kl(curve: tuple[np.ndarray, np.ndarray], kl_value: float) -> float:
    """F(kl_value): the frontier's reward at that KL, linear between frontier points and flat after the last
    (nan below the first point)."""
    kl, reward = curve
    return float(np.interp(kl_value, kl, reward)) if kl_value >= kl[0] else float("nan")


def _evaluated_kls(p: np.ndarray) -> np.ndarray:
    """The KLs of the evaluations in points ``p`` after π_ref's own (whose step-0 points have KL 0)."""
    return p[p[:, 0] > 0, 0]


def lowest_evaluated_kl(results: dict, method: str, min_fluency: float = MIN_FLUENCY) -> float:
    """The lowest KL among a method's evaluations after π_ref's (points of at least ``min_fluency``), mean over seeds:
    below it the method's frontier is only the straight line from π_ref."""
    lowest = []
    for seed in sorted({r["seed"] for r in runs_of(results, method)}):
        kls = _evaluated_kls(points(results, method, seed, min_fluency))
        if len(kls):
            lowest.append(float(kls.min()))
    return float(np.mean(lowest)) if lowest else float("nan")


def matched_kl_gap(results: dict, a: str, b: str, min_fluency: float = MIN_FLUENCY, n_grid: int = 40) -> dict:
    """How much higher method ``a``'s frontier lies than ``b``'s at matched KL, per seed, on a grid of KL values
    where both have measured points: from the larger of the two methods' lowest evaluated KL (π_ref's point at KL 0
    aside) to the smaller of their highest.

    Points below ``min_fluency`` are left out (by default the fluency target: reward bought with garbage text does
    not count; 0 keeps all). A seed where the two ranges do not overlap is left out: ``seeds`` says how many of the
    ``of_seeds`` remain. Returns ``gap`` (F_a − F_b averaged over the grid, mean over seeds), ``gap_sd`` (sd over
    seeds; nan for fewer than two), ``per_seed``, ``share_above`` (share of
    grid × seeds with F_a > F_b), ``kl_min`` and ``kl_max`` (the grid's ends, means over seeds) and ``at``
    ({KL: (F_a, F_b)}, seed means, at the ``KL_QUOTED`` values inside every seed's grid).
    """
    gaps, shares, kmins, kmaxes, at = [], [], [], [], {}
    seeds = sorted({r["seed"] for r in results["runs"]})
    for seed in seeds:
        pa, pb = (points(results, m, seed, min_fluency) for m in (a, b))
        measured_a, measured_b = _evaluated_kls(pa), _evaluated_kls(pb)
        if len(measured_a) == 0 or len(measured_b) == 0:
            continue
        kmin = max(measured_a.min(), measured_b.min())
        kmax = min(measured_a.max(), measured_b.max())
        if kmin > kmax:  # one method's points all lie below the other's: nothing measured at the same KL
            continue
        ca, cb = frontier_curve(pa[:, 0], pa[:, 1]), frontier_curve(pb[:, 0], pb[:, 1])
        grid = np.linspace(kmin, kmax, n_grid)
        diff = np.array([reward_at_kl(ca, k) - reward_at_kl(cb, k) for k in grid])
        gaps.append(float(diff.mean()))
        shares.append(float((diff > 0).mean()))
        kmins.append(float(kmin))
        kmaxes.append(float(kmax))
        for k in KL_QUOTED:
            if kmin <= k <= kmax:
                at.setdefault(k, []).append((reward_at_kl(ca, k), reward_at_kl(cb, k)))
    gap = float(np.mean(gaps)) if gaps else float("nan")
    gap_sd = mean_sd(gaps)[1] if len(gaps) > 1 else float("nan")  # one seed says nothing about the spread
    return {"a": a, "b": b, "gap": gap, "gap_sd": gap_sd, "per_seed": gaps, "seeds": len(gaps), "of_seeds": len(seeds),
            "share_above": float(np.mean(shares)) if shares else float("nan"),
            "kl_min": float(np.mean(kmins)) if kmins else float("nan"),
            "kl_max": float(np.mean(kmaxes)) if kmaxes else float("nan"),
            "at": {k: tuple(np.mean(v, axis=0).tolist()) for k, v in at.items() if len(v) == len(gaps)}}


def evaluation_noise(results: dict) -> float:
    """One evaluation's standard error of the mean reward: the reward's sd over samples / √(evaluation prompts),
    averaged over the final evaluations of all runs."""
    return float(np.mean([r["final"]["reward_std"] for r in results["runs"]]) / np.sqrt(
        results["config"]["n_eval_prompts"]))


def summarize(results: dict) -> list[dict]:
    """One row per method × setting: final metrics and costs, mean and sd over seeds."""
    rows = []
    for method in methods_in(results):
        for param in sorted({r["param"] for r in runs_of(results, method)}):
            runs = runs_of(results, method, param)
            gains = [r["final"]["reward"] - results["reference"][str(r["seed"])]["reward"] for r in runs]
            row = {"method": method, "param": param, "param_name": runs[0]["param_name"], "n_seeds": len(runs),
                   "reward_gain": mean_sd(gains), "models_held": runs[0]["models_held"],
                   "params_held": runs[0]["params_held"]}
            for key in ("reward", "kl", "fluency"):
                row[key] = mean_sd([r["final"][key] for r in runs])
            row["length"] = mean_sd([r["final"].get("length", float("nan")) for r in runs])
            row["train_s"] = mean_sd([r["train_s"] for r in runs])
            row["cpu_s"] = mean_sd([r.get("cpu_s", float("nan")) for r in runs])
            row["peak_mb"] = mean_sd([r["peak_mb"] for r in runs]) if all(r["peak_mb"] is not None for r in runs) \
                else (float("nan"), float("nan"))
            row["compute"] = {k: mean_sd([r["compute"][k] for r in runs])[0] for k in runs[0]["compute"]}
            rows.append(row)
    return rows


def best_settings(results: dict, min_fluency: float = MIN_FLUENCY,
                  summary: list[dict] | None = None) -> dict[str, dict]:
    """Per method, the setting with the highest final reward among those keeping ``min_fluency`` (mean over
    seeds); if none keeps it, the highest reward regardless (its row then says ``fluent: False``). ``summary``:
    :func:`summarize`'s rows, where the caller has them already."""
    best, summary = {}, summary if summary is not None else summarize(results)  # every method's rows, computed once
    for method in methods_in(results):
        rows = [r for r in summary if r["method"] == method]
        fluent = [r for r in rows if r["fluency"][0] >= min_fluency]
        pick = max(fluent or rows, key=lambda r: r["reward"][0])
        best[method] = {**pick, "fluent": bool(fluent)}
    return best


def preference_pairs(results: dict) -> dict:
    """The preference set's record (the first seed's; every seed samples as many pairs): ``n_train`` and the counts
    of the whole set, held-out pairs included (``completions``, ``ground_truth_calls``)."""
    return next(iter(results["stages"].values()))["pairs"]


def pair_completions(results: dict) -> int:
    """What a method that learns from the preference set (:data:`USES_PAIRS`) spends of it: its training pairs' two
    completions each (the held-out pairs are sampled too, but only to evaluate on)."""
    return 2 * preference_pairs(results)["n_train"]


def plot_frontier(results: dict, highlight: dict[str, float] | None = None):
    """Reward vs KL (frontiers), fluency vs KL, and reward vs completions sampled; seed means.

    Hollow markers: fluency below the target. Each frontier joins a method's fluent points, as every matched-KL
    comparison does: solid between measured points, dotted from π_ref (KL 0) to the first, which no evaluation
    measured. ``highlight`` ({method: setting}) draws those runs' trajectories. The reward panel ends a little past
    the highest fluent KL, where the comparisons end (points beyond it, all below the fluency target, are counted in
    a note there); the fluency panel shows every point.
    """
    fig, axes = plt.subplots(1, 3, figsize=(16, PANEL_HEIGHT))
    pairs = pair_completions(results)  # the preference set's part of a budget, as notebook 06's budget lines count it
    drawn, fluent_max, hollow = [], 0.0, False  # every (KL, reward) point; the fluent points' largest KL; any not
    for m in methods_in(results):
        p = points(results, m)
        fluent = p[:, 2] >= MIN_FLUENCY
        drawn += p[:, :2].tolist()
        fluent_max = max(fluent_max, float(p[fluent, 0].max(initial=0.0)))
        hollow |= bool((~fluent).any())
        for ax, y in ((axes[0], 1), (axes[1], 2)):
            ax.scatter(p[fluent, 0], p[fluent, y], color=COLORS[m], marker=MARKERS[m], s=22, alpha=0.7)
            ax.scatter(p[~fluent, 0], p[~fluent, y], facecolors="none", edgecolors=COLORS[m], marker=MARKERS[m], s=22)
        kl, best = frontier_curve(p[fluent, 0], p[fluent, 1])
        measured = kl > 0  # π_ref's own point is KL 0: the line up to the first evaluation is drawn, not measured
        upto = np.argmax(measured) + 1  # π_ref's point and the first measured one
        axes[0].plot(kl[:upto], best[:upto], ":", color=COLORS[m], lw=1.5)
        axes[0].plot(kl[measured], best[measured], "-", color=COLORS[m], lw=2, marker=MARKERS[m], ms=6,
                     label=f"{m} frontier")
        for param in sorted({r["param"] for r in runs_of(results, m)}):
            runs = runs_of(results, m, param)
            x = [np.mean([r["evals"][i]["completions"] for r in runs]) + (pairs if m in USES_PAIRS else 0)
                 for i in range(1, len(runs[0]["evals"]))]
            y = [np.mean([r["evals"][i]["reward"] for r in runs]) for i in range(1, len(runs[0]["evals"]))]
            axes[2].plot(x, y, "-", color=COLORS[m], marker=MARKERS[m], ms=4, alpha=0.6)
        for param in [(highlight or {}).get(m)] if highlight and m in highlight else []:
            runs = runs_of(results, m, param)
            traj = np.array([[np.mean([r["evals"][i][k] for r in runs]) for k in ("kl", "reward")]
                             for i in range(len(runs[0]["evals"]))])
            axes[0].plot(traj[:, 0], traj[:, 1], "--", color=COLORS[m], lw=1.5, marker="x",
                         label=f"{m} {'β' if PARAM_NAMES[m] == 'beta' else 'kl'}={param:g} run")
    seeds = len(results["reference"])
    axes[0].set(xlabel="KL(π‖π_ref), nats", ylabel="mean ground-truth reward",  # the text compares seed by seed
                title="reward–KL frontier" + (f" (each point: mean of {seeds} seeds)" if seeds > 1 else ""))
    right = 1.1 * fluent_max or 1.0
    beyond = sum(k > right for k, _ in drawn)
    if beyond:  # only disfluent points lie there: the reward panel keeps the range the frontiers are compared on
        shown = [r for k, r in drawn if k <= right]
        low, high = min(shown), max(shown)
        axes[0].set_xlim(left=min(0.0, axes[0].get_xlim()[0]), right=right)
        pad = 0.05 * (high - low or 1)
        axes[0].set_ylim(low - pad, high + pad)
        axes[0].annotate(f"{beyond} point(s) beyond KL {right:.3g}, all with fluency < {MIN_FLUENCY:.0%}: see the "
                         "fluency panel", xy=(0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=9,
                         color="gray")

    axes[1].axhline(MIN_FLUENCY, color="gray", ls=":")
    axes[1].set(xlabel="KL(π‖π_ref), nats", ylabel="fluency (share well-formed)", title="fluency")
    axes[2].set(xscale="log", xlabel="completions sampled (training pairs' + while training)",
                ylabel="mean ground-truth reward", title="sample efficiency (every setting)")
    axes[2].xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[2].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    axes[2].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    handles = axes[0].get_legend_handles_labels()[0] + [  # what the line and marker styles mean
        Line2D([], [], ls=":", color="gray", label="π_ref → first evaluation (drawn, not measured)")]
    if hollow:  # some point below the fluency target: drawn hollow
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="gray",
                              label=f"hollow: fluency < {MIN_FLUENCY:.0%}"))
    # below the panels, not on them: with every run's trajectory (``highlight``) it has 20 entries or more
    columns = min(6, len(handles))
    rows = -(-len(handles) // columns)
    height = PANEL_HEIGHT + 0.17 * rows  # inches: the panels, and a row of the legend each
    fig.set_size_inches(16, height)
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, (0.08 + 0.17 * rows) / height, 1, 1))
    return fig


def write_asset(results: dict, path: str | Path) -> None:
    """``results`` as compact JSON (the form shipped in ``notebooks/assets/`` for notebook 06 to open)."""
    atomic_write_text(path, json.dumps(results, separators=(",", ":"), sort_keys=True) + "\n")
