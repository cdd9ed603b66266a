"""What a student's own laptop does to the commands: a Finder's .DS_Store in the run folder, a run pointed at its own
input, a cache path written with a quoted ``~``, a cache shared with another user or under a folder that cannot be
searched, a GPT-2 download without merges.txt, ``--seeds 0 0``; and the data command's π_ref, which must be the one
``train`` takes as its reference."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import warnings

import pytest

from dpo_teach import utils, world
from dpo_teach.cli import main
from dpo_teach.data import write_preferences
from dpo_teach.model import CheckpointError, load_checkpoint, save_checkpoint


def test_what_a_file_manager_leaves_in_the_run_folder_does_not_block_the_rerun(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    for clutter in (".DS_Store", "._metrics.json", "Thumbs.db", "desktop.ini"):
        (run / clutter).write_text("")
    (run / ".ipynb_checkpoints").mkdir()
    utils.check_replaceable(run, {"metrics.json"})  # nothing of the user's would be lost
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        utils.check_replaceable(run, {"metrics.json"})


def test_a_run_never_replaces_the_folder_that_holds_its_own_input(tmp_path, pairs, capsys, monkeypatch):
    """``train --data demo/train.jsonl --out demo`` deleted the pairs it trained on (and ``demo --model demo/policy
    --out demo`` its π_ref), while metrics.json still named them."""
    run = tmp_path / "demo"
    run.mkdir()
    write_preferences(run / "train.jsonl", pairs[:20])
    (run / "policy").mkdir()
    for argv in (["train", "--data", str(run / "train.jsonl"), "--out", str(run)],
                 ["demo", "--model", str(run / "policy"), "--out", str(run)],
                 ["train", "--data", str(run / "train.jsonl"), "--out", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "would delete its own input" in err and ("--data" in err or "--model" in err), err
        assert f"e.g. {argv[-1]}-next" in err, "the suggested folder is beside --out"
    monkeypatch.chdir(run)  # `--out .`: a folder without a name to put -next after
    assert main(["train", "--data", "train.jsonl", "--out", "."]) == 2
    err = capsys.readouterr().err
    assert "would delete its own input" in err and f"e.g. {run}-next" in err, err
    assert (run / "train.jsonl").is_file()


def test_the_demo_called_from_python_refuses_to_delete_its_own_reference(tmp_path):
    """The same guard without the CLI: ``run_demo`` with π_ref inside ``out_dir`` (a notebook's call)."""
    from dpo_teach.pipeline import DemoConfig, run_demo

    run = tmp_path / "demo"
    (run / "policy").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="would delete its own input"):
        run_demo(DemoConfig(model_path=str(run / "policy"), out_dir=str(run)), progress=False, verbose=False)
    assert (run / "policy").is_dir() and (run / "metrics.json").is_file()


