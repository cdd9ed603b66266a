"""The dpo-teach command: help everywhere, one-line errors, training on a user's file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import GOOD, jsonl, no_work, one_line_error, write_bytes  # noqa: F401 (no_work: a fixture)

from dpo_teach.cli import main
from dpo_teach.cli_args import COMMANDS, build_parser


@pytest.mark.parametrize("argv", [[], ["demo"], ["data"], ["train"]])
def test_help_on_every_command(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert "usage: dpo-teach" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--beta", "-1"], "--beta: must be > 0"),
    (["demo", "--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
    (["demo", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train"], "the following arguments are required: --data"),
    (["train", "--data", "x.jsonl", "--eval-fraction", "1.5"], "must be between 0 and 1"),
    (["frobnicate"], "invalid choice"),
])
def test_wrong_arguments_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_data_file_is_one_line_naming_file_and_row(tmp_path, capsys, cache_root):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "x"}\n')
    assert main(["train", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "'chosen' is missing" in err and len(err.strip().splitlines()) == 1


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    assert main(["train", "--data", str(path), "--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_train_on_a_user_file_with_a_checkpoint(tmp_path, world, pairs, capsys):
    from dpo_teach.data import write_preferences
    from dpo_teach.model import save_checkpoint

    model, tok = world
    save_checkpoint(model, tok, tmp_path / "ref")
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, pairs[:100])
    with open(data, "a") as f:
        f.write("not json\n")
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--model", str(tmp_path / "ref"), "--out", str(out),
                 "--skip-invalid", "--quiet", "--epochs", "1", "--lr", "1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 invalid rows" in printed and "line 101" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train_pairs"] == 90 and metrics["n_heldout_pairs"] == 10
    # what it read, found again after the folder is moved: absolute paths, the split's settings, the versions
    assert metrics["model"] == str((tmp_path / "ref").resolve()) and metrics["data"] == str(data.resolve())
    assert [metrics[k] for k in ("preset", "eval_fraction", "heldout_seed", "skip_invalid")] == [None, 0.1, 0, True]
    assert set(metrics["versions"]) == {"dpo-teach", "torch", "transformers"}
    (skipped,) = metrics["skipped_rows"]
    assert skipped["line"] == 101 and "not valid JSON" in skipped["reason"] and set(skipped) == {"line", "reason"}
    assert (out / "policy" / "model.safetensors").is_file() and (out / "training_curves.png").is_file()


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "dpo_teach.cli", "demo", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--beta" in r.stdout


@pytest.mark.parametrize("command", ["--help", "demo --help", "compare --help"])
def test_an_output_that_cannot_encode_greek_gets_escapes_not_a_crash(command):
    """Windows hands a pipe or a file its ANSI code page (cp1252), which has no π or β: the help (and a run's table)
    ended in a UnicodeEncodeError."""
    r = subprocess.run([sys.executable, "-m", "dpo_teach.cli", *command.split()], capture_output=True,
                       env={**os.environ, "PYTHONIOENCODING": "cp1252"})
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode("cp1252")[-1500:]
    assert b"\\u03c0" in r.stdout or b"\\u03b2" in r.stdout, r.stdout.decode("cp1252")[-800:]


def test_an_interrupted_train_rerun_leaves_the_earlier_run_intact(tmp_path, world, pairs, monkeypatch, capsys):
    import dpo_teach.plots
    from dpo_teach.data import write_preferences
    from dpo_teach.model import save_checkpoint

    save_checkpoint(*world, tmp_path / "ref")
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, pairs[:60])
    out = tmp_path / "runs" / "train"
    argv = ["train", "--data", str(data), "--model", str(tmp_path / "ref"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    (out / "samples.md").write_text("from an earlier demo run in the same folder\n")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt  # the last step: the policy, history and metrics are written by now

    monkeypatch.setattr(dpo_teach.plots, "save_figure", ctrl_c)
    assert main(argv + ["--seed", "1"]) == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["train"]  # no temporary folder left behind
    monkeypatch.undo()
    assert main(argv + ["--seed", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "metrics.json", "policy", "training_curves.png"]
    assert (out / "metrics.json").read_bytes() != before[Path("metrics.json")]
    assert [p.name for p in out.parent.iterdir()] == ["train"]


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("command", ["train", "demo"])
def test_an_out_whose_folder_cannot_take_the_run_is_refused_before_training(tmp_path, monkeypatch, capsys, command):
    """A run is written beside --out and then takes its place: a folder beside it that is not writable, or an --out
    name too long to add the temporary name's part to, ends the command in one line before any work (it used to
    train first and lose the result in a traceback)."""
    import os

    data = write_bytes(tmp_path, jsonl(GOOD))
    argv = [command, *(["--data", str(data)] if command == "train" else [])]
    locked = tmp_path / "locked"
    (locked / "run").mkdir(parents=True)  # --out itself is writable; the folder that holds it is not
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))  # root passes chmod
    assert main([*argv, "--out", str(locked / "run")]) == 2
    assert f"in {locked}, and then takes its place, but {locked} is not writable for you" in one_line_error(capsys)
    long = "b" * 245  # a valid name, too long once ".NAME.PID.XXXXXXXX.tmp" is made of it
    assert main([*argv, "--out", str(tmp_path / long)]) == 2
    err = one_line_error(capsys)
    assert "its last part is 245 bytes long" in err and "pass a name of at most" in err
    assert main([*argv, "--out", str(tmp_path / ("c" * 300))]) == 2  # too long for any file name
    assert "File name too long; pass another path" in one_line_error(capsys)


def test_the_help_and_the_grader_start_without_torch():
    """`dpo-teach --help` took 4-6 s: the parser imported torch and transformers for the defaults of demo, data and
    train. Now only those commands' own arguments do; the command list, grade and compare start at once."""
    code = ("import sys\nfrom dpo_teach.cli import main\n"
            "for argv in (['--help'], ['grade', '--help'], ['compare', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
            "print('imported:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("imported: []"), done.stdout[-300:]
    assert "{" + ",".join(COMMANDS) + "}" in done.stdout and "--regrade" in done.stdout and "--fast" in done.stdout
    assert [a for a in build_parser()._subparsers._group_actions[0].choices] == list(COMMANDS)


def test_a_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    """The parser imports torch and transformers (seconds): a Ctrl-C then says so in one line, no traceback."""
    import dpo_teach.cli

    def slow_start(only=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpo_teach.cli, "build_parser", slow_start)
    assert main(["demo"]) == 130
    assert capsys.readouterr().err == "interrupted while starting; nothing was written\n"


def test_a_ctrl_c_after_the_comparison_wrote_its_results_says_where_they_are(tmp_path, monkeypatch, capsys):
    """With --asset, the comparison's own outputs are written before the asset: a Ctrl-C between says so."""
    import dpo_teach.compare
    import dpo_teach.frontier

    monkeypatch.setattr(dpo_teach.compare, "run_comparison", lambda cfg, progress: {})

    def interrupted(results, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpo_teach.frontier, "write_asset", interrupted)
    asset = tmp_path / "asset.json"
    assert main(["compare", "--fast", "--out", str(tmp_path / "cmp"), "--asset", str(asset)]) == 130
    assert capsys.readouterr().err == (f"interrupted; this run's results are in {tmp_path / 'cmp'}; --asset {asset} "
                                       "is as it was before\n")


def test_data_to_a_pipe_that_closes_early_ends_quietly(monkeypatch, capsys):
    """`dpo-teach data --out - | head`: the reader stops reading; that is no error of the command's."""
    import dpo_teach.cli

    def piped(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(dpo_teach.cli, "cmd_data", piped)
    assert main(["data", "--out", "-"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("no_work")
def test_an_out_that_is_a_mount_point_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """A run is swapped in by renaming --out aside, which the system refuses for a mount point (a Docker volume)."""
    import os

    data = write_bytes(tmp_path, jsonl(GOOD))
    out = tmp_path / "volume"
    out.mkdir()
    ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or ismount(p))
    assert main(["train", "--data", str(data), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"--out {out}: is a mount point, which a run cannot replace" in err and "pass a folder inside it" in err


def test_a_losses_own_option_reaches_the_run(tmp_path, world, pairs, capsys):
    """`--loss cdpo --label-smoothing 0.3` trains with ε = 0.3 (before, the CLI had no such flag: always 0.1), and the
    run's metrics record it."""
    from dpo_teach.data import write_preferences
    from dpo_teach.model import save_checkpoint

    save_checkpoint(*world, tmp_path / "ref")
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, pairs[:60])
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--model", str(tmp_path / "ref"), "--out", str(out), "--quiet",
                 "--epochs", "1", "--loss", "cdpo", "--label-smoothing", "0.3"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["loss_type"], config["label_smoothing"]) == ("cdpo", 0.3)


def test_an_option_the_command_does_not_take_points_to_that_commands_help(capsys):
    """`dpo-teach train --steps 10` said to see `dpo-teach --help`, which lists no option of train's."""
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--data", "prefs.jsonl", "--steps", "10"])
    assert stopped.value.code == 2
    assert one_line_error(capsys) == ("dpo-teach train: error: unrecognized arguments: --steps 10 "
                                      "(see dpo-teach train --help)\n")


@pytest.mark.parametrize("preset, hint", [("small", True), ("tiny", False)])
def test_data_from_another_preset_says_how_to_train_it(tmp_path, monkeypatch, capsys, preset, hint):
    """`data --preset small` then `train` measured the pairs against the tiny π_ref without a word."""
    import dpo_teach.data
    import dpo_teach.world

    monkeypatch.setattr(dpo_teach.world, "load_reference", lambda config, verbose=False: (config.preset, None))
    monkeypatch.setattr(dpo_teach.data, "make_preference_pairs", lambda reference, tokenizer, config: [GOOD])
    assert main(["data", "--preset", preset, "--pairs", "12", "--out", str(tmp_path / "pairs.jsonl")]) == 0
    said = capsys.readouterr().out
    assert ("train them with `dpo-teach train --preset small`" in said) is hint, said
