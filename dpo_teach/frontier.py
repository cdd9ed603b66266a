"""Reading a comparison's results: the reward–KL frontier, reward at matched KL, the cost table, the conclusions.

Works on the dict that :func:`dpo_teach.compare.run_comparison` returns and writes as ``results.json`` (also the
file shipped in ``notebooks/assets/``), so the notebook and the command draw the same conclusions from the same
numbers. Nothing here trains or samples.

The frontier of a method is made of its Pareto-optimal evaluation points over all settings (no other point has a
lower KL and a higher reward), joined by straight lines: F(k) is the reward the method reaches at KL k. Comparing
two methods "at matched KL" compares their F on a grid of KL values both reached, per seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.ticker
import numpy as np

from dpo_teach.plots import plt, save_figure
from dpo_teach.utils import atomic_write_json, atomic_write_text

MIN_FLUENCY = 0.7  # the course's fluency target: a "best setting" must keep at least this share well-formed
KL_QUOTED = (0.5, 1.0, 2.0, 4.0)  # KL values (nats) at which the conclusions quote both rewards, where both reach them
COLORS = {"DPO": "tab:blue", "PPO": "tab:orange", "PPO-GT": "tab:green"}


def load_results(path: str | Path) -> dict:
    """Read a ``results.json`` written by ``dpo-teach compare``, with an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; run `dpo-teach compare` (or `--fast`) to write it")
    results = json.loads(path.read_text())
    if "runs" not in results or "reference" not in results:
        raise ValueError(f"{path}: not a comparison results file (no 'runs'/'reference'); rerun `dpo-teach compare`")
    return results


def methods_in(results: dict) -> list[str]:
    return [m for m in ("DPO", "PPO", "PPO-GT") if any(r["method"] == m for r in results["runs"])]


def runs_of(results: dict, method: str, param: float | None = None, seed: int | None = None) -> list[dict]:
    return [r for r in results["runs"] if r["method"] == method and (param is None or r["param"] == param)
            and (seed is None or r["seed"] == seed)]


