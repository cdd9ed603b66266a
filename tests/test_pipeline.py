"""The demo at its default setting meets the course's targets, and the same seed writes the same metrics.json."""

import json

import pytest

from dpo_teach.pipeline import DemoConfig, results_table, run_demo


@pytest.fixture(scope="module")
def demo_runs(cache_root, tmp_path_factory):
    """The default demo (seed 0) twice: the first builds π_ref, the second loads it from the cache."""
    out = tmp_path_factory.mktemp("demo")
    m1 = run_demo(DemoConfig.with_seed(0, out_dir=str(out / "a")), progress=False, verbose=False)
    m2 = run_demo(DemoConfig.with_seed(0, out_dir=str(out / "b")), progress=False, verbose=False)
    return out, m1, m2


def test_default_demo_meets_reward_fluency_and_accuracy_targets(demo_runs):
    _, m, _ = demo_runs
    assert m["reward_gain"] >= 0.4, m["reward_gain"]
    assert m["policy"]["fluency"] >= 0.70, m["policy"]["fluency"]  # reward from garbage would not count
    assert m["heldout_accuracy"] >= 0.78, m["heldout_accuracy"]
    assert m["heldout_accuracy"] <= m["bt_ceiling"] + 0.05  # cannot beat label noise by more than chance
    assert m["reference"]["fluency"] >= 0.9 and m["reference"]["kl"] == 0.0
    assert 0 < m["policy"]["kl"] < 10
    assert m["win_rate"] > 0.6


def test_same_seed_writes_the_same_metrics_json(demo_runs):
    out, _, _ = demo_runs
    assert (out / "a" / "metrics.json").read_bytes() == (out / "b" / "metrics.json").read_bytes()


def test_demo_writes_figures_samples_policy_and_data(demo_runs):
    out, m, _ = demo_runs
    d = out / "a"
    for name in ["metrics.json", "run.json", "history.json", "samples.md", "train.jsonl", "heldout.jsonl",
                 "training_curves.png", "reward_before_after.png", "policy/config.json", "policy/model.safetensors"]:
        assert (d / name).is_file(), name
    assert (d / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((d / "history.json").read_text())
    assert len(history) == m["dpo_steps"] and history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert sum(1 for _ in open(d / "heldout.jsonl")) == m["n_heldout_pairs"]
    table = results_table(m)
    assert "held-out implicit-reward acc." in table and "BT-noise ceiling" in table and "fluency" in table
