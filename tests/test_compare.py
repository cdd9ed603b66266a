"""The comparison: frontier arithmetic on known points, and the fast mode end to end through the command."""

import json
import os

import numpy as np
import pytest

from dpo_teach import conclusions, frontier
from dpo_teach.cli import main
from dpo_teach.compare import FAST_METHODS, CompareConfig, jobs
from dpo_teach.plots import save_figure
from dpo_teach.runs import eval_steps

# The seeds run in as many processes as there are cores, up to two: these tests need the two.
TWO_SEED_PROCESSES = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the seeds need two processes (2 cores)")


def _run(method, param, seed, pts, fluency=0.95, completions=0):
    evals = [{"step": i, "completions": completions * i, "kl": kl, "reward": r, "fluency": fluency}
             for i, (kl, r) in enumerate(pts)]
    return {"method": method, "param": param, "param_name": "beta" if method == "DPO" else "kl_coef", "seed": seed,
            "evals": evals, "final": evals[-1], "train_s": 1.0 + seed, "peak_mb": 10.0,
            "compute": {"completions": completions * (len(pts) - 1), "reward_model_calls": 0,
                        "ground_truth_calls": 0, "forward": 100, "backward": 50},
            "models_held": ["policy", "reference"], "params_held": 1000}


def fake_results():
    """DPO's frontier: (0, 0) → (0.5, 0.3) → (1, 0.5) → (2, 0.7); PPO's: (0, 0) → (1, 0.4) → (2, 0.6); both seeds."""
    runs = []
    for seed in (0, 1):
        runs += [_run("DPO", 1.0, seed, [(0, 0), (0.5, 0.3), (1, 0.5)]),
                 _run("DPO", 0.1, seed, [(0, 0), (2, 0.7), (3, 0.65)], fluency=0.5),
                 _run("PPO", 0.1, seed, [(0, 0), (1, 0.4), (1.5, 0.3)], completions=128),
                 _run("PPO", 0.02, seed, [(0, 0), (2, 0.6)], completions=128)]
    stage = {"pairs": {"seconds": 1.0, "completions": 200, "ground_truth_calls": 100, "n_train": 80, "n_heldout": 20,
                       "bt_ceiling": 0.9, "bt_temperature": 0.1}}
    return {"runs": runs, "reference": {"0": {"reward": 0.0}, "1": {"reward": 0.0}},
            "stages": {"0": stage, "1": stage}, "wall_s": 5.0}


def test_frontier_keeps_only_pareto_points():
    kl, reward = frontier.frontier_curve(np.array([0.0, 1.0, 0.5, 2.0, 3.0]), np.array([0.0, 0.5, 0.6, 0.55, 0.9]))
    assert kl.tolist() == [0.0, 0.5, 3.0] and reward.tolist() == [0.0, 0.6, 0.9]
    curve = (kl, reward)
    assert frontier.reward_at_kl(curve, 0.25) == pytest.approx(0.3)  # straight line between frontier points
    assert frontier.reward_at_kl(curve, 5.0) == pytest.approx(0.9)  # flat after the last point
    assert np.isnan(frontier.reward_at_kl(curve, -1.0))


def test_matched_kl_gap_on_known_frontiers():
    results = fake_results()
    g = frontier.matched_kl_gap(results, "DPO", "PPO", min_fluency=0.0)  # every point, the disfluent ones too
    # where both have measured points: from PPO's lowest evaluated KL (1; DPO's is 0.5) to PPO's highest (2)
    assert (g["kl_min"], g["kl_max"]) == pytest.approx((1.0, 2.0))
    assert frontier.lowest_evaluated_kl(results, "DPO") == 0.5 and frontier.lowest_evaluated_kl(results, "PPO") == 1.0
    assert g["share_above"] == 1.0 and g["gap"] > 0 and g["gap_sd"] == pytest.approx(0.0)
    assert g["at"][1.0] == pytest.approx((0.5, 0.4)) and g["at"][2.0] == pytest.approx((0.7, 0.6))
    assert 0.5 not in g["at"] and 4.0 not in g["at"]  # outside what both measured: not quoted
    assert "lies above" in conclusions.frontier_sentence(results, "DPO", "PPO", min_fluency=0.0)
    reverse = frontier.matched_kl_gap(results, "PPO", "DPO", min_fluency=0.0)
    assert reverse["gap"] == pytest.approx(-g["gap"]) and reverse["share_above"] == 0.0
    # by default only points that keep the fluency target: DPO's disfluent run (fluency 0.5) and its (2, 0.7) point
    # go, so DPO reaches only KL 1
    fluent = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert fluent["at"][1.0] == pytest.approx((0.5, 0.4)) and 2.0 not in fluent["at"] and fluent["kl_max"] == 1.0
    assert "(points with fluency ≥ 70%)" in conclusions.frontier_sentence(results, "DPO", "PPO")


