"""The comparison: frontier arithmetic on known points, and the fast mode end to end through the command."""

import json

import numpy as np
import pytest

from dpo_teach import conclusions, frontier
from dpo_teach.cli import main
from dpo_teach.compare import CompareConfig, eval_steps
from dpo_teach.plots import save_figure


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
    g = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert g["kl_max"] == pytest.approx(2.0)  # the largest KL both methods reached
    assert g["share_above"] == 1.0 and g["gap"] > 0 and g["gap_sd"] == pytest.approx(0.0)
    assert g["at"][1.0] == pytest.approx((0.5, 0.4)) and g["at"][2.0] == pytest.approx((0.7, 0.6))
    assert 4.0 not in g["at"]  # beyond what both reached: not quoted
    assert "lies above" in conclusions.frontier_sentence(results, "DPO", "PPO")
    reverse = frontier.matched_kl_gap(results, "PPO", "DPO")
    assert reverse["gap"] == pytest.approx(-g["gap"]) and reverse["share_above"] == 0.0
    # dropping DPO's disfluent run (fluency 0.5) removes its (2, 0.7) point: DPO then reaches only KL 1
    fluent = frontier.matched_kl_gap(results, "DPO", "PPO", min_fluency=0.7)
    assert fluent["at"][1.0] == pytest.approx((0.5, 0.4)) and 2.0 not in fluent["at"]


def test_best_setting_must_keep_the_fluency_target():
    best = frontier.best_settings(fake_results())
    assert best["DPO"]["param"] == 1.0 and best["DPO"]["fluent"]  # β = 0.1 has more reward but 50 % fluency
    assert best["PPO"]["param"] == 0.02
    table = conclusions.results_table(fake_results())
    assert "| DPO ★ | β=1 |" in table and "| DPO | β=0.1 |" in table and "50 ± 0 %" in table
    text = conclusions.conclusions(fake_results())
    assert "fluent frontier DPO vs PPO" in text and "PPO sampled 128 completions" in text["completions"]


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


def test_fast_comparison_end_to_end(tmp_path, cache_root, capsys):
    """``dpo-teach compare --fast``: two seeds, the three methods, evaluation, table, figure, conclusions."""
    out = tmp_path / "fast"
    assert main(["compare", "--fast", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("results.json", "table.md", "frontier.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    cfg = CompareConfig.fast()
    assert len(results["runs"]) == 3 * len(cfg.seeds)
    assert all(len(r["evals"]) == cfg.n_evals + 1 for r in results["runs"])  # π_ref + n_evals checkpoints
    rollouts = cfg.ppo.steps * cfg.ppo.rollout_size
    for run in results["runs"]:
        c = run["compute"]
        if run["method"] == "DPO":
            assert c["completions"] == 0 and len(run["models_held"]) == 2
        elif run["method"] == "PPO":
            assert c["completions"] == c["reward_model_calls"] == rollouts and c["ground_truth_calls"] == 0
            assert len(run["models_held"]) == 4
        else:
            assert c["completions"] == c["ground_truth_calls"] == rollouts and c["reward_model_calls"] == 0
            assert len(run["models_held"]) == 3
        assert c["forward"] > 0 and c["backward"] > 0 and run["train_s"] > 0
    for stage in results["stages"].values():
        assert stage["reward_model"]["heldout_accuracy"] >= 0.75  # the RM learned the preferences
    best = frontier.best_settings(results)
    for method in ("PPO", "PPO-GT"):
        assert best[method]["reward_gain"][0] >= 0.3, (method, best[method]["reward_gain"])
        assert best[method]["fluency"][0] >= 0.7, (method, best[method]["fluency"])
    assert best["DPO"]["reward_gain"][0] >= 0.2
    text = conclusions.conclusions(results)
    assert {"frontier DPO vs PPO", "frontier DPO vs PPO-GT", "completions"} <= set(text)
    assert text["frontier DPO vs PPO"] in printed and "| PPO-GT ★ |" in (out / "table.md").read_text()
    save_figure(frontier.plot_frontier(results, highlight={"DPO": 1.0, "PPO": 0.1}), tmp_path / "h.png")
