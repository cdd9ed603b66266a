"""The comparison in words: the cost table and the conclusions that the README, ``table.md`` and notebook 06 state,
each computed from the numbers of :mod:`dpo_teach.frontier` (nothing here is typed in by hand).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpo_teach.frontier import (
    MIN_FLUENCY,
    USES_PAIRS,
    USES_REWARD_MODEL,
    best_settings,
    evaluation_noise,
    matched_kl_gap,
    mean_sd,
    methods_in,
    pair_completions,
    plot_frontier,
    preference_pairs,
    runs_of,
    summarize,
)
from dpo_teach.plots import course_figures, save_figure
from dpo_teach.utils import atomic_files, json_text


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
                 # one decimal: 69.6 % read as "70 %" beside a 70 % cut that it misses
                 _pm((100 * r["fluency"][0], 100 * r["fluency"][1]), ".1f") + " %", _pm(r["train_s"], ".1f"),
                 _pm(r["cpu_s"], ".1f"),
                 f"{c['completions']:,.0f}", f"{c['reward_model_calls']:,.0f}", f"{c['ground_truth_calls']:,.0f}",
                 f"{c['forward']:,.0f}", f"{c['backward']:,.0f}",
                 f"{len(r['models_held'])} ({', '.join(r['models_held'])})", _pm(r["peak_mb"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _stages_text(results)


def _stages_text(results: dict) -> str:
    stages = list(results["stages"].values())
    pairs = stages[0]["pairs"]
    methods = methods_in(results)
    without = [m for m in methods if m not in USES_PAIRS]
    trainers = (["DPO"] if "DPO" in methods else []) + (["the reward model"] if "reward_model" in stages[0] else [])
    uses = [f"{' and '.join(trainers)} train{'s' if len(trainers) == 1 else ''} on its {pairs['n_train']:,} training "
            "pairs"] if trainers else []
    out = [f"Before training (per seed): the preference set = {pairs['completions']:,} completions sampled from "
           f"π_ref and {pairs['ground_truth_calls']:,} ground-truth labels "
           f"({_pm(mean_sd([s['pairs']['seconds'] for s in stages]), '.1f')} s); "
           + "; ".join(uses + ([f"{', '.join(without)} do{'es' if len(without) == 1 else ''} not use it"]
                               if without else [])) + "."]
    if "reward_model" in stages[0]:
        rm = [s["reward_model"] for s in stages]
        users = ", ".join(m for m in methods if m in USES_REWARD_MODEL)
        out.append(f"Reward model ({users} only): {_pm(mean_sd([m['seconds'] for m in rm]), '.1f')} s, "
                   f"{rm[0]['compute']['forward']:,} forward / {rm[0]['compute']['backward']:,} backward seqs, "
                   f"held-out pairwise accuracy {_pm(mean_sd([m['heldout_accuracy'] for m in rm]), '.3f')} "
                   f"(BT-noise ceiling {np.mean([s['pairs']['bt_ceiling'] for s in stages]):.3f}).")
    seeds = ", ".join(results["reference"])
    spread = (f"mean ± sd over seeds {seeds}" if len(results["reference"]) > 1 else
              f"one seed ({seeds}): every ± 0 means no spread was measured, not that there is none")
    out.append(f"★ = best setting (highest reward with fluency ≥ {MIN_FLUENCY:.0%}). Gains are over π_ref on the same "
               f"evaluation prompts; {spread}. Counts are per run, evaluation excluded; a "
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


def frontier_sentence(results: dict, a: str, b: str, min_fluency: float = MIN_FLUENCY) -> str:
    """One sentence on where ``a``'s frontier lies relative to ``b``'s, with the numbers (``matched_kl_gap``)."""
    g = matched_kl_gap(results, a, b, min_fluency)
    scope = f" (points with fluency ≥ {min_fluency:.0%})" if min_fluency else ""
    if not g["seeds"]:
        return f"{a} and {b} have no KL range where both have measured points{scope}: nothing to compare."
    per_seed = _per_seed(g)
    some = _some_seeds(g) + ", " if g["seeds"] < g["of_seeds"] else ""
    at = "; ".join(f"at KL {k:g}: {fa:.3f} vs {fb:.3f}" for k, (fa, fb) in g["at"].items())
    return (f"{a}'s reward–KL frontier {_relation(g['share_above'])} {b}'s{scope}: {some}at matched KL, from "
            f"{g['kl_min']:.2f} to {g['kl_max']:.2f} nats where both have measured points, {a}'s reward is "
            f"{abs(g['gap']):.3f} {'higher' if g['gap'] >= 0 else 'lower'} on average (per seed {per_seed}; {a} "
            f"ahead on {g['share_above']:.0%} of the KL grid{_noise_note(results, g)})"
            + (f". Mean reward at matched KL, {a} vs {b}: {at}." if at else "."))


def _noise_note(results: dict, g: dict) -> str:
    """``; the gap is within the noise, standard error ≈ 0.031``: the rule of :func:`against_noise`, for a
    comparison sentence (whose "lies above" words only say on how much of the KL grid one frontier is higher); empty
    for results saved before the evaluations kept their reward's spread."""
    if "reward_std" not in results["runs"][0]["final"]:
        return ""
    clear, _ = against_noise(results, g)
    se = gap_standard_error(results, g)
    return f"; the gap is {'clear of' if clear else 'within'} the noise, standard error ≈ {se:.3f}"