def test_a_method_evaluated_late_is_not_judged_by_the_line_from_pi_ref():
    """Below a method's first evaluation its frontier is only the straight line from π_ref (KL 0): comparing there
    would rank a method evaluated early above one evaluated late whatever they reach. A has points at KL 0.2 and 1,
    B only at KL 1, where B is higher: B is ahead."""
    runs = []
    for seed in (0, 1):
        runs += [_run("DPO", 1.0, seed, [(0, 0), (0.2, 0.3), (1.0, 0.45)]),
                 _run("PPO", 0.1, seed, [(0, 0), (1.0, 0.5)])]
    results = {**fake_results(), "runs": runs}
    g = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert (g["kl_min"], g["kl_max"]) == (1.0, 1.0)
    assert g["gap"] == pytest.approx(-0.05) and g["share_above"] == 0.0
    # when one method's points all lie below the other's lowest, nothing was measured at the same KL
    for run in runs:
        if run["method"] == "DPO":
            run["evals"] = run["evals"][:2]
    g = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert np.isnan(g["gap"]) and g["per_seed"] == [] and g["at"] == {} and g["seeds"] == 0
    assert "no KL range where both have measured points" in conclusions.frontier_sentence(results, "DPO", "PPO")


def test_a_gap_measured_on_one_seed_does_not_pass_for_two_that_agree():
    results = fake_results()
    for run in results["runs"]:  # seed 1's DPO never gets past KL 0.6: below PPO's lowest evaluation (1)
        if run["method"] == "DPO" and run["seed"] == 1:
            run["evals"] = [{**e, "kl": min(e["kl"], 0.6)} for e in run["evals"]]
    g = frontier.matched_kl_gap(results, "DPO", "PPO", min_fluency=0.0)
    assert (g["seeds"], g["of_seeds"], len(g["per_seed"])) == (1, 2, 1) and np.isnan(g["gap_sd"])
    assert conclusions.gap_text(g) == f"{g['gap']:+.3f} (1 of 2 seeds)"
    sentence = conclusions.frontier_sentence(results, "DPO", "PPO", 0.0)
    assert "lies above PPO's: on 1 of 2 seeds only (only that one has a KL range where both have measured points; " \
        "one seed's gap is no agreement between seeds), at matched KL" in sentence, sentence
    assert "; on 1 of 2 seeds only (only that one" in conclusions.headline(
        {**results, "config": {"n_eval_prompts": 100}, "runs": [{**r, "final": {**r["final"], "reward_std": 0.5}}
                                                                  for r in results["runs"]]}, "DPO", "PPO")
    for run in results["runs"]:
        run["final"]["reward_std"] = 0.5
    table = conclusions.gap_table({**results, "config": {"n_eval_prompts": 100}}, 0.0)
    assert f"| DPO | {g['gap']:+.3f} (1 of 2 seeds) |" in table and "±" not in table.split("\n\n")[0]


def test_a_setting_just_under_the_fluency_cut_is_named_beside_the_best():
    """Notebook 06 said GRPO-GT's best setting was β 0.5 (+0.46) beside GRPO-GT/token's β 0.1 (+0.67), as if per-token
    averaging were far better: GRPO-GT's β 0.1 (+0.68) had missed the 70 % cut by 0.4 points, and nothing said so."""
    results = fake_results()
    for run in results["runs"]:
        if (run["method"], run["param"]) == ("DPO", 0.1):
            for evaluation in run["evals"]:
                evaluation["fluency"] = 0.69
    said = conclusions.conclusions(results)["best DPO"]
    assert said.startswith("DPO at its best setting (β 1) raises") and said.endswith(
        "well-formed; β 0.1 gained +0.650 but kept 69.0% well-formed, 1.0 points under the 70% cut, so the best "
        "setting hangs on a fraction of a point."), said
    assert "β 0.1" not in conclusions.conclusions(fake_results())["best DPO"]  # at 50 % it is no near miss