def _ms(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def points(results: dict, method: str, seed: int | None = None) -> np.ndarray:
    """Every evaluation point of a method's runs, π_ref's step-0 point included.

    With ``seed`` the points of that seed's runs; without, each (setting, evaluation) averaged over seeds.

    Returns:
        Shape: (M, 3), columns KL, reward, fluency.
    """
    out = []
    for param in sorted({r["param"] for r in runs_of(results, method)}):
        runs = runs_of(results, method, param, seed)
        for i in range(len(runs[0]["evals"]) if runs else 0):
            out.append([np.mean([r["evals"][i][k] for r in runs]) for k in ("kl", "reward", "fluency")])
    return np.array(out).reshape(-1, 3)


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


def matched_kl_gap(results: dict, a: str, b: str, min_fluency: float = 0.0, n_grid: int = 40) -> dict:
    """How much higher method ``a``'s frontier lies than ``b``'s at matched KL, per seed, on a grid of KL values
    from 0 to the largest KL both methods reached.

    Points below ``min_fluency`` are left out (0 keeps all). Returns ``gap`` (F_a − F_b averaged over the grid,
    mean over seeds), ``gap_sd`` (sd over seeds), ``per_seed``, ``share_above`` (share of grid × seeds with
    F_a > F_b), ``kl_max`` (the end of the grid, mean over seeds) and ``at`` ({KL: (F_a, F_b)}, seed means, at the
    ``KL_QUOTED`` values inside every seed's grid).
    """
    gaps, shares, kmaxes, at = [], [], [], {}
    for seed in sorted({r["seed"] for r in results["runs"]}):
        pa, pb = (points(results, m, seed) for m in (a, b))
        pa, pb = pa[pa[:, 2] >= min_fluency], pb[pb[:, 2] >= min_fluency]
        if len(pa) == 0 or len(pb) == 0:
            continue
        ca, cb = frontier_curve(pa[:, 0], pa[:, 1]), frontier_curve(pb[:, 0], pb[:, 1])
        kmax = min(pa[:, 0].max(), pb[:, 0].max())
        grid = np.linspace(kmax / n_grid, kmax, n_grid)
        diff = np.array([reward_at_kl(ca, k) - reward_at_kl(cb, k) for k in grid])
        diff = diff[~np.isnan(diff)]
        gaps.append(float(diff.mean()) if len(diff) else float("nan"))
        shares.append(float((diff > 0).mean()) if len(diff) else float("nan"))
        kmaxes.append(float(kmax))
        for k in KL_QUOTED:
            if k <= kmax:
                at.setdefault(k, []).append((reward_at_kl(ca, k), reward_at_kl(cb, k)))
    gap, gap_sd = _ms(gaps) if gaps else (float("nan"), float("nan"))
    return {"a": a, "b": b, "gap": gap, "gap_sd": gap_sd, "per_seed": gaps,
            "share_above": float(np.mean(shares)) if shares else float("nan"),
            "kl_max": float(np.mean(kmaxes)) if kmaxes else float("nan"),
            "at": {k: tuple(np.mean(v, axis=0).tolist()) for k, v in at.items() if len(v) == len(gaps)}}


def summarize(results: dict) -> list[dict]:
    """One row per method × setting: final metrics and costs, mean and sd over seeds."""
    rows = []
    for method in methods_in(results):
        for param in sorted({r["param"] for r in runs_of(results, method)}):
            runs = runs_of(results, method, param)
            gains = [r["final"]["reward"] - results["reference"][str(r["seed"])]["reward"] for r in runs]
            row = {"method": method, "param": param, "param_name": runs[0]["param_name"], "n_seeds": len(runs),
                   "reward_gain": _ms(gains), "models_held": runs[0]["models_held"],
                   "params_held": runs[0]["params_held"]}
            for key in ("reward", "kl", "fluency"):
                row[key] = _ms([r["final"][key] for r in runs])
            row["train_s"] = _ms([r["train_s"] for r in runs])
            row["cpu_s"] = _ms([r.get("cpu_s", float("nan")) for r in runs])
            row["peak_mb"] = _ms([r["peak_mb"] for r in runs]) if all(r["peak_mb"] is not None for r in runs) \
                else (float("nan"), float("nan"))
            row["compute"] = {k: _ms([r["compute"][k] for r in runs])[0] for k in runs[0]["compute"]}
            rows.append(row)
    return rows


def best_settings(results: dict, min_fluency: float = MIN_FLUENCY) -> dict[str, dict]:
    """Per method, the setting with the highest final reward among those keeping ``min_fluency`` (mean over
    seeds); if none keeps it, the highest reward regardless (its row then says ``fluent: False``)."""
    best = {}
    for method in methods_in(results):
        rows = [r for r in summarize(results) if r["method"] == method]
        fluent = [r for r in rows if r["fluency"][0] >= min_fluency]
        pick = max(fluent or rows, key=lambda r: r["reward"][0])
        best[method] = {**pick, "fluent": bool(fluent)}
    return best


def _pm(ms: tuple[float, float], fmt: str) -> str:
    return f"{ms[0]:{fmt}} ± {ms[1]:{fmt.lstrip('+')}}"


def results_table(results: dict) -> str:
    """The comparison as a Markdown table (final evaluation of each run; mean ± sd over seeds), plus the stages
    that come before training (preference set, reward model)."""
    best = best_settings(results)
    head = ["method", "setting", "reward gain", "KL (nats)", "fluency", "wall s", "CPU s", "completions sampled",
            "RM calls", "ground-truth calls", "forward seqs", "backward seqs", "models held", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summarize(results):
        c = r["compute"]
        star = " ★" if best[r["method"]]["param"] == r["param"] else ""
        sym = "β" if r["param_name"] == "beta" else "kl"
        cells = [r["method"] + star, f"{sym}={r['param']:g}", _pm(r["reward_gain"], "+.3f"), _pm(r["kl"], ".2f"),
                 _pm((100 * r["fluency"][0], 100 * r["fluency"][1]), ".0f") + " %", _pm(r["train_s"], ".1f"),
                 _pm(r["cpu_s"], ".1f"),
                 f"{c['completions']:,.0f}", f"{c['reward_model_calls']:,.0f}", f"{c['ground_truth_calls']:,.0f}",
                 f"{c['forward']:,.0f}", f"{c['backward']:,.0f}",
                 f"{len(r['models_held'])} ({', '.join(r['models_held'])})", _pm(r["peak_mb"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _stages_text(results)


def _stages_text(results: dict) -> str:
    stages = list(results["stages"].values())
    pairs = stages[0]["pairs"]
    out = [f"Before training (per seed): the preference set = {pairs['completions']:,} completions sampled from "
           f"π_ref and {pairs['ground_truth_calls']:,} ground-truth labels "
           f"({_pm(_ms([s['pairs']['seconds'] for s in stages]), '.1f')} s); DPO and the reward model train on its "
           f"{pairs['n_train']:,} training pairs, PPO-GT does not use it."]
    if "reward_model" in stages[0]:
        rm = [s["reward_model"] for s in stages]
        out.append(f"Reward model (PPO only): {_pm(_ms([m['seconds'] for m in rm]), '.1f')} s, "
                   f"{rm[0]['compute']['forward']:,} forward / {rm[0]['compute']['backward']:,} backward seqs, "
                   f"held-out pairwise accuracy {_pm(_ms([m['heldout_accuracy'] for m in rm]), '.3f')} "
                   f"(BT-noise ceiling {np.mean([s['pairs']['bt_ceiling'] for s in stages]):.3f}).")
    seeds = ", ".join(results["reference"])
    out.append(f"★ = best setting (highest reward with fluency ≥ {MIN_FLUENCY:.0%}). Gains are over π_ref on the same "
               f"evaluation prompts; mean ± sd over seeds {seeds}. Counts are per run, evaluation excluded; a "
               f"'forward seq' is one sequence through one network (a sampled completion counts once). "
               f"Wall and CPU seconds exclude evaluation; CPU seconds do not depend on what else the machine runs.")
    out.append(_environment_text(results))
    return "\n".join(out) + "\n"


def _environment_text(results: dict) -> str:
    """Total wall time, and what it depends on: processes, threads, how busy the machine was."""
    env = results.get("environment", {})
    text = f"Total wall time {results['wall_s']:.0f} s"
    if env.get("workers"):
        text += (f" ({env['workers']} process(es) × {env.get('threads', 1)} torch thread(s) on {env.get('cpus')} "
                 f"CPUs")
        if env.get("load_average"):
            text += f"; load average at the end {env['load_average'][1]:.1f} over 5 min"
        text += ")"
    if env.get("seed_cpu_s"):
        text += ("; CPU seconds per seed (one process each): "
                 + ", ".join(f"{k}: {v:.0f}" for k, v in env["seed_cpu_s"].items()))
    return text + "."


def _relation(share: float) -> str:
    if share == 1.0:
        return "lies above"
    if share == 0.0:
        return "lies below"
    return "lies mostly above" if share >= 0.8 else "lies mostly below" if share <= 0.2 else "crosses"


def frontier_sentence(results: dict, a: str, b: str, min_fluency: float = 0.0) -> str:
    """One sentence on where ``a``'s frontier lies relative to ``b``'s, with the numbers."""
    g = matched_kl_gap(results, a, b, min_fluency)
    if np.isnan(g["gap"]):
        scope = f" with fluency ≥ {min_fluency:.0%}" if min_fluency else ""
        return f"{a} and {b} have no points to compare{scope}."
    per_seed = ", ".join(f"{x:+.3f}" for x in g["per_seed"])
    at = "; ".join(f"at KL {k:g}: {fa:+.3f} vs {fb:+.3f}" for k, (fa, fb) in g["at"].items())
    scope = f" (points with fluency ≥ {min_fluency:.0%} only)" if min_fluency else ""
    return (f"{a}'s reward–KL frontier {_relation(g['share_above'])} {b}'s{scope}: at matched KL (0 to "
            f"{g['kl_max']:.2f} nats) {a}'s reward is {abs(g['gap']):.3f} {'higher' if g['gap'] >= 0 else 'lower'} "
            f"on average (per seed {per_seed}; {a} ahead on {g['share_above']:.0%} of the KL grid). "
            f"Reward at matched KL, {a} vs {b}: {at}.")


def conclusions(results: dict) -> dict[str, str]:
    """The statements the README and notebook 06 make, computed from ``results``."""
    out, best, methods = {}, best_settings(results), methods_in(results)
    for m in methods:
        r = best[m]
        sym = "β" if r["param_name"] == "beta" else "KL coefficient"
        out[f"best {m}"] = (f"{m} at its best setting ({sym} {r['param']:g}) raises the mean ground-truth reward by "
                            f"{_pm(r['reward_gain'], '+.3f')} over π_ref, at KL {_pm(r['kl'], '.2f')} nats, with "
                            f"{r['fluency'][0]:.0%} of completions well-formed"
                            + ("." if r["fluent"] else f" (no setting kept {MIN_FLUENCY:.0%} fluency)."))
    for b in ("PPO", "PPO-GT"):
        if "DPO" in methods and b in methods:
            out[f"frontier DPO vs {b}"] = frontier_sentence(results, "DPO", b)
            if any((points(results, m)[:, 2] < MIN_FLUENCY).any() for m in ("DPO", b)):
                out[f"fluent frontier DPO vs {b}"] = frontier_sentence(results, "DPO", b, MIN_FLUENCY)
    out["completions"] = completions_sentence(results)
    return out


def completions_sentence(results: dict) -> str:
    """How many completions each method sampled (per run, at its best setting) and how many labels it needed."""
    pairs = next(iter(results["stages"].values()))["pairs"]
    parts, best = [], best_settings(results)
    for m in methods_in(results):
        row = best[m]["compute"]
        if m == "DPO":
            parts.append(f"DPO sampled 0 completions while training (offline: it reuses the {pairs['completions']:,} "
                         f"completions sampled once from π_ref for the {pairs['ground_truth_calls']:,} labelled pairs)")
        elif m == "PPO":
            parts.append(f"PPO sampled {row['completions']:,.0f} completions per run from its own policy (online) "
                         f"and scored them with the reward model, on top of the same preference set")
        else:
            parts.append(f"PPO-GT sampled {row['completions']:,.0f} per run and asked the ground truth "
                         f"{row['ground_truth_calls']:,.0f} times (one label per completion)")
    return "; ".join(parts) + "."


def plot_frontier(results: dict, highlight: dict[str, float] | None = None):
    """Reward vs KL (frontiers), fluency vs KL, and reward vs completions sampled; seed means.

    Hollow markers: fluency below the target. ``highlight`` ({method: setting}) draws those runs' trajectories.
    """
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    pairs = next(iter(results["stages"].values()))["pairs"]["completions"]
    for m in methods_in(results):
        p = points(results, m)
        fluent = p[:, 2] >= MIN_FLUENCY
        for ax, y in ((axes[0], 1), (axes[1], 2)):
            ax.scatter(p[fluent, 0], p[fluent, y], color=COLORS[m], s=18, alpha=0.7)
            ax.scatter(p[~fluent, 0], p[~fluent, y], facecolors="none", edgecolors=COLORS[m], s=18)
        kl, best = frontier_curve(p[:, 0], p[:, 1])
        axes[0].plot(kl, best, color=COLORS[m], lw=2, label=f"{m} frontier")
        for param in sorted({r["param"] for r in runs_of(results, m)}):
            runs = runs_of(results, m, param)
            x = [np.mean([r["evals"][i]["completions"] for r in runs]) + (pairs if m != "PPO-GT" else 0)
                 for i in range(1, len(runs[0]["evals"]))]
            y = [np.mean([r["evals"][i]["reward"] for r in runs]) for i in range(1, len(runs[0]["evals"]))]
            axes[2].plot(x, y, "o-", color=COLORS[m], ms=3, alpha=0.6)
        for param in [(highlight or {}).get(m)] if highlight and m in highlight else []:
            runs = runs_of(results, m, param)
            traj = np.array([[np.mean([r["evals"][i][k] for r in runs]) for k in ("kl", "reward")]
                             for i in range(len(runs[0]["evals"]))])
            axes[0].plot(traj[:, 0], traj[:, 1], "--", color=COLORS[m], lw=1.5, marker="x",
                         label=f"{m} {'β' if m == 'DPO' else 'kl'}={param:g} run")
    axes[0].set(xlabel="KL(π‖π_ref), nats", ylabel="mean ground-truth reward", title="reward–KL frontier")
    axes[1].axhline(MIN_FLUENCY, color="gray", ls=":")
    axes[1].set(xlabel="KL(π‖π_ref), nats", ylabel="fluency (share well-formed)", title="fluency")
    axes[2].set(xscale="log", xlabel="completions sampled (preference set + training)",
                ylabel="mean ground-truth reward", title="sample efficiency (every setting)")
    axes[2].xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[2].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    axes[2].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_outputs(results: dict, out: Path) -> None:
    """``results.json``, ``table.md`` (table and conclusions) and ``frontier.png`` under ``out``."""
    atomic_write_json(out / "results.json", results)
    text = results_table(results) + "\n" + "\n\n".join(f"- {s}" for s in conclusions(results).values()) + "\n"
    atomic_write_text(out / "table.md", "# PPO vs DPO on the toy world\n\n" + text)
    save_figure(plot_frontier(results), out / "frontier.png")


def write_asset(results: dict, path: str | Path) -> None:
    """``results`` as compact JSON (the form shipped in ``notebooks/assets/`` for notebook 06 to open)."""
    atomic_write_text(path, json.dumps(results, separators=(",", ":"), sort_keys=True) + "\n")