def _per_seed(g: dict) -> str:
    return ", ".join(f"{x:+.3f}" for x in g["per_seed"])


def _some_seeds(g: dict) -> str:
    """``on 1 of 2 seeds only (…)``: a gap measured on only some of the seeds."""
    if g["seeds"] == 1:
        return (f"on 1 of {g['of_seeds']} seeds only (only that one has a KL range where both have measured points; "
                "one seed's gap is no agreement between seeds)")
    return f"on {g['seeds']} of {g['of_seeds']} seeds only (only those have a KL range where both have measured points)"


def headline(results: dict, a: str, b: str) -> str:
    """``a`` against ``b`` in one line (notebook 06's): where ``a``'s frontier lies (in :func:`frontier_sentence`'s
    words: above, mostly above, crosses ...), the mean gap at matched KL, per seed, and against the noise."""
    g = matched_kl_gap(results, a, b)
    if not g["seeds"]:
        return f"{a}'s and {b}'s fluent points share no KL range on any seed, so nothing compares them here."
    some = f"; {_some_seeds(g)}" if g["seeds"] < g["of_seeds"] else ""
    return (f"{a}'s frontier {_relation(g['share_above'])} {b}'s, {abs(g['gap']):.3f} reward "
            f"{'higher' if g['gap'] >= 0 else 'lower'} on average at matched KL (KL {g['kl_min']:.1f} to "
            f"{g['kl_max']:.1f} nats; per seed {_per_seed(g)}{some}); {against_noise(results, g)[1]}.")


def against_noise(results: dict, g: dict) -> tuple[bool, str]:
    """Whether the gap ``g`` (a :func:`matched_kl_gap` with at least one seed) is clear of the evaluation noise: more
    than two standard errors (:func:`gap_standard_error`) and the same sign on every seed. A rule of thumb, not a
    test: with two seeds the spread between them is itself barely measured. Returns (clear, the clause that says
    so)."""
    se = gap_standard_error(results, g)
    clear = abs(g["gap"]) > 2 * se and len({bool(x > 0) for x in g["per_seed"]}) == 1
    return clear, f"{_se_text(g, se)}, so the gap is {'clear of' if clear else 'within'} the noise"


# Frontier comparisons the conclusions state, each with what it isolates (a, b, what a removes or adds vs b)
STORY = [("DPO", "PPO", "DPO drops the reward model, the value model and sampling"),
         ("DPO", "PPO-GT", "offline pairs vs online ground-truth rewards"),
         ("GRPO", "PPO", "GRPO drops the value model (group baseline instead)"),
         ("GRPO-GT", "PPO-GT", "the same on the ground-truth reward"),
         ("RLOO", "GRPO", "leave-one-out baseline and sequence-level ratio vs group-normalised, per-token"),
         ("online-DPO", "DPO", "fresh on-policy pairs each round vs one offline set"),
         ("online-DPO", "online-DPO-fixed", "reference refreshed between rounds vs kept at π_ref"),
         ("online-DPO-RM", "online-DPO", "pairs labelled by the reward model vs by the ground truth"),
         ("online-DPO", "GRPO-GT", "online pairs with one label each vs a score for every sample")]