def test_the_figure_draws_each_frontier_as_the_comparisons_compute_it():
    """The drawn frontier joins fluent points only (DPO's (2, 0.7) at fluency 0.5 is no part of it), solid between
    measured points and dotted from π_ref to the first evaluation, which no evaluation measured."""
    import matplotlib.pyplot as plt

    fig = frontier.plot_frontier(fake_results())
    lines = {(line.get_label(), line.get_linestyle()): line.get_xydata().tolist() for line in fig.axes[0].lines}
    (below,) = fig.legends  # the figure's legend, under the panels: on the reward panel it hid the lines
    legend = [t.get_text() for t in below.get_texts()]
    assert fig.axes[0].get_legend() is None
    reward_panel, fluency_panel = fig.axes[0].get_xlim(), fig.axes[1].get_xlim()
    note = [t.get_text() for t in fig.axes[0].texts]
    title = fig.axes[0].get_title()
    plt.close(fig)
    # the reward panel ends past the highest fluent KL (2), so the disfluent DPO point at KL 3 (a seed mean) does not
    # squeeze the frontiers; the fluency panel shows it, and a note counts it; the legend says what dotted and
    # hollow mean
    assert 2.0 < reward_panel[1] < 3.0 and fluency_panel[1] > 3.0
    assert note == ["1 point(s) beyond KL 2.2, all with fluency < 70%: see the fluency panel"], note
    assert "π_ref → first evaluation (drawn, not measured)" in legend and "hollow: fluency < 70%" in legend
    assert title == "reward–KL frontier (each point: mean of 2 seeds)"  # the sentences compare seed by seed
    assert lines[("DPO frontier", "-")] == [[0.5, 0.3], [1.0, 0.5]]
    assert lines[("PPO frontier", "-")] == [[1.0, 0.4], [2.0, 0.6]]
    dotted = sorted(xy for (label, style), xy in lines.items() if style == ":")
    assert dotted == [[[0.0, 0.0], [0.5, 0.3]], [[0.0, 0.0], [1.0, 0.4]]]


def test_best_setting_must_keep_the_fluency_target():
    best = frontier.best_settings(fake_results())
    assert best["DPO"]["param"] == 1.0 and best["DPO"]["fluent"]  # β = 0.1 has more reward but 50 % fluency
    assert best["PPO"]["param"] == 0.02
    table = conclusions.results_table(fake_results())
    assert "| DPO ★ | β=1 |" in table and "| DPO | β=0.1 |" in table and "50.0 ± 0.0 %" in table
    text = conclusions.conclusions(fake_results())
    assert "fluent frontier DPO vs PPO" not in text, "one filter for every matched-KL statement: fluent points"
    assert "(points with fluency ≥ 70%)" in text["frontier DPO vs PPO"]
    assert "PPO sampled 128 completions" in text["completions"]


def _fake_family():
    """fake_results plus GRPO-GT and GRPO-GT/token runs (with completion lengths) and an online-DPO run."""
    results = fake_results()
    for seed in (0, 1):
        for method, length in (("GRPO-GT", 9.0), ("GRPO-GT/token", 12.0)):
            run = _run(method, 0.1, seed, [(0, 0), (1, 0.45)], completions=128)
            run["param_name"] = "beta"
            run["final"] = run["evals"][-1] = {**run["evals"][-1], "length": length + seed}
            results["runs"].append(run)
        results["runs"].append({**_run("online-DPO", 3.0, seed, [(0, 0), (1.5, 0.55)], completions=600),
                                "param_name": "beta"})
    for run in results["runs"]:
        run["final"]["reward_std"] = 0.5
    results["config"] = {"n_eval_prompts": 100}
    return results


