"""The demo at its default setting meets the course's targets, and the same seed writes the same metrics.json."""

import json
import os
from pathlib import Path

import pytest

from dpo_teach.pipeline import DemoConfig, drift_hint, results_table, run_demo


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


def test_a_policy_that_drifted_into_garbage_says_to_lower_the_learning_rate(demo_runs):
    """The table shows fluency against its target; below it (while π_ref meets it) a line says what to try, naming the
    run's learning rate and the demo's. The default run, and a π_ref that is not fluent itself, get no such line."""
    import copy

    _, m, _ = demo_runs
    assert drift_hint(m) is None
    drifted = copy.deepcopy(m)  # what `dpo-teach demo --lr 5e-3` gives on seed 0 (twice, byte for byte)
    drifted["policy"].update(fluency=0.002, kl=24.67)
    drifted["config"]["dpo"]["lr"] = 5e-3
    hint = drift_hint(drifted)
    assert hint and "0.2% well-formed" in hint and "24.7 nats" in hint, hint
    assert "lower --lr (this run: 0.005; the demo's default: 0.0005) or a larger --beta" in hint, hint
    drifted["reference"]["fluency"] = 0.1  # a real checkpoint: the toy grammar does not describe its text
    assert drift_hint(drifted) is None


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


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_interrupted_rerun_leaves_the_earlier_run_intact_and_complete(world, tmp_path, monkeypatch):
    """A rerun into the same folder is written beside it and swapped in at the end: interrupted late (here while
    drawing the figures, after metrics.json), the earlier run is all there is; finished, only the new run is."""
    from dpo_teach import pipeline
    from dpo_teach.model import save_checkpoint

    save_checkpoint(*world, tmp_path / "ref")

    def config(seed: int) -> DemoConfig:
        cfg = DemoConfig.with_seed(seed, out_dir=str(tmp_path / "runs" / "demo"), model_path=str(tmp_path / "ref"))
        cfg.prefs.n_prompts, cfg.n_eval_prompts, cfg.dpo.epochs = 60, 20, 1
        return cfg

    out = tmp_path / "runs" / "demo"
    old = run_demo(config(0), progress=False, verbose=False)
    before = _files(out)
    assert old["config"]["world"] is None  # π_ref came from model_path: no toy-world preset is recorded
    calls, save_figure = [], pipeline.save_figure

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C
        return save_figure(*args, **kwargs)

    monkeypatch.setattr(pipeline, "save_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(config(1), progress=False, verbose=False)
    assert _files(out) == before  # before the fix: new train.jsonl, history.json, policy/ beside the old metrics
    assert [p.name for p in out.parent.iterdir()] == ["demo"]  # no temporary folder left behind

    monkeypatch.setattr(pipeline, "save_figure", save_figure)
    new = run_demo(config(1), progress=False, verbose=False)
    after = _files(out)
    assert set(after) == set(before) and after["policy/model.safetensors"] != before["policy/model.safetensors"]
    assert json.loads(after["metrics.json"]) == json.loads(json.dumps(new)) != json.loads(before["metrics.json"])
    assert [p.name for p in out.parent.iterdir()] == ["demo"]


def test_a_folder_left_by_a_killed_run_is_removed_by_the_next_one(tmp_path):
    """SIGKILL runs no ``except``: the killed run's ``.NAME.PID.*.tmp`` stays beside --out until the next run into
    the same place removes it, and only it (a live run's folder, another --out's and other files stay); an ``.old``
    that is the only copy of the earlier run (killed between the renames) is put back in --out's place first."""
    import subprocess
    import sys

    from dpo_teach.utils import atomic_dir

    out = tmp_path / "demo"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(ended.stdout), os.getppid()
    leftovers = [tmp_path / f".demo.{dead}.abc123.tmp", tmp_path / f".demo.{dead}.def456.old"]
    kept = [tmp_path / f".demo.{alive}.xyz789.tmp", tmp_path / f".demo-2.{dead}.abc123.tmp", tmp_path / "notes",
            tmp_path / f".demo.{dead}.{alive}.abc123.tmp"]  # a live run's, into an --out named "demo.<dead>"
    for folder in leftovers + kept:
        (folder / "policy").mkdir(parents=True)
    only_copy = tmp_path / f".demo.{dead}.ghi012.old"  # killed between its renames: the earlier run, and no demo/
    (only_copy / "x" / "policy").mkdir(parents=True)
    with atomic_dir(out) as work:
        assert (out / "policy").is_dir() and not only_copy.exists()  # the earlier run is back while this one runs
        (work / "metrics.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["demo"] + [p.name for p in kept])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("at", ["moving the earlier run aside", "moving the new run in", "after both renames"])
def test_a_ctrl_c_while_the_folders_are_swapped_leaves_the_earlier_run(tmp_path, ctrl_c_at_rename, at):
    """The swap at the end of a run is two renames (the earlier run aside, the new one in); a Ctrl-C before, between
    or right after them leaves --out as it was, as the interrupted command says, and nothing beside it."""
    from dpo_teach.utils import atomic_dir

    out = tmp_path / "demo"
    (out / "policy").mkdir(parents=True)
    (out / "metrics.json").write_text('{"run": "earlier"}')
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as work:
            (work / "metrics.json").write_text('{"run": "new"}')
            ctrl_c_at_rename(**{"moving the earlier run aside": {"before": 1}, "moving the new run in": {"before": 2},
                                "after both renames": {"after": 2}}[at])
    assert (out / "metrics.json").read_text() == '{"run": "earlier"}' and (out / "policy").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_a_demo_into_a_folder_with_other_files_deletes_nothing(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"mine: holds 1 file \(notes.txt\) that a demo run does not write, "
                                              r"and a demo run replaces"):
        run_demo(DemoConfig.with_seed(0, out_dir=str(out)), progress=False, verbose=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_swap_that_fails_keeps_the_finished_run_and_says_where(tmp_path, monkeypatch):
    """A rename the system refuses (--out is busy, e.g. a mount point): the earlier run stays in --out and the
    finished one is not deleted; the error names where it is."""
    import errno

    from dpo_teach.utils import atomic_dir

    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text("earlier")
    replace = os.replace

    def busy(src, dst):  # a mount point cannot be moved aside
        if Path(src) == out:
            raise OSError(errno.EBUSY, "Device or resource busy", str(out))
        replace(src, dst)

    with pytest.raises(OSError, match="Device or resource busy; the finished run is in ") as caught:
        with atomic_dir(out) as work:
            (work / "metrics.json").write_text("new")
            monkeypatch.setattr(os, "replace", busy)
    kept = Path(str(caught.value).split("the finished run is in ")[1].split(",")[0])
    assert (out / "metrics.json").read_text() == "earlier" and (kept / "metrics.json").read_text() == "new"