def gap_table(results: dict, min_fluency: float = MIN_FLUENCY) -> str:
    """Markdown: the matched-KL frontier gap of every pair of methods (row minus column, mean ± sd over seeds)."""
    methods = methods_in(results)
    if len(methods) < 2:
        return f"Only one method ({', '.join(methods)}): no frontier gaps to compare.\n"
    lines = ["| row − column | " + " | ".join(methods[1:]) + " |", "|" + "---|" * len(methods)]
    for i, a in enumerate(methods[:-1]):
        cells = ["" if j <= i else gap_text(matched_kl_gap(results, a, b, min_fluency))
                 for j, b in enumerate(methods)]
        lines.append(f"| {a} | " + " | ".join(cells[1:]) + " |")
    noise = evaluation_noise(results)
    scope = f"points with fluency ≥ {min_fluency:.0%}; " if min_fluency else ""
    return ("\n".join(lines) + f"\n\nReward gap at matched KL ({scope}from the larger of the two methods' lowest "
            f"evaluated KL to the smaller of their highest), row minus column, mean ± sd over seeds. Evaluation "
            f"noise: one evaluation's standard error ≈ {noise:.3f} reward, so a "
            f"difference of two frontier points has a standard error ≈ {noise * np.sqrt(2):.3f}.\n")


def gap_text(g: dict, size_only: bool = False) -> str:
    """``+0.022 ± 0.015`` (mean ± sd over seeds), or ``+0.046 (1 of 2 seeds)`` when only some seeds have a KL range
    that both methods measured: one seed's gap is no agreement between seeds. ``size_only``: the gap's size, no
    sign (``0.022 ± 0.015``), for a sentence that says "below" itself."""
    gap, fmt = (abs(g["gap"]), ".3f") if size_only else (g["gap"], "+.3f")
    if g["seeds"] == g["of_seeds"] and g["seeds"] > 1:
        return _pm((gap, g["gap_sd"]), fmt)
    return "—" if not g["seeds"] else f"{gap:{fmt}} ({g['seeds']} of {g['of_seeds']} seeds)"


def ranking(results: dict, min_fluency: float = MIN_FLUENCY) -> list[tuple[str, float]]:
    """Methods ordered by their mean matched-KL gap against every other method (fluent points only by default)."""
    methods = methods_in(results)
    score = {}
    for a in methods:
        gaps = [matched_kl_gap(results, a, b, min_fluency)["gap"] for b in methods if b != a]
        score[a] = float(np.nanmean(gaps)) if not all(np.isnan(gaps)) else float("nan")
    return sorted(score.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-np.inf))


def verdict(results: dict) -> str:
    """Which method's fluent frontier lies highest at matched KL here, by how much, against the evaluation noise."""
    order = ranking(results)
    if len(order) < 2:
        return "Only one method in these results: nothing to compare."
    (top, _), (second, _) = order[0], order[1]
    g = matched_kl_gap(results, top, second, MIN_FLUENCY)
    ranked = ("Ranking by mean gap against all others (each gap over the KL range the two share, so a method whose "
              "points span a short range is ranked on that range alone): "
              + ", ".join(f"{m} {round(v, 3) + 0.0:+.3f}" for m, v in order) + ".")
    head = f"Verdict at matched KL (points with fluency ≥ {MIN_FLUENCY:.0%}): "
    if not g["seeds"]:
        return (head + f"{top} ranks first, but it and the runner-up {second} have no KL range where both have "
                f"measured points, so nothing compares the two directly. " + ranked)
    clear, noise = against_noise(results, g)
    per_seed = _per_seed(g)
    if g["gap"] < 0:  # first against all others, yet below the runner-up where the two were measured
        return (head + f"{top} ranks first, yet lies {gap_text(g, size_only=True)} reward below the runner-up {second} "
                f"where both were measured (per seed {per_seed}); {noise}. " + ranked)
    return (head + f"{top}'s frontier lies highest, {gap_text(g)} reward above the runner-up {second} (per seed "
            f"{per_seed}); {noise}" + ("." if clear else ": a tie on this toy world.") + " " + ranked)