def test_gap_table_covers_every_pair_and_states_the_noise():
    results = _fake_family()
    table = conclusions.gap_table(results)
    header, _, *rows = table.split("\n\n")[0].splitlines()
    methods = frontier.methods_in(results)
    assert methods == ["DPO", "online-DPO", "PPO", "GRPO-GT", "GRPO-GT/token"]  # frontier.METHODS order
    assert header.split(" | ")[1:] == [*methods[1:-1], methods[-1] + " |"]
    assert len(rows) == len(methods) - 1 and rows[0].startswith("| DPO | ")
    g = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert f"{g['gap']:+.3f} ± {g['gap_sd']:.3f}" in rows[0]
    assert frontier.evaluation_noise(results) == pytest.approx(0.05)  # 0.5 / √100
    assert "≈ 0.050 reward" in table and "≈ 0.071" in table  # one evaluation; a difference of two
    text = conclusions.conclusions(results)
    assert "frontier online-DPO vs DPO" in text
    assert "0.1: 9.5 ± 0.7 (per sequence) vs 12.5 ± 0.7 (per token) tokens" in text["length"]
    assert "online-DPO sampled 600 per run" in text["completions"]


def test_a_lead_every_seed_agrees_on_is_judged_against_the_noise_of_the_mean_over_seeds():
    """Each seed's gap is a difference of two evaluations (standard error 0.05·√2 here); the mean over two seeds has
    1/√2 of it, 0.05. So a lead of 0.12 on both seeds is clear of the noise (2 × 0.05), one of 0.08 is not; and a
    spread between seeds larger than the evaluation noise counts instead of it."""
    def results_with(leads):
        runs = []
        for seed, lead in enumerate(leads):
            runs += [_run("DPO", 1.0, seed, [(0, 0), (1, 0.5 + lead), (2, 0.7 + lead)]),
                     _run("PPO", 0.1, seed, [(0, 0), (1, 0.5), (2, 0.7)])]
        for run in runs:
            run["final"]["reward_std"] = 0.5
        return {**fake_results(), "runs": runs, "config": {"n_eval_prompts": 100}}  # one evaluation: 0.5 / √100

    clear = conclusions.verdict(results_with([0.12, 0.12]))
    assert "DPO's frontier lies highest" in clear and "standard error ≈ 0.050" in clear
    assert "clear of the noise" in clear
    assert "a tie" in conclusions.verdict(results_with([0.08, 0.08]))
    spread = results_with([0.05, 0.35])  # mean 0.2, sd 0.21 over seeds: 0.21 / √2 = 0.15 per mean, 0.2 < 2 × 0.15
    assert "standard error ≈ 0.150" in conclusions.verdict(spread) and "a tie" in conclusions.verdict(spread)


def test_the_verdict_says_when_the_first_cannot_be_compared_with_the_runner_up_or_lies_below_it():
    """The ranking averages each method's gaps against all others: the first need not share a KL range with the
    second, nor lie above it where both were measured."""
    def results_with(dpo_points, ppo_points, third):
        runs = []
        for seed in (0, 1):
            runs += [_run("DPO", 1.0, seed, dpo_points), _run("PPO", 0.1, seed, ppo_points),
                     _run("PPO-GT", 0.1, seed, third)]
        for run in runs:
            run["final"]["reward_std"] = 0.5
        return {**fake_results(), "runs": runs, "config": {"n_eval_prompts": 100}}

    # DPO only at KL ≤ 0.5, PPO only from 1: no shared range; both far above PPO-GT, which spans both
    apart = results_with([(0, 0), (0.3, 0.5), (0.5, 0.6)], [(0, 0), (1, 0.7), (2, 0.8)], [(0, 0), (0.2, 0), (3, 0)])
    text = conclusions.verdict(apart)
    assert "but it and the runner-up" in text and "nothing compares the two directly" in text, text
    assert "lies highest" not in text and "a tie" not in text
    # DPO first against all (far above PPO-GT, which PPO never meets), yet below PPO where the two were measured
    below = results_with([(0, 0), (0.3, 0.5), (1, 0.6), (2, 0.7)], [(0, 0), (1, 0.62), (2, 0.72)],
                         [(0, 0), (0.2, -0.5), (0.5, -0.5)])
    assert [m for m, _ in conclusions.ranking(below)] == ["DPO", "PPO", "PPO-GT"]
    text = conclusions.verdict(below)
    assert "DPO ranks first, yet lies 0.020 ± 0.000 reward below the runner-up PPO where both were measured" in text
    assert "lies highest" not in text, text