def test_saved_weights_are_readable_by_everyone_who_can_read_the_folder(tmp_path, world):
    """safetensors writes its file 0600: a cache shared in a lab, or a policy handed to a classmate, could not be
    read by anyone else."""
    old = os.umask(0o022)
    try:
        save_checkpoint(*world, tmp_path / "ck")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ck").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_quoted_tilde_is_home_and_a_relative_cache_path_is_refused(monkeypatch, tmp_path, capsys):
    """A relative path names another folder from each working directory (the notebooks run in notebooks/, the CLI
    where it is started): each would build π_ref again, in a folder the student never meant."""
    monkeypatch.setenv(world.CACHE_ENV, "~/dpo-cache")
    assert world.cache_dir() == world.Path.home() / "dpo-cache"
    monkeypatch.setenv(world.CACHE_ENV, "cache")
    with pytest.raises(world.CacheError, match=r"is a relative path.*export DPO_TEACH_CACHE=\"\$PWD/cache\""):
        world.cache_dir()
    assert main(["data", "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "dpo-teach data: error: DPO_TEACH_CACHE=cache is a relative path" in capsys.readouterr().err


@pytest.mark.parametrize("value, says", [(" ", "begins or ends with a space"),
                                         ("/data/dpo-cache ", "begins or ends with a space"),
                                         ("$HOME/dpo-cache", "holds a $ that no shell expanded")])
def test_a_cache_path_no_shell_would_have_written_is_named(monkeypatch, value, says):
    """A blank value was told to `export DPO_TEACH_CACHE="$PWD/ "`, a trailing space used another folder (π_ref built
    again, in a folder named with a space), and '$HOME/cache' from a .env file was told to prepend $PWD."""
    monkeypatch.setenv(world.CACHE_ENV, value)
    with pytest.raises(world.CacheError, match=rf"^DPO_TEACH_CACHE='{re.escape(value)}' {re.escape(says)}; set it to "):
        world.cache_dir()


def test_an_uncached_reference_does_not_say_it_was_cached(monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(world, "save_checkpoint", full_disk)
    config = world.WorldConfig(preset="tiny", corpus_size=200, sft_steps=2, sft_batch_size=8)
    with pytest.warns(world.CacheWarning, match="could not be cached"):
        world.load_reference(config, rebuild=True, verbose=True)
    printed = capsys.readouterr().out
    assert "not cached" in printed and "cached at" not in printed, printed


def test_a_cache_under_a_folder_that_cannot_be_searched_is_said_not_raised(monkeypatch, unsearchable):
    """A cache under another user's private folder (mode 700): the notebooks' set-up table and π_ref's load stopped
    in a PermissionError traceback; now the table says so and π_ref is built, unsaved."""
    from dpo_teach.setup_check import setup_report

    locked = unsearchable
    monkeypatch.setenv(world.CACHE_ENV, str(locked / "cache"))
    report = setup_report(probe_s=1.0)
    assert report["cache (π_ref)"].endswith("(not writable: set DPO_TEACH_CACHE)")
    assert report["π_ref cached"].startswith("no")
    config = world.WorldConfig(preset="tiny", corpus_size=200, sft_steps=2, sft_batch_size=8)
    with pytest.warns(world.CacheWarning, match=f"could not be cached .*\\({locked} is not writable"):
        model, _ = world.load_reference(config)
    assert not model.training


def test_data_samples_from_the_reference_that_train_uses(monkeypatch, tmp_path):
    """``data --seed 1`` built a π_ref of its own (seed 1), while ``train`` takes the seed-0 one as its reference:
    the pairs came from another model than the one DPO measured them against."""
    used = []

    def load_reference(config, **kwargs):
        used.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(world, "load_reference", load_reference)
    with pytest.raises(SystemExit):
        main(["data", "--out", str(tmp_path / "p.jsonl"), "--seed", "1", "--preset", "small"])
    assert used == [world.WorldConfig(preset="small")]


def test_repeated_seeds_are_one_seed(monkeypatch, tmp_path):
    from dpo_teach import compare

    configs = []
    monkeypatch.setattr(compare, "run_comparison", lambda cfg, progress: configs.append(cfg) or {})
    assert main(["compare", "--fast", "--seeds", "0", "0", "3", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert configs[0].seeds == (0, 3)


def test_a_gpt2_download_without_merges_says_which_file_is_missing(tmp_path, world):
    save_checkpoint(*world, tmp_path / "ck")
    vocab = json.loads((tmp_path / "ck" / "tokenizer.json").read_text())["model"]["vocab"]
    (tmp_path / "ck" / "tokenizer.json").unlink()
    (tmp_path / "ck" / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="vocab.json is there but merges.txt is missing"):
        load_checkpoint(tmp_path / "ck")


def test_the_setup_check_runs_from_a_terminal(tmp_path):
    env = {**os.environ, world.CACHE_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "dpo_teach.setup_check"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch" in done.stdout and str(tmp_path) in done.stdout and "π_ref cached" in done.stdout, done.stdout


def test_a_table_of_one_seed_says_its_spread_was_not_measured():
    from dpo_teach.conclusions import results_table
    from dpo_teach.grading import ROOT

    results = json.loads((ROOT / "notebooks" / "assets" / "compare_results.json").read_text())
    assert "mean ± sd over seeds 0, 1" in results_table(results)
    results["reference"] = {"0": results["reference"]["0"]}
    results["runs"] = [r for r in results["runs"] if r["seed"] == 0]
    results["stages"] = {"0": results["stages"]["0"]}
    assert "one seed (0): every ± 0 means no spread was measured" in results_table(results)


def test_real_dialogues_with_a_short_context_model_get_advice_that_can_be_followed(tmp_path, world, monkeypatch,
                                                                                   capsys):
    """HH-RLHF rows with a 64-token model: a prompt that does not fit is not told to raise --max-length (the model
    cannot read more), and the pairs cut at --max-length are counted, with those the cut made identical."""
    from pathlib import Path

    from dpo_teach import dpo

    model, tokenizer = world
    save_checkpoint(model, tokenizer, tmp_path / "ref")
    hh = Path(__file__).resolve().parent / "data" / "hh-rlhf-sample" / "harmless-base-test-first200.jsonl"
    monkeypatch.setattr(dpo, "train_dpo", lambda *a, **k: (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["train", "--data", str(hh), "--model", str(tmp_path / "ref"), "--out", str(tmp_path / "out"),
              "--max-length", str(model.config.n_positions), "--skip-invalid", "--quiet"])
    captured = capsys.readouterr()
    advice = "use a model with a longer context than 64 tokens (--model), or shorten the prompt"
    assert advice in captured.out, captured.out
    assert "raise --max-length" not in captured.out.split("(first:")[1].split("\n")[0]
    assert "pairs are longer than --max-length 64 tokens and are cut at the end" in captured.err, captured.err
    assert "use a model with a longer context than 64 tokens (--model)" in captured.err, captured.err


def test_a_cache_warning_is_one_line_like_a_data_warning(capsys):

    from dpo_teach import cli
    from dpo_teach.preference_file import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        cli._one_line_warnings("demo", (DataWarning, world.CacheWarning))
        warnings.warn("reference cache /c/x is unusable (truncated); rebuilding it", world.CacheWarning, stacklevel=1)
    assert capsys.readouterr().err == "dpo-teach demo: warning: reference cache /c/x is unusable (truncated); " \
                                      "rebuilding it\n"


def test_data_writes_to_standard_output_with_a_dash(monkeypatch, capsys, tmp_path):
    """``data --out -`` (to pipe the pairs on) wrote a file named "-"; the rows now go to standard output, and
    nothing else does."""
    from dpo_teach import data as data_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(world, "load_reference", lambda config, verbose=False: print("π_ref: loaded") or (None, None))
    monkeypatch.setattr(data_module, "make_preference_pairs", lambda ref, tok, config: [
        {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."}] * config.n_prompts)
    assert main(["data", "--out", "-", "--pairs", "3"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["chosen"] for line in captured.out.splitlines()] == [" great ."] * 3
    assert "π_ref: loaded" in captured.err and "wrote 3 preference pairs to standard output" in captured.err
    assert not (tmp_path / "-").exists()


def test_a_read_only_output_file_is_not_replaced(tmp_path, monkeypatch, capsys):
    target = tmp_path / "pairs.jsonl"
    target.write_text("mine\n")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(target) else real(p, mode, **kw))
    assert main(["data", "--out", str(target)]) == 2
    assert "pairs.jsonl: is read-only; make it writable (chmod u+w)" in capsys.readouterr().err
    assert target.read_text() == "mine\n"


def test_train_on_a_demo_runs_pairs_says_when_they_came_from_another_reference(tmp_path, monkeypatch, pairs):
    """``demo --seed 1`` samples its pairs from a seed-1 π_ref; ``train`` measures pairs against the seed-0 one. It
    says so, and how to train against the π_ref that sampled them (its cache entry, where there is one)."""
    from dataclasses import asdict

    from dpo_teach.cli_args import warn_other_reference
    from dpo_teach.preference_file import DataWarning
    from dpo_teach.world import WorldConfig

    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "demo"
    run.mkdir()
    write_preferences(run / "train.jsonl", pairs[:4])
    train_world = WorldConfig(preset="tiny")
    sampled = WorldConfig(preset="tiny", seed=1)
    (run / "metrics.json").write_text(json.dumps({"config": {"world": asdict(sampled)}}))
    with pytest.warns(DataWarning, match=r"seed 1 \(train: 0\).*rerun the demo with `--seed 0`"):
        warn_other_reference(str(run / "train.jsonl"), train_world)
    entry = world.cache_entry(sampled)
    entry.mkdir(parents=True)
    (entry / "world.json").write_text("{}")  # what marks a cached π_ref (world.reference_cached)
    with pytest.warns(DataWarning, match=f"pass it with --model {entry}"):
        warn_other_reference(str(run / "train.jsonl"), train_world)
    (run / "metrics.json").write_text(json.dumps({"config": {"world": asdict(train_world)}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same π_ref, or no demo run beside the file: nothing to say
        warn_other_reference(str(run / "train.jsonl"), train_world)
        warn_other_reference(str(tmp_path / "elsewhere.jsonl"), train_world)


def test_the_grader_cell_imports_without_the_posix_only_modules():
    """Windows has no ``resource``, ``fcntl``, ``termios``, ``pwd`` or ``grp``: the grader cell of every graded
    notebook (``otter`` and ``find_notebook``) stopped there, and every ``grader.check`` after it with a NameError."""
    blocked = ["resource", "fcntl", "termios", "pwd", "grp"]
    cell = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"  # None in sys.modules: the import fails
            "import otter\nfrom dpo_teach.grading.student import find_notebook\nprint(find_notebook('00_start_here'))")
    done = subprocess.run([sys.executable, "-c", cell], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("00_start_here.ipynb"), done.stderr[-1500:]


def test_leftovers_of_a_run_are_judged_without_signals_on_windows(monkeypatch):
    """On Windows ``os.kill(pid, 0)`` sends CTRL_C_EVENT instead of probing: whether the process that left a
    temporary folder still runs is asked of psutil there."""
    import psutil

    def no_kill(pid, sig):
        raise AssertionError("os.kill must not be called on Windows")

    asked = []
    monkeypatch.setattr(psutil, "pid_exists", lambda pid: asked.append(pid) or pid == 4242)
    monkeypatch.setattr(utils.sys, "platform", "win32")
    monkeypatch.setattr(utils.os, "kill", no_kill)
    assert utils._running(4242) and not utils._running(4243) and asked == [4242, 4243]