def gap_standard_error(results: dict, g: dict) -> float:
    """Standard error of ``g``'s gap (a :func:`matched_kl_gap`), its mean over ``g["seeds"]`` seeds: each seed's gap
    is a difference of two evaluations (standard error ``evaluation_noise · √2``), or varies between seeds by its
    sd, whichever is larger; the mean over independent seeds divides that by √seeds. ``g`` has at least one seed."""
    per_seed = evaluation_noise(results) * np.sqrt(2)
    if g["seeds"] > 1:  # with one seed, gap_sd is nan: no spread measured
        per_seed = max(per_seed, g["gap_sd"])
    return float(per_seed / np.sqrt(g["seeds"]))


def _se_text(g: dict, se: float) -> str:
    if g["seeds"] <= 1:
        return f"a difference of two evaluations has a standard error ≈ {se:.3f}"
    return (f"its mean over {g['seeds']} seeds has a standard error ≈ {se:.3f} (the larger of a difference's "
            "evaluation noise, √2 times one evaluation's, and the spread between seeds, over √seeds)")


def length_sentence(results: dict) -> str | None:
    """What per-token instead of per-sequence loss averaging did to completion length (GRPO-GT vs GRPO-GT/token), and
    whether per-sequence averaging made completions longer on every seed (the same seed's two runs compared), and
    where that differs, at how many β it did on the mean over seeds (a mean can be longer while one seed is not)."""
    methods = methods_in(results)
    if not {"GRPO-GT", "GRPO-GT/token"} <= set(methods):
        return None
    rows = {(r["method"], r["param"]): r for r in summarize(results)}
    parts, longer, on_mean = [], [], []
    for (m, param), r in sorted(rows.items()):
        if m == "GRPO-GT" and ("GRPO-GT/token", param) in rows:
            t = rows[("GRPO-GT/token", param)]
            parts.append(f"β={param:g}: {_pm(r['length'], '.1f')} (per sequence) vs {_pm(t['length'], '.1f')} "
                         f"(per token) tokens, mean reward {r['reward'][0]:.3f} vs {t['reward'][0]:.3f}")
            per_token = {run["seed"]: run["final"]["length"] for run in runs_of(results, "GRPO-GT/token", param)}
            differences = [run["final"]["length"] - per_token[run["seed"]]
                           for run in runs_of(results, m, param) if run["seed"] in per_token]
            longer.append(bool(differences) and all(d > 0.1 for d in differences))
            on_mean.append(r["length"][0] - t["length"][0] > 0.1)
    if not parts:
        return None
    seeds = len(results["reference"])
    ref = np.mean([v.get("length", np.nan) for v in results["reference"].values()])
    shown = (f"per-sequence averaging gave longer completions than per-token averaging"
             f"{' on every seed' if seeds > 1 else ''} at {sum(longer)} of the {len(longer)} β"
             + (f" (on the mean over seeds: at {sum(on_mean)})" if seeds > 1 and sum(on_mean) != sum(longer) else "")
             + (", on one seed: with no second seed, no spread was measured, so this says nothing yet about a length "
                "bias." if seeds < 2 else ": the length bias shows here." if all(longer) else
                ", so the length bias does not show clearly at this size."))
    return (f"Loss averaging and completion length (GRPO-GT, final evaluation, π_ref {ref:.1f} tokens): "
            + "; ".join(parts) + f"; {shown}")


NEAR_MISS = 0.02  # a setting this close under the fluency cut, with more reward than the best, is named beside it


def _near_miss(rows: list[dict], best: dict, sym: str) -> str:
    """The settings of one method (``rows``, :func:`frontier.summarize`'s) that gained more than its best setting and
    missed the fluency cut by less than ``NEAR_MISS``: the best setting, and so the method's best gain, hangs on a
    fraction of a point there (in the shipped comparison GRPO-GT's β 0.1 kept 69.6 %)."""
    missed = [row for row in rows if best["fluent"] and row["reward"][0] > best["reward"][0]
              and MIN_FLUENCY - NEAR_MISS <= row["fluency"][0] < MIN_FLUENCY]
    return "".join(f"; {sym} {row['param']:g} gained {row['reward_gain'][0]:+.3f} but kept {row['fluency'][0]:.1%} "
                   f"well-formed, {100 * (MIN_FLUENCY - row['fluency'][0]):.1f} points under the {MIN_FLUENCY:.0%} "
                   "cut, so the best setting hangs on a fraction of a point" for row in missed)