def test_the_texts_name_only_the_methods_that_ran():
    """`--methods PPO-GT GRPO-GT` trains neither DPO nor a reward model; `--methods DPO` has no pair to compare."""
    results = fake_results()
    for run in results["runs"]:
        run["method"] = {"DPO": "PPO-GT", "PPO": "GRPO-GT"}[run["method"]]
    before = conclusions.results_table(results).split("\n\n", 1)[1].splitlines()[0]
    assert "DPO" not in before and "reward model" not in before, before
    assert before.endswith("s); PPO-GT, GRPO-GT do not use it."), before
    results["runs"] = [r for r in fake_results()["runs"] if r["method"] == "DPO"]
    assert "s); DPO trains on its 80 training pairs." in conclusions.results_table(results)
    assert conclusions.gap_table(results) == "Only one method (DPO): no frontier gaps to compare.\n"


def test_the_length_sentence_says_whether_per_sequence_averaging_made_completions_longer():
    results = _fake_family()  # per sequence 9.5 ± 0.7 tokens, per token 12.5 ± 0.7: shorter
    length = conclusions.conclusions(results)["length"]
    assert "longer completions than per-token averaging on every seed at 0 of the 1 β" in length, length
    for run in results["runs"]:
        if run["method"] == "GRPO-GT":
            run["final"]["length"] += 6  # 15.5 per sequence against 12.5 per token, spread 1
    assert "on every seed at 1 of the 1 β: the length bias shows here." in conclusions.conclusions(results)["length"]
    for run in results["runs"]:  # seed 1 no longer longer, the mean still is (the mean is said beside: it differs)
        if run["method"] == "GRPO-GT" and run["seed"] == 1:
            run["final"]["length"] -= 5
    assert "on every seed at 0 of the 1 β (on the mean over seeds: at 1), so the length bias does not show clearly" \
        in conclusions.conclusions(results)["length"]
    results["runs"] = [r for r in results["runs"] if r["seed"] == 0]  # one seed: no spread, no conclusion
    results["reference"] = {"0": results["reference"]["0"]}
    assert "on one seed: with no second seed, no spread was measured" in conclusions.conclusions(results)["length"]


def test_jobs_follow_each_methods_sweep():
    cfg = CompareConfig(methods=("RLOO", "DPO", "GRPO-GT"))
    assert jobs(cfg) == ([("DPO", b) for b in cfg.betas] + [("GRPO-GT", b) for b in cfg.grpo_betas]
                         + [("RLOO", c) for c in cfg.rloo_kl_coefs])
    assert 0.0 in cfg.grpo_betas  # TRL's default: no KL term, no reference model
    assert set(FAST_METHODS) == {"PPO", "PPO-GT", "GRPO", "GRPO-GT", "RLOO", "DPO", "online-DPO"}


def test_eval_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert eval_steps(20, 5) == {4, 8, 12, 16, 20}
    assert eval_steps(94, 3) == {32, 63, 94}
    assert eval_steps(2, 5) == {1, 2}


def test_load_results_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dpo-teach compare"):
        frontier.load_results(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a comparison results file"):
        frontier.load_results(tmp_path / "x.json")


def test_compare_command_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0 and "--fast" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["compare", "--workers", "0"])
    assert e.value.code == 2 and "--workers: must be > 0" in capsys.readouterr().err
    assert main(["compare", "--methods", "DPO", "GRPO-XL"]) == 2
    assert "--methods: unknown GRPO-XL; choose from DPO, online-DPO" in capsys.readouterr().err