def conclusions(results: dict) -> dict[str, str]:
    """The statements the README and notebook 06 make, computed from ``results``."""
    out, methods, summary = {}, methods_in(results), summarize(results)
    best = best_settings(results, summary=summary)
    for m in methods:
        r = best[m]
        sym = "β" if r["param_name"] == "beta" else "KL coefficient"
        out[f"best {m}"] = (f"{m} at its best setting ({sym} {r['param']:g}) raises the mean ground-truth reward by "
                            f"{_pm(r['reward_gain'], '+.3f')} over π_ref, at KL {_pm(r['kl'], '.2f')} nats, with "
                            f"{r['fluency'][0]:.0%} of completions well-formed"
                            + ("" if r["fluent"] else f" (no setting kept {MIN_FLUENCY:.0%} fluency)")
                            + _near_miss([row for row in summary if row["method"] == m], r, sym) + ".")
    for a, b, _ in STORY:
        if a in methods and b in methods:
            out[f"frontier {a} vs {b}"] = frontier_sentence(results, a, b)
    out["completions"] = completions_sentence(results)
    length = length_sentence(results)
    if length:
        out["length"] = length
    if len(methods) > 2 and "reward_std" in results["runs"][0]["final"]:
        out["verdict"] = verdict(results)
    return out


def completions_sentence(results: dict) -> str:
    """How many completions each method sampled (per run, at its best setting) and how many labels it needed."""
    pairs = preference_pairs(results)
    parts, best = [], best_settings(results)
    for m in methods_in(results):
        row = best[m]["compute"]
        if m == "DPO":
            parts.append(f"DPO sampled 0 completions while training (offline: it reuses the "
                         f"{pair_completions(results):,} completions of its {pairs['n_train']:,} training pairs, "
                         "sampled once from π_ref; with the "
                         f"held-out pairs, {pairs['completions']:,} completions and "
                         f"{pairs['ground_truth_calls']:,} labels)")
        elif m == "online-DPO-RM":
            parts.append(f"{m} sampled {row['completions']:,.0f} per run from its own policy, in pairs, and let the "
                         f"reward model order each pair ({row['reward_model_calls']:,.0f} scores, no new labels)")
        elif m in USES_REWARD_MODEL:
            parts.append(f"{m} sampled {row['completions']:,.0f} completions per run from its own policy (online) "
                         f"and scored them with the reward model, on top of the same preference set")
        elif m.startswith("online-DPO"):
            parts.append(f"{m} sampled {row['completions']:,.0f} per run from its own policy, in pairs, and asked the "
                         f"ground truth {row['ground_truth_calls']:,.0f} times (one noisy label per pair)")
        else:
            parts.append(f"{m} sampled {row['completions']:,.0f} per run and asked the ground truth "
                         f"{row['ground_truth_calls']:,.0f} times (one score per completion)")
    return "; ".join(parts) + "."


def write_outputs(results: dict, out: Path) -> str:
    """``results.json``, ``table.md`` (table and conclusions) and ``frontier.png`` under ``out``; returns the text
    written to ``table.md`` below its title (what the command prints)."""
    text = (results_table(results) + "\n## Frontier gaps at matched KL\n\n" + gap_table(results) + "\n"
            + "\n\n".join(f"- {s}" for s in conclusions(results).values()) + "\n")
    with course_figures():  # drawn as notebook 06 and the README draw it
        figure = plot_frontier(results)  # everything computed first: a Ctrl-C meanwhile leaves an earlier run whole
        # the three replace an earlier run's together: a Ctrl-C while they are written or swapped in leaves it whole
        with atomic_files([out / "results.json", out / "table.md", out / "frontier.png"]) as (json_tmp, table_tmp,
                                                                                              png):
            json_tmp.write_text(json_text(results), encoding="utf-8")
            table_tmp.write_text("# The preference-optimisation family on the toy world\n\n" + text, encoding="utf-8")
            save_figure(figure, png)
    return text