def test_fast_comparison_end_to_end(tmp_path, cache_root, capsys):
    """``dpo-teach compare --fast``: two seeds, seven methods, evaluation, table, figure, conclusions."""
    out = tmp_path / "fast"
    assert main(["compare", "--fast", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("results.json", "table.md", "frontier.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    cfg = CompareConfig.fast()
    assert len(results["runs"]) == len(jobs(cfg)) * len(cfg.seeds) and set(jobs(cfg)) >= {("DPO", 0.3), ("DPO", 1.0)}
    assert all(len(r["evals"]) == cfg.n_evals + 1 for r in results["runs"])  # π_ref + n_evals checkpoints
    rollouts = cfg.ppo.steps * cfg.ppo.rollout_size
    groups = cfg.grpo.steps * cfg.grpo.prompts_per_step * cfg.grpo.group_size
    online = cfg.online.rounds * cfg.online.prompts_per_round
    expected = {  # method: (completions, reward-model calls, ground-truth calls, networks held)
        "DPO": (0, 0, 0, 2), "PPO": (rollouts, rollouts, 0, 4), "PPO-GT": (rollouts, 0, rollouts, 3),
        "GRPO": (groups, groups, 0, 3), "RLOO": (groups, groups, 0, 3), "GRPO-GT": (groups, 0, groups, 2),
        "online-DPO": (2 * online, 0, online, 2)}
    for run in results["runs"]:
        c = run["compute"]
        got = (c["completions"], c["reward_model_calls"], c["ground_truth_calls"], len(run["models_held"]))
        assert got == expected[run["method"]], run["method"]
        assert c["forward"] > 0 and c["backward"] > 0 and run["train_s"] > 0
    for stage in results["stages"].values():
        assert stage["reward_model"]["heldout_accuracy"] >= 0.75  # the RM learned the preferences
    best = frontier.best_settings(results)
    for method in ("PPO", "PPO-GT"):
        assert best[method]["reward_gain"][0] >= 0.3, (method, best[method]["reward_gain"])
        assert best[method]["fluency"][0] >= 0.7, (method, best[method]["fluency"])
    assert best["DPO"]["reward_gain"][0] >= 0.2
    for method in ("GRPO-GT", "online-DPO"):
        assert best[method]["reward_gain"][0] >= 0.2, (method, best[method]["reward_gain"])
    gap = frontier.matched_kl_gap(results, "DPO", "PPO")  # the live demo's headline rests on every seed
    assert gap["seeds"] == gap["of_seeds"] == 2, gap
    text = conclusions.conclusions(results)
    assert {"frontier DPO vs PPO", "frontier DPO vs PPO-GT", "frontier GRPO vs PPO", "frontier online-DPO vs DPO",
            "completions"} <= set(text)
    assert text["frontier DPO vs PPO"] in printed and "| PPO-GT ★ |" in (out / "table.md").read_text()
    assert (out / "table.md").read_text().split("\n\n", 1)[1] in printed  # the command prints what it wrote
    save_figure(frontier.plot_frontier(results, highlight={"DPO": 1.0, "PPO": 0.1}), tmp_path / "h.png")


@TWO_SEED_PROCESSES
def test_ctrl_c_during_a_comparison_says_nothing_was_kept_and_prints_no_worker_traceback(tmp_path, cache_root):
    """Ctrl-C reaches every process of the terminal (here: the command's process group), the seed processes too,
    while they still import torch. Only the command answers, in one line; an earlier run in --out stays as it was."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "cmp"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    proc = subprocess.Popen([sys.executable, "-m", "dpo_teach.cli", "compare", "--fast", "--methods", "DPO",
                             "--seeds", "0", "1", "--workers", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "DPO_TEACH_CACHE": str(cache_root)})
    for line in proc.stdout:  # the parent says it starts the seeds' processes, then starts them
        if line.startswith("running 2 seeds in 2 processes"):
            break
    time.sleep(1.0)  # the seed processes are importing torch
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "none of this run's results were kept" in err, err[-2000:]
    assert (out / "results.json").read_text() == '{"earlier": true}'


@TWO_SEED_PROCESSES
def test_a_script_that_calls_the_comparison_without_a_main_guard_stops_with_the_fix(tmp_path, cache_root):
    """Each seed process imports the script that started it: at its top level, the call ran again in every one, which
    failed, and the pool started new ones forever. Now the first one tells the command, which stops and says why."""
    import subprocess
    import sys

    script = tmp_path / "my_compare.py"
    script.write_text("from dpo_teach.compare import CompareConfig, run_comparison\n"
                      f"run_comparison(CompareConfig.fast(methods=('DPO',), out_dir={str(tmp_path / 'out')!r}), "
                      "progress=False)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DPO_TEACH_CACHE": str(cache_root)})
    assert done.returncode == 1 and done.stderr.rstrip().endswith(
        "must be under `if __name__ == \"__main__\":` (or run `dpo-teach compare`)"), done.stderr[-1500:]
    assert done.stderr.count("must be under") == 1 and done.stderr.count("Traceback") == 1, done.stderr[-3000:]


def test_the_one_line_summary_says_where_the_frontier_lies_as_the_sentence_does():
    """A frontier that starts below and ends above: the sentence says it crosses, and so does the one-line summary
    (not "lies below" because the mean gap is negative)."""
    runs = []
    for seed in (0, 1):
        runs += [_run("DPO", 1.0, seed, [(0, 0), (1, 0.1), (2, 0.7)]),
                 _run("PPO", 0.1, seed, [(0, 0), (1, 0.4), (2, 0.6)])]
    for run in runs:
        run["final"]["reward_std"] = 0.5
    results = {**fake_results(), "runs": runs, "config": {"n_eval_prompts": 100}}
    assert frontier.matched_kl_gap(results, "DPO", "PPO", 0.0)["gap"] < 0
    assert "DPO's reward–KL frontier crosses PPO's" in conclusions.frontier_sentence(results, "DPO", "PPO", 0.0)
    line = conclusions.headline(results, "DPO", "PPO")
    assert line.startswith("DPO's frontier crosses PPO's, ") and "lower on average at matched KL" in line, line


def test_a_ctrl_c_while_the_outputs_are_written_leaves_the_earlier_comparison_whole(tmp_path, ctrl_c_at_rename):
    """What the interrupted command says ("--out is as it was before"): a Ctrl-C between the renames of
    results.json, table.md and frontier.png leaves the earlier three, not a mix of two runs."""

    earlier = {**fake_results(), "config": {"n_eval_prompts": 100}}
    for run in earlier["runs"]:
        run["final"]["reward_std"] = 0.5
    conclusions.write_outputs(earlier, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["frontier.png", "results.json", "table.md"]
    later = {**earlier, "runs": [r for r in earlier["runs"] if r["seed"] == 0], "reference": {"0": {"reward": 0.0}}}
    ctrl_c_at_rename(before=3)  # the figure is drawn (one rename) and results.json swapped in: table.md is next
    with pytest.raises(KeyboardInterrupt):
        conclusions.write_outputs(later, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_comparison_prints_its_table_once_where_the_caller_shows_its_own(tmp_path, monkeypatch, capsys):
    """`dpo-teach compare` prints the table it writes; notebook 06 (table=False) renders its own below the run, so the
    run prints its progress and where it wrote, not the whole table a second time. Both write table.md."""
    from dpo_teach import compare

    done = {**fake_results(), "config": {"n_eval_prompts": 100}}
    for run in done["runs"]:
        run["final"]["reward_std"] = 0.5

    def one_seed(config, seed, progress, verbose):
        return {"seed": seed, "reference": done["reference"][str(seed)], "stage": done["stages"][str(seed)],
                "runs": [r for r in done["runs"] if r["seed"] == seed], "wall_s": 1.0, "cpu_s": 1.0}

    monkeypatch.setattr(compare, "run_seed", one_seed)
    monkeypatch.setattr(compare, "load_reference", lambda *a, **k: None)
    for table in (True, False):
        out = tmp_path / str(table)
        compare.run_comparison(CompareConfig.fast(methods=("DPO", "PPO"), seeds=(0, 1), workers=1, out_dir=str(out)),
                               progress=False, table=table)
        printed = capsys.readouterr().out
        written = (out / "table.md").read_text().split("\n\n", 1)[1]
        assert (written in printed) is table, printed
        assert "## Frontier gaps at matched KL" in written and f"wrote {out}/results.json" in printed
