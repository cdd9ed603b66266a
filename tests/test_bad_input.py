"""Every input a user controls gets a clear one-line error (file, line or argument; what was wrong; what to do).

The command's arguments, preference files, checkpoints, reference-cache entries, comparison results and autograder
bundles, each fed malformed values. Models here are built in the test (a few thousand weights), never π_ref.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dpo_teach.cli import main
from dpo_teach.preference_file import DataError, load_preferences

GOOD = {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."}
OTHER = {"prompt": "honestly , the acting", "chosen": " was superb .", "rejected": " was awful ."}


def write_bytes(tmp_path: Path, data: bytes, name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def distinct_rows(n: int) -> list[dict]:
    """``n`` different rows (a file of repeated rows is warned about: the same pair lands in both splits)."""
    return [{**(GOOD if i % 2 else OTHER), "prompt": f"{i} : " + (GOOD if i % 2 else OTHER)["prompt"]}
            for i in range(n)]


def one_line_error(capsys) -> str:
    """The command's stderr, checked to be exactly one line without a traceback."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_submissions_folder_that_cannot_be_searched_is_one_line(unsearchable, tmp_path, capsys):
    assert main(["grade", str(unsearchable / "subs"), "--out", str(tmp_path / "grades")]) == 2
    err = one_line_error(capsys)
    assert f"{unsearchable / 'subs'}: Permission denied; pass a folder you can read" in err, err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A save_pretrained directory of an untrained 2-layer GPT-2 with a 32-token context (n_positions=32)."""
    from dpo_teach.model import build_model, save_checkpoint
    from dpo_teach.tokenizer import train_tokenizer

    tok = train_tokenizer([GOOD["prompt"] + GOOD["chosen"], OTHER["prompt"] + OTHER["rejected"]] * 20,
                          vocab_size=280)
    model = build_model("tiny", len(tok), tok.eos_token_id, n_positions=32)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, tok, path)
    return path


# --- preference files: bytes that are not UTF-8 -------------------------------------------------------------


def test_latin1_row_names_line_byte_and_column(tmp_path):
    latin1 = '{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}'.encode("latin-1")  # a Latin-1 export
    path = write_bytes(tmp_path, jsonl(GOOD, latin1))
    with pytest.raises(DataError) as err:
        load_preferences(path)
    text = str(err.value)
    assert f"{path}:2: not UTF-8 (byte 0xe9 at column 16)" in text and "re-save the file as UTF-8" in text


def test_skip_invalid_skips_and_counts_a_non_utf8_line(tmp_path):
    truncated = '{"prompt": "x", "chosen": " très'.encode()[:-2]  # a download cut in the middle of "è"
    path = write_bytes(tmp_path, jsonl(GOOD, b'{"prompt": "\xff\xfe"}', OTHER) + truncated)
    loaded = load_preferences(path, skip_invalid=True)
    assert loaded.rows == [GOOD, OTHER]
    assert [n for n, _ in loaded.skipped] == [2, 4] and "not UTF-8 (byte 0xff at column 13)" in loaded.skipped[0][1]


def test_train_on_a_non_utf8_file_is_one_line(tmp_path, capsys):
    path = write_bytes(tmp_path, jsonl(GOOD, b"\x80\x81"))
    assert main(["train", "--data", str(path)]) == 2
    assert f"{path}:2: not UTF-8 (byte 0x80 at column 1)" in one_line_error(capsys)


# --- --max-length beyond the model's context ------------------------------------------------------------------


def test_train_max_length_above_the_checkpoints_context_is_refused(tmp_path, tiny_checkpoint, capsys):
    long = {"prompt": "the film was " * 6, "chosen": " great ." * 20, "rejected": " bad ." * 20}
    data = write_bytes(tmp_path, jsonl(*[long] * 20))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--max-length", "1024",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "--max-length 1024" in err and "32" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "demo"])
def test_max_length_above_the_toy_context_is_refused_before_any_model(tmp_path, command, capsys, monkeypatch):
    import dpo_teach.pipeline
    import dpo_teach.world

    def no_build(*args, **kwargs):
        raise AssertionError("the argument check must come before π_ref is loaded or built")

    monkeypatch.setattr(dpo_teach.world, "load_reference", no_build)
    monkeypatch.setattr(dpo_teach.pipeline, "load_reference", no_build)
    data = write_bytes(tmp_path, jsonl(GOOD, OTHER))
    argv = ["train", "--data", str(data)] if command == "train" else ["demo", "--out", str(tmp_path / "o")]
    assert main(argv + ["--max-length", "1024"]) == 2
    err = one_line_error(capsys)
    assert "--max-length 1024" in err and "64" in err


# --- every argument of every command: rejected with one line before any work -----------------------------------


@pytest.mark.parametrize("argv, message", [
    (["demo", "--beta", "nan"], "--beta: expected a finite number, got 'nan'"),
    (["demo", "--beta", "inf"], "--beta: expected a finite number, got 'inf'"),
    (["demo", "--lr", "0"], "--lr: must be > 0"),
    (["demo", "--lr=-1e-3"], "--lr: must be > 0"),
    (["demo", "--lr", "-1e-3"], "--lr: must be > 0"),  # a value after a space, not an unknown option
    (["demo", "--beta", "-inf"], "--beta: expected a finite number, got '-inf'"),
    (["demo", "--pairs", "-1_000"], "--pairs: must be > 0"),
    (["train", "--data", "x.jsonl", "--beta", "-NaN"], "--beta: expected a finite number, got '-NaN'"),
    (["demo", "--epochs", "0"], "--epochs: must be > 0"),
    (["demo", "--batch-size", "-5"], "--batch-size: must be > 0"),
    (["demo", "--max-length", "0"], "--max-length: must be > 0"),
    (["demo", "--max-length", "1.5"], "--max-length: expected a positive integer, got '1.5'"),
    (["demo", "--pairs", "5"], "--pairs: must be at least 12"),
    (["demo", "--seed", "-1"], "--seed: must be from 0 to 4294967295"),
    (["demo", "--seed", str(2**32)], "--seed: must be from 0 to 4294967295"),
    (["demo", "--seed", "abc"], "--seed: expected an integer"),
    (["demo", "--loss", "bogus"], "--loss: invalid choice"),
    # a loss's own option: in its range, and only with that loss (elsewhere it would change nothing)
    (["demo", "--loss", "cdpo", "--label-smoothing", "0.5"], "--label-smoothing: must be in [0, 0.5)"),
    (["demo", "--loss", "cdpo", "--label-smoothing", "-0.1"], "--label-smoothing: must be >= 0"),
    (["demo", "--loss", "dpop", "--dpop-lambda", "nan"], "--dpop-lambda: expected a finite number"),
    (["demo", "--preset", ""], "--preset: invalid choice"),
    (["data"], "the following arguments are required: --out"),
    (["data", "--out", "x.jsonl", "--pairs", "0"], "--pairs: must be > 0"),
    (["data", "--out", "x.jsonl", "--bt-temperature", "nan"], "--bt-temperature: expected a finite number"),
    (["data", "--out", "x.jsonl", "--bt-temperature", "-0.1"], "--bt-temperature: must be > 0"),
    (["data", "--out", "x.jsonl", "--seed", "-3"], "--seed: must be from 0"),
    (["train", "--data", "x.jsonl", "--eval-fraction", "nan"], "--eval-fraction: expected a finite number"),
    (["train", "--data", "x.jsonl", "--eval-fraction", "0"], "--eval-fraction: must be > 0"),
    (["train", "--data", "x.jsonl", "--eval-fraction", "1"], "--eval-fraction: must be between 0 and 1"),
    (["train", "--data", "x.jsonl", "--eval-fraction=-inf"], "--eval-fraction: expected a finite number"),
    (["train", "--data", "x.jsonl", "--seed", "-1"], "--seed: must be from 0"),
    (["train", "--data", "x.jsonl", "--beta", "1e400"], "--beta: expected a finite number"),
    (["grade"], "the following arguments are required: SUBMISSIONS_DIR"),
    (["grade", "subs", "--timeout", "nan"], "--timeout: expected a finite number"),
    (["grade", "subs", "--timeout", "inf"], "--timeout: expected a finite number"),
    (["grade", "subs", "--timeout", "0"], "--timeout: must be > 0"),
    (["grade", "subs", "--cell-timeout", "0"], "--cell-timeout: must be > 0"),
    (["grade", "subs", "--jobs", "-1"], "--jobs: must be > 0"),
    (["compare", "--seeds", "-1"], "--seeds: must be from 0"),
    (["compare", "--seeds", "x"], "--seeds: expected an integer"),
    (["compare", "--seeds"], "--seeds: expected at least one argument"),
    (["compare", "--workers", "0"], "--workers: must be > 0"),
    (["compare", "--threads", "nan"], "--threads: expected a positive integer, got 'nan'"),
    # numbers that pass "> 0" but are too large for the system (OverflowError or ValueError deep inside)
    (["data", "--out", "x.jsonl", "--pairs", str(10**30)], "--pairs: must be at most 10000000"),
    (["demo", "--pairs", str(10**30)], "--pairs: must be at most 10000000"),
    (["train", "--data", "x.jsonl", "--epochs", str(10**22)], "--epochs: must be at most 100000"),  # ran for ever
    (["compare", "--threads", str(10**20)], "--threads: must be at most 1024"),
    (["compare", "--workers", str(10**20)], "--workers: must be at most 1024"),
    (["grade", "subs", "--jobs", str(10**9)], "--jobs: must be at most 1024"),
    (["grade", "subs", "--cell-timeout", str(10**20)], "--cell-timeout: must be at most 2147483647"),
    (["grade", "subs", "--timeout", "1e300"], "--timeout: must be at most 10000000"),
    # an empty path (an unset shell variable, "$DIR") meant the default or the current directory
    *[(argv, f"{flag}: empty path (an unset shell variable?); pass a path") for argv, flag in [
        (["demo", "--out", ""], "--out"), (["demo", "--model", ""], "--model"), (["data", "--out", ""], "--out"),
        (["train", "--data", ""], "--data"), (["train", "--data", "x.jsonl", "--out", ""], "--out"),
        (["train", "--data", "x.jsonl", "--model", ""], "--model"), (["grade", ""], "SUBMISSIONS_DIR"),
        (["grade", "subs", "--out", ""], "--out"), (["grade", "subs", "--autograder-dir", ""], "--autograder-dir"),
        (["compare", "--out", ""], "--out"), (["compare", "--asset", ""], "--asset")]],
    (["train", "--data", "x.jsonl", "--out", "t\udce9"], "--out: b't\\xe9' is not UTF-8"),
    (["demo", "--model", "ck\udce9"], "--model: b'ck\\xe9' is not UTF-8"),
])
def test_malformed_argument_values_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in one_line_error(capsys)


@pytest.fixture
def no_work(monkeypatch):
    """Make any model build, load of π_ref, training or comparison fail the test: checks must come first."""
    import dpo_teach.compare
    import dpo_teach.pipeline
    import dpo_teach.world

    def forbidden(*args, **kwargs):
        raise AssertionError("an argument check must come before any model is built or trained")

    for module, name in [(dpo_teach.world, "load_reference"), (dpo_teach.pipeline, "load_reference"),
                         (dpo_teach.pipeline, "run_demo"), (dpo_teach.compare, "run_comparison")]:
        monkeypatch.setattr(module, name, forbidden)


def _paths(tmp_path: Path) -> dict[str, str]:
    """A file, a path under that file, a directory and a missing path, as the command-line strings to pass."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "garbage_model").mkdir()
    (tmp_path / "garbage_model" / "config.json").write_text("{not json")
    (tmp_path / "garbage_model" / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "garbage_model" / "tokenizer.json").write_text("[]")
    (tmp_path / "prefs.jsonl").write_bytes(jsonl(GOOD, OTHER))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "link_to_file").symlink_to(tmp_path / "a_file")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    os.mkfifo(tmp_path / "a_pipe")
    return {k: str(tmp_path / v) for k, v in {
        "LINK_TO_FILE": "link_to_file", "PIPE": "a_pipe", "LOOP": "loop_a", "UNDER_LOOP": "loop_a/run.jsonl",
        "FILE": "a_file", "UNDER_FILE": "a_file/sub", "DIR": "a_dir", "MISSING": "missing/deeper", "EMPTY": "empty_dir",
        "GARBAGE": "garbage_model", "DATA": "prefs.jsonl", "EMPTY_DATA": "empty.jsonl"}.items()}


@pytest.mark.parametrize("argv, message", [
    (["demo", "--out", "FILE"], "--out FILE: is a file, expected a directory"),
    (["demo", "--out", "UNDER_FILE"], "FILE is a file, so nothing can be created under it"),
    (["demo", "--model", "MISSING"], "checkpoint MISSING: no such directory"),
    (["demo", "--model", "FILE"], "checkpoint FILE: is a file, not a directory"),
    (["demo", "--model", "EMPTY"], "config.json is missing"),
    (["demo", "--model", "GARBAGE"], "config.json cannot be loaded"),
    (["data", "--out", "DIR"], "--out DIR: is a directory, expected a file"),
    (["data", "--out", "UNDER_FILE"], "FILE is a file, so nothing can be created under it"),
    (["train", "--data", "MISSING"], "MISSING: no such file"),
    (["train", "--data", "DIR"], "DIR: is a directory, not a file"),
    (["train", "--data", "EMPTY_DATA"], "no valid preference rows; the file is empty"),
    (["train", "--data", "DATA", "--out", "FILE"], "--out FILE: is a file, expected a directory"),
    (["train", "--data", "DATA", "--out", "UNDER_FILE"], "so nothing can be created under it"),
    (["train", "--data", "DATA", "--model", "MISSING"], "checkpoint MISSING: no such directory"),
    (["train", "--data", "DATA", "--model", "EMPTY"], "config.json is missing"),
    (["train", "--data", "DATA", "--model", "GARBAGE"], "config.json cannot be loaded"),
    (["grade", "MISSING"], "MISSING is not a directory"),
    (["grade", "FILE"], "FILE is not a directory"),
    (["grade", "DIR", "--out", "FILE"], "--out FILE: is a file, expected a directory"),
    (["grade", "DIR", "--autograder-dir", "MISSING"], "--autograder-dir MISSING: not a directory"),
    (["grade", "DIR", "--autograder-dir", "FILE"], "--autograder-dir FILE: not a directory"),
    (["grade", "DIR", "--autograder-dir", "EMPTY"], "no autograder bundles in EMPTY"),
    (["grade", "DIR", "--assignment", "99_nope"], "unknown assignment '99_nope'"),
    # a loop of symbolic links: a traceback from inside pathlib, or (data, compare) an error after all the work
    (["demo", "--out", "LOOP"], "--out LOOP: leads through a loop of symbolic links"),
    (["train", "--data", "DATA", "--out", "LOOP"], "--out LOOP: leads through a loop of symbolic links"),
    (["data", "--out", "UNDER_LOOP"], "--out UNDER_LOOP: leads through a loop of symbolic links"),
    (["compare", "--fast", "--out", "LOOP"], "--out LOOP: leads through a loop of symbolic links"),
    (["compare", "--out", "FILE"], "--out FILE: is a file, expected a directory"),
    (["compare", "--fast", "--out", "UNDER_FILE"], "so nothing can be created under it"),
    (["compare", "--out", "DIR", "--asset", "DIR"], "--asset DIR: is a directory, expected a file"),
    (["compare", "--out", "DIR", "--asset", "UNDER_FILE"], "so nothing can be created under it"),
    # a device or a pipe was replaced by a regular file (as root, --out /dev/null destroyed /dev/null)
    (["data", "--out", "PIPE"], "--out PIPE: is a device or a pipe, not a regular file, which the command would "
                                "replace by one; pass a file path, or - for standard output"),
    (["data", "--out", "/dev/null"], "--out /dev/null: is a device or a pipe, not a regular file"),
    (["compare", "--out", "DIR", "--asset", "/dev/null"], "--asset /dev/null: is a device or a pipe, not a regular "
                                                          "file, which the command would replace by one; pass a file "
                                                          "path\n"),
    (["demo", "--out", "/dev/null"], "--out /dev/null: is a device or a pipe, not a directory; pass a directory"),
    (["train", "--data", "DATA", "--out", "LINK_TO_FILE"], "--out LINK_TO_FILE: is a file, expected a directory"),
    # /dev/stdout (a terminal, a pipe, or the file standard output goes to: replaced at the end, what was printed
    # into it lost) and /proc: refused before the work, not at its end ("No such file or directory (...tmp)")
    (["data", "--out", "/dev/stdout"], "--out /dev/stdout: lies in /"),
    (["data", "--out", "/dev/stdout"], "; pass a path on a disk, or - for standard output"),
    (["grade", "DIR", "--out", "/proc/grades"], "--out /proc/grades: lies in /proc, a file system of the kernel's, "
                                                "where the output cannot be created"),
    (["train", "--data", "DATA", "--out", "/proc/run"], "--out /proc/run: lies in /proc"),
    # a name too long for the file written beside it: refused before the work, as train's and demo's --out were
    (["data", "--out", "n" * 240 + ".jsonl"], "its last part is 246 bytes long; the file is written beside it under "
                                              "a name "),  # the process id's digits longer
    (["compare", "--out", "DIR", "--asset", "n" * 240 + ".json"], "its last part is 245 bytes long"),
    # a loss's own option with another loss would change nothing
    (["demo", "--label-smoothing", "0.2"], "--label-smoothing is an option of --loss cdpo, and this run's loss is "
                                           "sigmoid; add --loss cdpo, or leave --label-smoothing out"),
    (["train", "--data", "DATA", "--loss", "cdpo", "--dpop-lambda", "1"], "--dpop-lambda is an option of --loss "
                                                                          "dpop, and this run's loss is cdpo"),
])
def test_unusable_paths_give_one_line_before_any_work(tmp_path, argv, message, capsys, no_work):
    paths = _paths(tmp_path)
    argv = [paths.get(a, a) for a in argv]
    message = re.sub(r"\b[A-Z_]+\b", lambda m: paths.get(m.group(), m.group()), message)
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert message in err and ("; " in err or "rerun" in err or "run `make assign`" in err)


def test_a_run_that_would_delete_its_input_names_a_folder_to_pass_even_for_the_root(tmp_path):
    """`train --data prefs.jsonl --out /` ended in `ValueError: PosixPath('/') has an empty name` (no folder name to
    put -next after); `--out ..` suggested `..-next`."""
    from dpo_teach.utils import check_replaceable

    data = tmp_path / "sub" / "prefs.jsonl"
    with pytest.raises(FileExistsError, match=r"holds --data .*; pass another folder, e.g. a new subdirectory$"):
        check_replaceable("/", set(), "a train run", inputs={"--data": data})
    with pytest.raises(FileExistsError, match=rf"pass another folder, e.g. {tmp_path}-next$"):
        check_replaceable(tmp_path / "sub" / "..", set(), "a train run", inputs={"--data": data})


def test_output_path_checks_accept_what_can_be_created(tmp_path):
    from dpo_teach.cli_args import check_writable

    check_writable(tmp_path / "new" / "deeper", "--out", directory=True)  # created later, parents included
    check_writable(tmp_path / "missing_dir" / "results.json", "--asset", directory=False)
    (tmp_path / "old.json").write_text("{}")
    check_writable(tmp_path / "old.json", "--asset", directory=False)  # replaced atomically
    if os.path.isdir("/dev/shm"):  # a folder in memory, in /dev: it was refused as "a file system of the kernel's"
        check_writable("/dev/shm/dpo-teach-run", "--out", directory=True)
        check_writable("/dev/shm/dpo-teach-pairs.jsonl", "--out", directory=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / "missing_dir").exists()  # a check writes nothing


# --- preference files ---------------------------------------------------------------------------------------------

GOOD_LINE = json.dumps(GOOD).encode()


@pytest.mark.parametrize("content, message", [
    (b"", "no valid preference rows; the file is empty"),
    (b"\n \n\t\n", "the file is empty"),
    (b"\xef\xbb\xbf", "the file is empty"),  # a byte-order mark and nothing else
    (b"[1, 2, 3]\n", ":1: expected a JSON object, got list"),
    (b'"the film was great"\n', ":1: expected a JSON object, got str"),
    (b"42\n", ":1: expected a JSON object, got int"),
    (b"null\n", ":1: expected a JSON object, got NoneType"),
    (b"true\n", ":1: expected a JSON object, got bool"),
    (b"NaN\n", ":1: expected a JSON object, got float"),
    (b'{"prompt": NaN, "chosen": " a", "rejected": " b"}\n', "'prompt' must be a string, got float"),
    (b'{"prompt": "x", "chosen": Infinity, "rejected": " b"}\n', "'chosen' must be a string, got float"),
    (b'{"prompt": 7, "chosen": " a", "rejected": " b"}\n', "'prompt' must be a string, got int"),
    (b'{"prompt": "x", "chosen": [" a"], "rejected": " b"}\n', "'chosen' must be a string, got list"),
    (b'{"prompt": "x", "chosen": " a", "rejected": {"t": " b"}}\n', "'rejected' must be a string, got dict"),
    (b'{"prompt": "x", "chosen": " a"}\n', "the field 'rejected' is missing"),
    (b'{}\n', "the field 'prompt' is missing"),
    (b'{"Prompt": "x", "Chosen": " a", "Rejected": " b"}\n', "the field 'prompt' is missing"),
    (b'{"prompt": "x", "chosen": " \\ud800", "rejected": " b"}\n',
     "unpaired surrogate escape (\\ud800 at character 2)"),
    (b"[" * 100_000 + b"\n", "nested too deeply"),
    (b'{"prompt": ' + b"1" * 5000 + b"}\n", "not usable JSON (Exceeds the limit"),
    (b"x" * 2_000_000 + b"\n", "not valid JSON"),  # a 2 MB line of junk
    (b'{"prompt": "x", "chosen": " a", "rejected": " b"\x00}\n', "not valid JSON"),
    (b"\x00\x00\x00\n", "not valid JSON"),  # NUL bytes
    (GOOD_LINE[:-9], "not valid JSON"),  # a download cut short, no newline at the end
    (b'{"prompt": "x", "chosen": " a", "rejected": " b"} {"prompt": "y"}\n', "not valid JSON (Extra data"),
    (b"\xc3\x28\n", "not UTF-8 (byte 0xc3 at column 1)"),
    # files that are not UTF-8 JSON Lines: say what they are and how to convert them
    ('{"prompt": "x"}\n'.encode("utf-16"), "is UTF-16 text (byte-order mark FF FE), not UTF-8 JSON Lines; "
                                              "convert it: `iconv -f utf-16 -t utf-8"),
    (b"\xfe\xff\x00{\x00}\n", "is UTF-16 text (byte-order mark FE FF)"),
    ('{"prompt": "x"}\n'.encode("utf-32"), "is UTF-32 text (byte-order mark FF FE 00 00)"),
    (b"PAR1\x15\x04\x15\x10", "is a Parquet file, not UTF-8 JSON Lines; this loader reads JSON Lines only; "
                               "convert it: `python -c"),
    (b"BZh91AY&SY", "is bzip2-compressed, not UTF-8 JSON Lines; decompress it first"),
    (b"PK\x03\x04\x14\x00", "is a zip archive, not UTF-8 JSON Lines; unzip it first"),
    # another file passed by mistake: it was "not UTF-8 ... re-save the file as UTF-8 (e.g. `iconv -f latin1 ...`)"
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a PNG image, not UTF-8 JSON Lines; pass the JSON Lines file"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "is a PDF document, not UTF-8 JSON Lines; pass the JSON Lines file"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "the gzip data is truncated or corrupt"),
    # JSON that is not JSON Lines, and TRL's conversational rows: say which format it is and what to do
    (b'[{"prompt": "x", "chosen": " a", "rejected": " b"}, {"prompt": "y", "chosen": " a", "rejected": " b"}]\n',
     ":1: a JSON array of 2 objects: JSON Lines has one object per line, without [ ]; convert the file with "
     "`jq -c '.[]' in.json > out.jsonl`"),
    (json.dumps([GOOD, GOOD], indent=2).encode(), ":1: a line with a lone '[': the file looks like one JSON array "
                                                  "printed over many lines, not JSON Lines"),
    (json.dumps(GOOD, indent=2).encode(), ":1: a line with a lone '{': the rows look printed over several lines each"),
    (json.dumps({"prompt": [{"role": "user", "content": "the film was"}],
                 "chosen": [{"role": "assistant", "content": " great ."}],
                 "rejected": [{"role": "assistant", "content": " bad ."}]}).encode(),
     ":1: the field 'prompt' is a list of chat messages ({role, content}), TRL's conversational format, which this "
     "loader does not read (it needs plain-text fields); flatten each field to plain text"),
    (json.dumps({"chosen": [{"role": "user", "content": "the film was"}, {"role": "assistant", "content": " great ."}],
                 "rejected": [{"role": "user", "content": "the film was"},
                              {"role": "assistant", "content": " bad ."}]}).encode(),
     "'chosen' is a list of chat messages ({role, content}), TRL's conversational format with an implicit prompt"),
    # a key twice in one object: json would silently keep the last value
    (b'{"prompt": "the film was", "chosen": " great .", "rejected": " bad .", "chosen": " bad ."}\n',
     ":1: the key 'chosen' appears twice in one object, and JSON would keep only the last value"),
    (GOOD_LINE + b'\n{"prompt": "x", "prompt": "", "chosen": " a", "rejected": " b"}\n',
     ":2: the key 'prompt' appears"),
])
def test_malformed_preference_files(tmp_path, content, message):
    path = write_bytes(tmp_path, content)
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, whole_file", [
    (b"prompt,chosen,rejected\nthe film was, great ., bad .\n", True),  # a spreadsheet's export
    (b"Prompt;Chosen;Rejected\nx;a;b\n", True),
    (b"id,prompt,chosen,rejected\n1,x,a,b\n", True),
    (json.dumps([GOOD, GOOD], indent=2).encode(), True),
    (GOOD_LINE + b'\n{"prompt": "x", "chosen": " a"\n', False),
])
def test_a_whole_file_in_another_format_is_not_told_to_skip_lines(tmp_path, content, whole_file):
    """A CSV (its header row says so) and a pretty-printed JSON file get what to convert them with, and no
    "--skip-invalid" (skipping lines cannot turn them into JSON Lines); one bad row keeps the hint."""
    with pytest.raises(DataError) as err:
        load_preferences(write_bytes(tmp_path, content))
    assert ("--skip-invalid" in str(err.value)) is not whole_file, str(err.value)
    if b"rompt," in content or b"rompt;" in content:
        sep = ";" if b";" in content else ","
        assert ":1: the first line reads like a CSV header" in str(err.value)
        assert f"pd.read_csv('in.csv', sep='{sep}')" in str(err.value) and "str.lower()" in str(err.value)


@pytest.mark.parametrize("content", [
    b"\xef\xbb\xbf" + GOOD_LINE + b"\n",  # a byte-order mark (Windows editors)
    GOOD_LINE + b"\n\xef\xbb\xbf" + GOOD_LINE + b"\n",  # two such files joined (`cat`): was "not valid JSON"
    GOOD_LINE + b"\r\n\r\n" + GOOD_LINE + b"\r\n",  # Windows line ends and a blank line
    GOOD_LINE + b"\r" + GOOD_LINE,  # old Mac line ends, no final newline
    b"\n\n  \n" + GOOD_LINE + b"\n\n",
])
def test_harmless_oddities_load(tmp_path, content):
    assert load_preferences(write_bytes(tmp_path, content)).rows == [GOOD] * content.count(GOOD_LINE)


def test_huge_valid_row_loads_and_is_checked_against_max_length(tmp_path, tiny_checkpoint):
    from dpo_teach.model import load_checkpoint

    _, tok = load_checkpoint(tiny_checkpoint)
    huge = {**GOOD, "prompt": "the film was " * 20_000}  # a 260 kB prompt
    path = write_bytes(tmp_path, jsonl(huge, GOOD))
    assert load_preferences(path).rows[0] == huge
    loaded = load_preferences(path, tok, max_length=32, skip_invalid=True)
    assert loaded.rows == [GOOD] and "leaves no room" in loaded.skipped[0][1]


def test_surrogates_with_a_tokenizer_are_a_data_error_not_a_tokenizer_crash(tmp_path, tiny_checkpoint):
    from dpo_teach.model import load_checkpoint

    _, tok = load_checkpoint(tiny_checkpoint)
    path = write_bytes(tmp_path, jsonl(GOOD, b'{"prompt": "\\udfff x", "chosen": " a", "rejected": " b"}'))
    with pytest.raises(DataError, match=r":2: the field 'prompt' holds an unpaired surrogate"):
        load_preferences(path, tok, max_length=32)


# --- checkpoints ----------------------------------------------------------------------------------------------


def _corrupt(path: Path, how: str) -> None:
    if how == "empty config.json":
        (path / "config.json").write_text("")
    elif how == "config.json not JSON":
        (path / "config.json").write_text("{'n_layer': 2")
    elif how == "config.json a list":
        (path / "config.json").write_text("[]")
    elif how == "config.json unknown model_type":
        (path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    elif how == "weights truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "weights garbage":
        (path / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    elif how == "weights missing":
        (path / "model.safetensors").unlink()
    elif how == "tokenizer.json garbage":
        (path / "tokenizer.json").write_text("{")
    elif how == "tokenizer files missing":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).unlink()
    elif how == "tokenizer of a bigger vocabulary":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        tok.add_tokens([f"<extra_{i}>" for i in range(1000)])
        tok.save_pretrained(path)


BROKEN = ["empty config.json", "config.json not JSON", "config.json a list", "config.json unknown model_type",
          "weights truncated", "weights garbage", "weights missing", "tokenizer.json garbage",
          "tokenizer files missing", "tokenizer of a bigger vocabulary"]


@pytest.mark.parametrize("how", BROKEN)
def test_corrupt_checkpoints_are_checkpoint_errors(tmp_path, tiny_checkpoint, how):
    import shutil

    from dpo_teach.model import CheckpointError, load_checkpoint

    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    _corrupt(path, how)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert text.startswith(f"checkpoint {path}: ") and "\n" not in text and len(text) < 600


def test_empty_or_missing_checkpoint_dirs(tmp_path):
    from dpo_teach.model import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no weights file \(\*.safetensors or \*.bin\)"):
        load_checkpoint(tmp_path)


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _mismatch(path: Path, how: str) -> None:
    """Give the checkpoint at ``path`` (2 layers, 64 wide) a config.json that its weights do not fill."""
    import transformers

    config = json.loads((path / "config.json").read_text())
    vocab = config["vocab_size"]
    if how == "config with a layer more than the weights":
        (path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    elif how == "config twice as wide as the weights":
        (path / "config.json").write_text(json.dumps({**config, "n_embd": 128}))
    elif how == "untied config, weights without lm_head":
        (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    elif how == "a Llama config beside GPT-2 weights":
        transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=32).save_pretrained(path)
    elif how == "a BERT config beside its own weights":  # a bidirectional encoder: no causal LM even with its weights
        config = transformers.BertConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=32)
        transformers.BertLMHeadModel(config).save_pretrained(path)
    elif how == "a T5 config":
        transformers.T5Config(vocab_size=vocab, d_model=64, num_layers=2, num_heads=2).save_pretrained(path)


@pytest.mark.parametrize("how, message", [
    ("config with a layer more than the weights", "12 weights the config needs are missing (e.g. transformer.h.2."),
    ("config twice as wide as the weights", "weights have another shape (e.g. "),
    ("untied config, weights without lm_head", "1 weights the config needs are missing (e.g. lm_head.weight)"),
    ("a Llama config beside GPT-2 weights", "weights in the files are not used (e.g. transformer.h.0."),
    ("a BERT config beside its own weights", "a bert model whose prediction at a position changes with the tokens "
                                             "after it (a bidirectional encoder such as BERT)"),
    ("a T5 config", "a t5 encoder-decoder model, not a causal language model"),
])
def test_weights_that_do_not_fit_the_config_or_a_non_causal_model_are_refused(tmp_path, tiny_checkpoint, how,
                                                                                message):
    from dpo_teach.model import CheckpointError, load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    _mismatch(path, how)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)  # transformers only logs a warning and starts the missing weights at random
    text = str(err.value)
    assert text.startswith(f"checkpoint {path}: ") and message in text and "\n" not in text
    if "missing" in message or "not used" in message or "shape" in message:
        assert "re-save model and config together" in text


@pytest.mark.parametrize("how", ["GPT-NeoX (Pythia's config: is_decoder false by default)",
                                 "GPT-2 whose config.json says is_decoder false"])
def test_a_causal_model_whose_config_says_is_decoder_false_loads(tmp_path, tiny_checkpoint, how):
    """Causality is tried on the model, not read from ``is_decoder``: GPT-NeoX's config sets it false by default
    and its model is causal (before: "a bidirectional encoder", refused)."""
    import transformers

    from dpo_teach.model import load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    if how.startswith("GPT-NeoX"):
        neox = transformers.GPTNeoXConfig(vocab_size=config["vocab_size"], hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                                          eos_token_id=config["eos_token_id"], bos_token_id=config["bos_token_id"])
        assert neox.is_decoder is False
        transformers.GPTNeoXForCausalLM(neox).save_pretrained(path)
    else:
        (path / "config.json").write_text(json.dumps({**config, "is_decoder": False}))
    model, _ = load_checkpoint(path)
    assert model.config.model_type == ("gpt_neox" if how.startswith("GPT-NeoX") else "gpt2")


@pytest.mark.parametrize("how, message", [
    ("a PEFT adapter", "a PEFT adapter (adapter_config.json), not a whole model; merge it into its base model"),
    ("custom code", "its config names model code of its own (auto_map), which dpo-teach does not run"),
])
def test_an_adapter_or_a_model_of_its_own_code_is_named_so(tmp_path, tiny_checkpoint, how, message, monkeypatch):
    """A LoRA adapter saved with ``save_pretrained`` was told "config.json is missing; point it at a directory written
    by save_pretrained"; a folder whose config maps to its own Python (``auto_map``) stopped at transformers' "Do
    you wish to run the custom code? [y/N]" on a terminal, then was told to use ``save_pretrained``."""
    import builtins

    from dpo_teach.model import CheckpointError, load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    if how == "a PEFT adapter":
        (path / "config.json").unlink()
        (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "gpt2"}))
    else:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "model_type": "my_gpt",
                                                      "auto_map": {"AutoConfig": "my_gpt.MyConfig"}}))
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("asked on the terminal"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"checkpoint {path}: {message}"), str(err.value)


def test_a_long_library_error_is_cut_between_words():
    from dpo_teach.model import _first_line

    cut = _first_line(ValueError("word " * 60))
    assert cut == "ValueError: " + "word " * 39 + "word …" and len(cut) < 220


def test_train_on_a_checkpoint_whose_config_does_not_fit_its_weights_is_one_line(tmp_path, tiny_checkpoint, capsys):
    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    _mismatch(path, "config with a layer more than the weights")
    data = write_bytes(tmp_path, jsonl(*[GOOD, OTHER] * 10))
    assert main(["train", "--data", str(data), "--model", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "the weights do not match config.json" in err and "12 weights" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["save_pretrained, tied", "save_pretrained, untied",
                                    "the hub's GPT-2 layout: no prefix, mask buffers, no lm_head"])
def test_checkpoints_lacking_only_tied_or_buffer_weights_load(tmp_path, tiny_checkpoint, layout):
    """GPT-2 checkpoints may legitimately lack ``lm_head.weight`` (tied to ``wte``) and carry or lack the attention
    mask buffers (``h.N.attn.bias``): those load, with every weight from the files."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpo_teach.model import load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    config = GPT2Config.from_pretrained(path, tie_word_embeddings="untied" not in layout)
    torch.manual_seed(1)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    if layout.startswith("the hub"):
        n = config.n_positions
        weights = {k.removeprefix("transformer."): v.contiguous() for k, v in model.state_dict().items()
                   if k != "lm_head.weight"}
        weights.update({f"h.{i}.attn.bias": torch.tril(torch.ones(n, n)).view(1, 1, n, n)
                        for i in range(config.n_layer)})
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    loaded, _ = load_checkpoint(path)
    for name, weight in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name


def test_a_tokenizer_without_eos_is_refused_at_load(tmp_path, tiny_checkpoint, capsys):
    from dpo_teach.model import CheckpointError, load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": None}))
    _, tok = load_checkpoint(path)  # no pad token: EOS pads (padding is masked out), as for a real GPT-2
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": None, "bos_token": None,
                                                           "pad_token": None}))
    with pytest.raises(CheckpointError, match=r"the tokenizer has no EOS token, .*set \"eos_token\" in "
                                              r"tokenizer_config\.json"):
        load_checkpoint(path)  # before: a TypeError inside logprobs.pad_rows, after the model was loaded
    data = write_bytes(tmp_path, jsonl(*[GOOD, OTHER] * 10))
    assert main(["train", "--data", str(data), "--model", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no EOS token" in one_line_error(capsys) and not (tmp_path / "out").exists()


def test_sequences_longer_than_the_context_are_a_clear_error(tiny_checkpoint):
    import torch

    from dpo_teach.logprobs import sequence_logprobs
    from dpo_teach.model import ContextLengthError, load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    ids = torch.zeros(2, 40, dtype=torch.long)
    mask = torch.ones_like(ids)
    with pytest.raises(ContextLengthError, match="sequences of 40 tokens do not fit the model's context of 32"):
        sequence_logprobs(model, ids, mask, mask)
    assert sequence_logprobs(model, ids[:, :33], mask[:, :33], mask[:, :33]).shape == (2,)  # 32 fed: fits


def test_sampling_past_the_context_is_a_clear_error(tiny_checkpoint):
    from dpo_teach.model import ContextLengthError, load_checkpoint
    from dpo_teach.sampling import sample

    model, tok = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ContextLengthError, match="max_new_tokens=40 does not fit the model's context of 32"):
        sample(model, tok, [GOOD["prompt"]], max_new_tokens=40)
    assert len(sample(model, tok, [GOOD["prompt"]], max_new_tokens=4).completions) == 1
    with pytest.raises(ValueError, match="prompt 2 of 2 is empty"):
        sample(model, tok, [GOOD["prompt"], ""], max_new_tokens=4)


@pytest.mark.parametrize("n, fraction, message", [
    (1, 1 / 6, "the demo's sampled pairs: 1 valid row is too few to hold out one pair and train on the rest; sample "
               "more pairs (--pairs)"),
    (2, 1 / 6, "the demo's sampled pairs: eval_fraction 0.166667 of 2 valid rows rounds to no held-out pair; pass at "
               "least eval_fraction 0.5 to hold out one"),
    (30, 0.99, "the demo's sampled pairs: eval_fraction 0.99 of 30 valid rows holds out all of them, leaving none to "
               "train on; pass at most eval_fraction 0.97"),
])
def test_demo_with_too_few_pairs_to_hold_out_names_the_number_to_change(tmp_path, monkeypatch, n, fraction, message):
    """The demo refuses a split with an empty side in the words of `dpo-teach train` (one check, in data.py), naming
    the setting to change and a value that works (before: its own message, "too few to hold out 17%")."""
    from dpo_teach import pipeline

    monkeypatch.setattr(pipeline, "load_reference", lambda *a, **k: (None, None))
    monkeypatch.setattr(pipeline, "make_preference_pairs", lambda *a, **k: distinct_rows(n))
    cfg = pipeline.DemoConfig.with_seed(0, out_dir=str(tmp_path / "demo"), eval_fraction=fraction)
    with pytest.raises(DataError, match=re.escape(message)):
        pipeline.run_demo(cfg, progress=False, verbose=False)
    assert not (tmp_path / "demo").exists()


# --- reference-cache entries ------------------------------------------------------------------------------------

TINY_WORLD = dict(preset="tiny", corpus_size=200, vocab_size=300, sft_steps=2, sft_batch_size=8)  # builds in 0.1 s


@pytest.mark.parametrize("how", ["world.json missing", "world.json not JSON", "world.json nested too deeply",
                                 "world.json not UTF-8", "world.json of another config", "entry is a file",
                                 "entry is an empty dir", "entry is a loop of links", "entry links to nothing",
                                 *BROKEN])
def test_corrupt_cache_entry_is_rebuilt_with_a_warning(tmp_path, monkeypatch, how, count_builds):
    import shutil

    import torch

    from dpo_teach.world import WorldConfig, load_reference

    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path))
    config = WorldConfig(**TINY_WORLD)
    load_reference(config)
    (entry,) = tmp_path.glob("reference-*")
    if how == "entry is a file":
        shutil.rmtree(entry)
        entry.write_text("x")
    elif how == "entry is an empty dir":
        shutil.rmtree(entry)
        entry.mkdir()
    elif how == "entry is a loop of links":  # was built again at every run, "could not be cached (Not a directory)"
        shutil.rmtree(entry)
        entry.symlink_to(entry.name)
    elif how == "entry links to nothing":  # e.g. to a disk not mounted now: saved there
        shutil.rmtree(entry)
        entry.symlink_to(tmp_path / "elsewhere" / "reference")
    elif how.startswith("world.json"):
        content = {"world.json missing": None, "world.json not JSON": b"{", "world.json not UTF-8": b"\xff",
                   "world.json nested too deeply": b"[" * 100_000,
                   "world.json of another config": json.dumps({**TINY_WORLD, "seed": 9}).encode()}[how]
        (entry / "world.json").unlink()
        if content is not None:
            (entry / "world.json").write_bytes(content)
    else:
        _corrupt(entry, how)
    with pytest.warns(UserWarning, match=f"reference cache {entry} is unusable .*; rebuilding it"):
        model, tok = load_reference(config)
    ids = torch.tensor([tok("the film was great", add_special_tokens=False)["input_ids"]])
    assert model(ids).logits.shape[-1] == len(tok)
    import warnings

    builds = count_builds()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_reference(config)  # the rebuilt entry loads without a warning
    assert builds == [], "the rebuilt entry must be loaded, not built again"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


@pytest.mark.parametrize("cache, why", [("a_file/cache", "a_file is a file, not a folder"),
                                        ("loop/cache", "loop/cache leads through a loop of symbolic links"),
                                        ("loop", "loop leads through a loop of symbolic links")])
def test_unwritable_cache_warns_and_still_returns_the_model(tmp_path, monkeypatch, count_builds, cache, why):
    from dpo_teach.world import WorldConfig, load_reference

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path / cache))
    with pytest.warns(UserWarning, match=rf"could not be cached .*\({tmp_path}/{why}\); .* Point \$DPO_TEACH_CACHE at "
                                         "a writable directory") as said:  # before the build's minutes, not after
        warnings_at_build = count_builds(lambda: len(said))
        model, tok = load_reference(WorldConfig(**TINY_WORLD))
    assert model.config.vocab_size == len(tok)
    assert warnings_at_build == [1] and len(said) == 1, "warned once, before π_ref was built"


# --- comparison results (notebook 06's asset) -----------------------------------------------------------------

ASSET = Path(__file__).resolve().parents[1] / "notebooks" / "assets" / "compare_results.json"


def _mutated_results(how: str):
    results = json.loads(ASSET.read_text())
    run = results["runs"][0]
    if how == "format 0":
        results["format"] = 0
    elif how == "no format":
        del results["format"]
    elif how == "a list":
        return [results]
    elif how == "runs missing":
        del results["runs"]
    elif how == "runs not a list":
        results["runs"] = {"0": run}
    elif how == "run not an object":
        results["runs"][3] = "DPO"
    elif how == "run without evals":
        del run["evals"]
    elif how == "kl a string":
        run["evals"][1]["kl"] = "0.5"
    elif how == "final without reward":
        del run["final"]["reward"]
    elif how == "seed a string":
        run["seed"] = "0"
    elif how == "reference without the seed":
        results["reference"].pop(str(run["seed"]))
    elif how == "stages missing":
        del results["stages"]
    elif how == "kl NaN":  # each of these loaded and was plotted, or averaged into the table, without a word
        run["evals"][1]["kl"] = float("nan")
    elif how == "kl true":
        run["evals"][1]["kl"] = True
    elif how == "fluency 5":
        run["final"]["fluency"] = 5.0
    elif how == "method unknown":
        run["method"] = "FOO"
    elif how == "runs empty":
        results["runs"] = []
    elif how == "evals empty":
        run["evals"] = []
    elif how == "param infinite":
        run["param"] = float("inf")
    elif how == "evals ragged":
        twin = next(r for r in results["runs"][1:] if (r["method"], r["param"]) == (run["method"], run["param"]))
        twin["evals"] = twin["evals"][:-1]
    return results


@pytest.mark.parametrize("how, message", [
    ("format 0", "in format 0, this version reads format 1"),
    ("no format", "in format None"),
    ("a list", "expected a JSON object, got list"),
    ("runs missing", "'runs' is missing"),
    ("runs not a list", "'runs' is missing or not a JSON array"),
    ("run not an object", "runs[3] is not a JSON object"),
    ("run without evals", "runs[0] has no usable 'evals'"),
    ("kl a string", "runs[0].evals[1] needs finite numbers"),
    ("final without reward", "runs[0].final needs finite numbers"),
    ("kl NaN", "runs[0].evals[1] needs finite numbers"),
    ("kl true", "runs[0].evals[1] needs finite numbers"),
    ("fluency 5", "runs[0].final needs finite numbers 'kl', 'reward' and 'fluency' (a share, 0 to 1)"),
    ("method unknown", "runs[0].method is 'FOO', none of DPO"),
    ("runs empty", "'runs' is empty"),
    ("evals empty", "runs[0] needs a finite 'param' and at least one evaluation"),
    ("param infinite", "runs[0] needs a finite 'param'"),
    ("evals ragged", "evaluations, and the same run of another seed"),
    ("seed a string", "runs[0] has no usable 'seed'"),
    ("reference without the seed", "'reference' has no entry for seed"),
    ("stages missing", "'stages' is missing"),
])
def test_malformed_results_assets(tmp_path, how, message):
    from dpo_teach.frontier import ResultsError, load_results

    path = tmp_path / "results.json"
    path.write_text(json.dumps(_mutated_results(how)))
    with pytest.raises(ResultsError) as err:
        load_results(path)
    assert str(err.value).startswith(f"{path}: not a comparison results file") and message in str(err.value)
    assert "rerun `dpo-teach compare`" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[" * 100_000, ASSET.read_bytes()[:1000]])
def test_results_files_that_are_not_json(tmp_path, content):
    from dpo_teach.frontier import ResultsError, load_results

    path = tmp_path / "results.json"
    path.write_bytes(content)
    with pytest.raises(ResultsError, match="not a comparison results file"):
        load_results(path)


def test_a_folder_given_as_results_says_so(tmp_path):
    from dpo_teach.frontier import ResultsError, load_results

    with pytest.raises(ResultsError, match="is a folder; pass the results.json file in it"):
        load_results(tmp_path)  # "no such file", of a folder that exists


def test_the_shipped_asset_still_loads():
    from dpo_teach.frontier import load_results

    assert len(load_results(ASSET)["runs"]) > 0


# --- autograder manifests and bundles ----------------------------------------------------------------------------

AUTOGRADER = Path(__file__).resolve().parents[1] / "course" / "autograder"


@pytest.mark.parametrize("how, message", [
    ("manifest empty", "not a readable autograder manifest"),
    ("manifest not JSON", "not a readable autograder manifest"),
    ("manifest a list", "no 'assignment' name"),
    ("no assignment", "no 'assignment' name"),
    ("questions missing", "no 'questions' list"),
    ("question without points", "questions[0] needs a 'name', 'points'"),
    ("points a string", "questions[0] needs"),
    ("points negative", "questions[0] needs"),
    ("points NaN", "questions[0] needs"),
    ("manual missing", "questions[1] needs"),
    ("no questions", "it lists no question, so every notebook would score 0 of 0"),
    ("points adding to infinity", "its points add up to more than a number holds"),
    ("a question twice", "questions[1]: 'kl_divergence' is listed twice"),
    ("bundle not a zip", "not a usable autograder bundle (not a zip archive"),
    ("bundle truncated", "not a usable autograder bundle"),
    ("bundle member corrupt", "not a usable autograder bundle"),
])
def test_malformed_autograder_bundles(tmp_path, how, message, capsys):
    import shutil

    from dpo_teach.grading.manifests import ManifestError, load_manifests

    name = "01_kl_objective"
    shutil.copy(AUTOGRADER / f"{name}.json", tmp_path)
    shutil.copy(AUTOGRADER / f"{name}.zip", tmp_path)
    manifest_path, bundle = tmp_path / f"{name}.json", tmp_path / f"{name}.zip"
    manifest = json.loads(manifest_path.read_text())
    text = {"manifest empty": "", "manifest not JSON": '{"assignment": "01_kl',
            "manifest a list": "[]"}.get(how)
    q = manifest["questions"]
    if how == "no assignment":
        del manifest["assignment"]
    elif how == "questions missing":
        del manifest["questions"]
    elif how == "question without points":
        del q[0]["points"]
    elif how == "points a string":
        q[0]["points"] = "2"
    elif how == "points negative":
        q[0]["points"] = -1
    elif how == "points NaN":
        q[0]["points"] = float("nan")
    elif how == "manual missing":
        del q[1]["manual"]
    elif how == "no questions":
        q.clear()
    elif how == "points adding to infinity":  # each finite, their sum not: every percentage was nan
        q[0]["points"] = q[1]["points"] = 1e308
    elif how == "a question twice":
        q[1] = dict(q[0])
    elif how == "bundle not a zip":
        bundle.write_bytes(b"PK not really")
    elif how == "bundle truncated":
        bundle.write_bytes(bundle.read_bytes()[:-100])
    elif how == "bundle member corrupt":  # headers intact, the last member's deflate stream damaged
        import zipfile

        data = bytearray(bundle.read_bytes())
        info = zipfile.ZipFile(bundle).infolist()[-1]
        start = info.header_offset + 30 + len(info.filename.encode()) + 20
        data[start:start + 30] = b"\xff" * 30
        bundle.write_bytes(bytes(data))
    manifest_path.write_text(text if text is not None else json.dumps(manifest))
    with pytest.raises(ManifestError) as err:
        load_manifests(tmp_path)
    assert message in str(err.value) and "run `make assign`" in str(err.value) and "\n" not in str(err.value)
    submissions = tmp_path / "subs"
    submissions.mkdir()
    assert main(["grade", str(submissions), "--autograder-dir", str(tmp_path), "--out", str(tmp_path / "g")]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("how, message", [
    ("manifest alone", "a manifest without its test bundle 01_kl_objective.zip"),
    ("bundle a folder", "a manifest without its test bundle 01_kl_objective.zip (a folder)"),
    ("bundle alone", "a test bundle without its manifest 01_kl_objective.json"),
    ("another assignment's bundle", "are not one assignment's (the bundle has no tests of kl_divergence"),
    ("a question renamed", "are not one assignment's (the bundle has no tests of nonexistent_q"),
    ("two manifests of one assignment", "both name assignment '01_kl_objective'"),
])
def test_autograder_files_that_are_not_pairs_of_one_assign(tmp_path, how, message, capsys):
    """Half of a pair was skipped, and the notebooks of its assignment became "no auto-graded exercises", 0/0; the
    bundle of another assignment (or a question renamed in the manifest) graded a right answer 0 on that question,
    with exit status 0; and a copy naming the same assignment replaced the other pair unsaid."""
    import shutil

    from dpo_teach.grading.manifests import ManifestError, load_manifests

    name = "01_kl_objective"
    manifest, bundle = tmp_path / f"{name}.json", tmp_path / f"{name}.zip"
    shutil.copy(AUTOGRADER / f"{name}.json", manifest)
    shutil.copy(AUTOGRADER / ("02_bradley_terry.zip" if how == "another assignment's bundle" else f"{name}.zip"),
                bundle)
    if how == "manifest alone":
        bundle.unlink()
    elif how == "bundle a folder":
        bundle.unlink()
        bundle.mkdir()
    elif how == "bundle alone":
        manifest.unlink()
    elif how == "a question renamed":
        data = json.loads(manifest.read_text())
        data["questions"][0]["name"] = "nonexistent_q"
        manifest.write_text(json.dumps(data))
    elif how == "two manifests of one assignment":
        shutil.copy(manifest, tmp_path / "copy.json")
        shutil.copy(bundle, tmp_path / "copy.zip")
    with pytest.raises(ManifestError) as err:
        load_manifests(tmp_path)
    assert message in str(err.value) and "make assign" in str(err.value) and "\n" not in str(err.value), err.value
    submissions = tmp_path / "subs"
    submissions.mkdir()
    assert main(["grade", str(submissions), "--autograder-dir", str(tmp_path), "--out", str(tmp_path / "g")]) == 2
    assert message in one_line_error(capsys)


# --- flags that cannot go together, numbers that make no sense for the data ------------------------------------


@pytest.mark.parametrize("argv, flags", [
    (["demo", "--model", "CKPT", "--preset", "small"], "--preset set the toy π_ref, which --model"),
    (["demo", "--model", "CKPT", "--rebuild"], "--rebuild set the toy π_ref"),
    (["demo", "--model", "CKPT", "--preset", "tiny", "--rebuild"], "--preset and --rebuild set the toy π_ref"),
    (["train", "--data", "DATA", "--model", "CKPT", "--preset", "base"], "--preset set the toy π_ref, which --model"),
])
def test_model_with_toy_model_flags_is_refused(tmp_path, tiny_checkpoint, argv, flags, capsys, no_work):
    data = write_bytes(tmp_path, jsonl(GOOD, OTHER))
    argv = [{"CKPT": str(tiny_checkpoint), "DATA": str(data)}.get(a, a) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2  # before: both ignored, the wrong preset recorded
    err = one_line_error(capsys)
    assert flags in err and "drop --model to use the toy model" in err and not (tmp_path / "out").exists()


def test_demo_on_a_checkpoint_too_short_for_its_samples_says_what_applies(tmp_path, tiny_checkpoint, capsys, no_work):
    from dpo_teach.model import build_model, load_checkpoint, save_checkpoint

    _, tok = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "short"
    save_checkpoint(build_model("tiny", len(tok), tok.eos_token_id, n_positions=20), tok, path)
    capsys.readouterr()  # progress bars of the loading and saving above
    assert main(["demo", "--model", str(path), "--max-length", "20", "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)  # before: "lower max_new_tokens", a setting the demo has no flag for
    assert "the demo samples completions of up to 16 tokens" in err and f"checkpoint {path} has 20" in err
    assert "max_new_tokens" not in err and "use a checkpoint with a longer context" in err


@pytest.mark.parametrize("fraction, rows, message", [
    ("1e-300", 20, "--eval-fraction 1e-300 of 20 valid rows rounds to no held-out pair; pass at least "
                   "--eval-fraction 0.05"),
    ("0.999", 20, "--eval-fraction 0.999 of 20 valid rows holds out all of them, leaving none to train on; pass at "
                  "most --eval-fraction 0.95"),
    ("0.5", 1, "1 valid row is too few to hold out one pair and train on the rest"),
])
def test_an_eval_fraction_that_leaves_a_side_empty_names_the_fraction(tmp_path, tiny_checkpoint, fraction, rows,
                                                                      message, capsys):
    data = write_bytes(tmp_path, jsonl(*([GOOD, OTHER] * rows)[:rows]))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--eval-fraction", fraction,
                 "--out", str(tmp_path / "out"), "--quiet", "--max-length", "32"]) == 2
    assert message in one_line_error(capsys)  # before: "too few to hold out 0%"


@pytest.mark.parametrize("kind", ["pipe", "device"])
def test_data_that_is_not_a_regular_file_is_named_so(tmp_path, kind, capsys):
    import os

    if kind == "pipe":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # what `--data <(cat f)` passes; reading it would block, and it can be read once only
    else:
        path = Path("/dev/null")
    with pytest.raises(DataError, match=f"{path}: is a {kind}, not a regular file; save the data to a file first"):
        load_preferences(path)  # before: "no such file", though the path exists
    assert main(["train", "--data", str(path)]) == 2
    assert "not a regular file" in one_line_error(capsys)


# --- training that diverges, an --out that holds other files ------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--lr", "10"), ("--lr", "1e6"), ("--beta", "1e300")])
def test_divergent_training_is_an_error_and_saves_nothing(tmp_path, tiny_checkpoint, flag, value, capsys):
    data = write_bytes(tmp_path, jsonl(*distinct_rows(40)))
    out = tmp_path / "out"
    argv = ["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(out), "--quiet",
            "--batch-size", "4", "--epochs", "2", "--max-length", "32", flag, value]
    assert main(argv) == 2  # before: rc 0, "final loss nan" and a policy of nan weights
    if flag == "--beta":  # a β this large is warned about first, in one line of its own (a slip of the exponent)
        warning, err = capsys.readouterr().err.strip().split("\n", 1)
        assert warning.startswith(f"dpo-teach train: warning: --beta {float(value):g} is huge: "), warning
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    else:
        err = one_line_error(capsys)
    # lr = 10: on some CPUs the loss turns nan; on others the weights stay finite, thrown far off
    assert re.search(r"DPO diverged at step \d+ of 18 \((the (loss|gradient norm) is (nan|inf)|the chosen "
                     r"completions' log-probability fell to)", err), err
    assert f"lr={float(value) if flag == '--lr' else 2e-4:g}" in err and "Lower the learning rate (--lr" in err
    assert f"beta={float(value) if flag == '--beta' else 0.5:g}" in err and "or β (--beta)" in err
    assert not out.exists()


@pytest.mark.parametrize("loss, beta, warned", [("sigmoid", "1e-6", True), ("hinge", "1e-4", True),
                                                ("sigmoid", "0.01", False), ("ipo", "1e-4", False),
                                                ("sigmoid", "1e-300", "so small that every gradient")])
def test_a_tiny_beta_is_warned_about_in_one_line(tmp_path, tiny_checkpoint, loss, beta, warned, capsys):
    """β = 1e-6 (a unit slip) reads on the dashboard like β = 0 (loss ln 2, rewards 0) while AdamW moves the policy at
    full speed: train says so in one line and runs on. IPO's β sets its target, 1/(2β): not warned there. Far below,
    (1e-300: 0 in float32) the gradients fall under AdamW's ε and the policy does not move: the warning said it moved
    at full speed."""
    data = write_bytes(tmp_path, jsonl(*distinct_rows(20)))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out"),
                 "--quiet", "--batch-size", "8", "--epochs", "1", "--max-length", "32", "--loss", loss,
                 "--beta", beta]) == 0
    err = capsys.readouterr().err
    if isinstance(warned, str):
        assert f"dpo-teach train: warning: --beta {float(beta):g} is {warned}" in err and "full speed" not in err, err
    else:
        assert (f"dpo-teach train: warning: --beta {float(beta):g} is tiny: the loss will read" in err) is warned, err
    assert "Traceback" not in err and "cli_args.py" not in err


@pytest.mark.parametrize("loss, beta, says", [
    ("sigmoid", "1e6", "the loss and the rewards read in units of β"), ("hinge", "500", "the loss and the rewards"),
    ("ipo", "1e3", "IPO's target margin 1/(2β) is 0.0005, so the loss pulls every pair's log-ratio margin to about 0"),
    ("sigmoid", "10", None), ("ipo", "50", None)])
def test_a_huge_beta_is_warned_about_in_one_line(tmp_path, tiny_checkpoint, loss, beta, says, capsys):
    """β = 1e6 (an exponent slip) trained without a word and printed a final loss of 26553: the loss and rewards
    read in units of β, and IPO's target 1/(2β) sits at 0. train says so in one line and runs on."""
    data = write_bytes(tmp_path, jsonl(*distinct_rows(20)))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out"),
                 "--quiet", "--batch-size", "8", "--epochs", "1", "--max-length", "32", "--loss", loss,
                 "--beta", beta]) == 0
    err = capsys.readouterr().err
    warning = f"dpo-teach train: warning: --beta {float(beta):g} is huge: "
    assert (warning in err) is (says is not None), err
    if says:
        assert says in err and len([line for line in err.splitlines() if "warning" in line]) == 1, err
    assert "Traceback" not in err and "cli_args.py" not in err


@pytest.mark.parametrize("batch_size, warned", [("64", True), ("10" + "0" * 30, True), ("8", False)])
def test_a_batch_larger_than_the_training_pairs_is_warned_about_in_one_line(tmp_path, tiny_checkpoint, batch_size,
                                                                            warned, capsys):
    """--batch-size 1e30 on 18 training pairs ran one step and said nothing (metrics.json recorded the 1e30)."""
    data = write_bytes(tmp_path, jsonl(*distinct_rows(20)))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out"),
                 "--quiet", "--batch-size", batch_size, "--epochs", "1", "--max-length", "32"]) == 0
    err = capsys.readouterr().err
    said = f"dpo-teach train: warning: --batch-size {batch_size} is more than the 18 training pairs: each epoch is one"
    assert (said in err) is warned, err
    assert "Traceback" not in err


def test_optimizer_step_refuses_a_nan_loss_and_leaves_the_weights(tiny_checkpoint):
    import torch

    from dpo_teach.model import load_checkpoint
    from dpo_teach.training import TrainingError, adamw, optimizer_step

    model, _ = load_checkpoint(tiny_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.tensor([[1, 2, 3]])).logits.sum() * float("nan")
    with pytest.raises(TrainingError, match="the loss is nan"):
        optimizer_step(adamw(model.parameters(), 1e-3), loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("breaks", ["the loss", "a weight", "thrown off", "the last update"])
def test_a_students_step_that_steps_anyway_is_stopped_with_the_step_and_settings(world, pairs, breaks):
    """Notebook 05 trains with the student's own ``dpo_training_step``: one that reports a nan loss, or that
    steps without the package's finite-gradient check and overflows a weight, must stop ``train_dpo`` with the step
    and settings, not hand back a policy of nan weights. So must a policy whose chosen completions fall below -50
    nats per token while its weights stay finite (what a learning rate of 10 does on some CPUs: before, the run
    ended "successfully" with a policy thrown far off), and an update by the last step, which no step's metrics
    see (they come from the forward pass before the update)."""
    import copy
    import math

    import torch

    from dpo_teach.dpo import DPOConfig, dpo_step, train_dpo
    from dpo_teach.training import TrainingError

    reference, tokenizer = world
    policy = copy.deepcopy(reference)
    calls = []

    def students_step(policy, reference, batch, optimizer, loss_fn):
        metrics = dpo_step(policy, reference, batch, optimizer, loss_fn)
        calls.append(1)
        if len(calls) == 2 and breaks == "the loss":
            return {**metrics, "loss": math.nan}
        if len(calls) == 3 and breaks == "a weight":  # the last of 3 steps: only the final check can see it
            with torch.no_grad():
                next(policy.parameters())[0, 0] = math.inf
        if len(calls) == 3 and breaks == "thrown off":
            return {**metrics, "logps/chosen": -1e4}  # the batch's chosen completions: a few tokens each
        if len(calls) == 3 and breaks == "the last update":  # finite weights, seen by no step's metrics
            with torch.no_grad():
                policy.transformer.ln_f.weight.mul_(1e4)
        return metrics

    cfg = DPOConfig(beta=0.5, lr=1e-3, batch_size=16, epochs=1, seed=0)
    step, what = {"the loss": ("2 of 3", "the loss is nan"), "a weight": ("3 of 3", "a weight is no longer finite"),
                  "thrown off": ("3 of 3", "the chosen completions' log-probability fell to -[0-9.e+]+ nats per "
                                           "token, below -50: the weights were thrown far off"),
                  "the last update": ("3 of 3", "after the last step's update, the chosen completions' "
                                                "log-probability fell to -[0-9.e+]+ nats per token, below -50: the "
                                                "weights were thrown far off")}[breaks]
    with pytest.raises(TrainingError, match=rf"DPO diverged at step {step} \({what}; .*peak lr=0.001, beta=0.5\)"):
        train_dpo(policy, reference, tokenizer, pairs[:48], cfg, step_fn=students_step)


@pytest.mark.parametrize("trainer, beta", [("SFT", None), ("The reward model", None), ("PPO", "kl_coef"),
                                           ("GRPO", "beta"), ("RLOO", "beta"), ("GRPO β=0", None),
                                           ("DPO", "beta")])
def test_every_trainer_that_diverges_says_which_run_which_step_and_what_to_change(world, pairs, trainer, beta):
    """lr = 1e30: AdamW's first step moves every weight by about 1e30, so the next loss is nan or inf. Each trainer
    stops there with an error that names itself, the step and its settings (before: only DPO's did; the others
    said "the loss is nan"), and what to lower: the learning rate, and β where the trainer has one that is not 0
    (before: only DPO's named β). Called from Python, as in a notebook or the comparison, they are named by their
    config fields; DPO's named the CLI's --lr and --beta there too (its CLI test: the flags above)."""
    import copy
    from dataclasses import replace

    from dpo_teach.dpo import DPOConfig, train_dpo
    from dpo_teach.grpo import GRPOConfig, train_grpo
    from dpo_teach.ppo import PPOConfig, train_ppo
    from dpo_teach.reward import ground_truth_reward
    from dpo_teach.reward_model import RewardConfig, ScalarModel, train_reward_model
    from dpo_teach.rloo import train_rloo
    from dpo_teach.sft import SFTConfig, train_sft
    from dpo_teach.training import TrainingError

    reference, tokenizer = world
    policy = copy.deepcopy(reference)

    def reward(prompts, completions):
        return ground_truth_reward(completions)

    group = GRPOConfig(beta=0.1, steps=2, prompts_per_step=4, group_size=4, minibatch_size=4, lr=1e30, seed=0)
    runs = {
        "SFT": lambda: train_sft(policy, [(tokenizer.encode(r["prompt"]), tokenizer.encode(r["chosen"]))
                                          for r in pairs[:16]], tokenizer.pad_token_id,
                                 SFTConfig(steps=3, batch_size=4, lr=1e30)),
        "The reward model": lambda: train_reward_model(reference, tokenizer, pairs[:16],
                                                       RewardConfig(batch_size=4, epochs=1, lr=1e30)),
        "PPO": lambda: train_ppo(policy, reference, ScalarModel.from_causal_lm(reference, head_std=0.0), tokenizer,
                                 reward, PPOConfig(kl_coef=0.05, steps=2, rollout_size=16, minibatch_size=4,
                                                   ppo_epochs=1, lr=1e30)),
        "GRPO": lambda: train_grpo(policy, reference, tokenizer, reward, group),
        "RLOO": lambda: train_rloo(policy, reference, tokenizer, reward, group),
        "GRPO β=0": lambda: train_grpo(policy, reference, tokenizer, reward, replace(group, beta=0.0)),
        "DPO": lambda: train_dpo(policy, reference, tokenizer, pairs[:16], DPOConfig(batch_size=4, lr=1e30)),
    }
    with pytest.raises(TrainingError) as caught:
        runs[trainer]()
    message = str(caught.value)
    name = trainer.removesuffix(" β=0")
    assert re.match(rf"{name} diverged at step \d+ of \d+ \(the (loss|gradient norm) is (nan|inf)", message), message
    fix = message.partition("nothing was saved. ")[2]
    assert "peak lr=1e+30" in message and fix.startswith("Lower the learning rate (lr, e.g. 1e+29)"), message
    if beta:
        assert f", {beta}=" in message and fix.endswith(f" or β ({beta})"), message
    else:
        assert "β" not in fix, message


@pytest.mark.parametrize("loss_type, beta", [("ipo", 0.01), ("sigmoid", 1000.0)])
def test_a_healthy_run_with_a_large_loss_is_not_called_diverged(world, pairs, loss_type, beta):
    """A large loss is not a diverged run: IPO at β = 0.01 starts at (1/2β)² = 2500, and DPO at β = 1000 has a loss
    near β·|h| though the policy barely moves (a first check, on the loss jumping 100-fold from its first step,
    stopped β = 1000 at step 10 with "diverged" while the weights had moved by a few hundredths of a nat). The
    check reads the policy's log-probabilities per token, which β does not scale."""
    import copy
    import math

    from dpo_teach.dpo import DPOConfig, train_dpo

    reference, tokenizer = world
    history = train_dpo(copy.deepcopy(reference), reference, tokenizer, pairs[:64],
                        DPOConfig(batch_size=8, lr=1e-3, beta=beta, loss_type=loss_type, seed=0, epochs=2))
    assert len(history) == 16 and max(h["loss"] for h in history) > 100 * math.log(2), max(h["loss"] for h in history)


def test_ipos_divergence_hint_raises_beta(world, pairs):
    """IPO's loss (h − 1/(2β))² has a target and a gradient that grow as β falls: its hint says to raise β, where
    every other trainer's says to lower it (before: "or β", read as lower, which makes IPO worse)."""
    import copy

    from dpo_teach.dpo import DPOConfig, train_dpo
    from dpo_teach.training import TrainingError

    reference, tokenizer = world
    with pytest.raises(TrainingError) as caught:
        train_dpo(copy.deepcopy(reference), reference, tokenizer, pairs[:16],
                  DPOConfig(batch_size=4, lr=1e30, loss_type="ipo"))
    assert str(caught.value).endswith("Lower the learning rate (lr, e.g. 1e+29) or raise β (beta)"), str(caught.value)


def test_an_out_dir_holding_other_files_is_refused_before_any_work(tmp_path, capsys, no_work):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "metrics.json").write_text("{}")  # an earlier run's file is fine to replace
    assert main(["demo", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"--out {out}: holds 1 file (notes.txt) that a run does not write" in err
    assert (out / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("names, holds", [
    (["results/"], "holds 1 folder (results) that a run does not write"),
    (["notes.txt", "old/", "results/"], "holds 1 file and 2 folders (e.g. notes.txt) that a run does not write"),
    (["a.txt", "b.txt"], "holds 2 files (e.g. a.txt) that a run does not write"),
])
def test_what_an_out_dir_holds_is_called_a_file_or_a_folder(tmp_path, capsys, no_work, names, holds):
    """The refusal called a folder "file(s)"; now it counts files and folders apart."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name).mkdir() if name.endswith("/") else (out / name).write_text("mine")
    assert main(["demo", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"--out {out}: {holds}, and a run replaces" in err, err
    assert ("move it out" if len(names) == 1 else "move them out") in err
    assert sorted(p.name for p in out.iterdir()) == sorted(n.rstrip("/") for n in names)  # nothing was deleted


def test_heldout_pairs_repeated_in_training_are_warned_about(tmp_path, tiny_checkpoint, capsys):
    data = write_bytes(tmp_path, jsonl(*[GOOD] * 20))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out"),
                 "--quiet", "--batch-size", "8", "--max-length", "32"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [f"dpo-teach train: warning: {data}: 2 of the 2 held-out pairs also appear in the training "
                       "pairs (the file repeats rows), so held-out accuracy overstates how well the policy "
                       "generalises; remove duplicate rows (e.g. `sort -u`)"]
    assert "held-out implicit-reward accuracy 1.000 on 2 pairs (one pair is 0.500 of it: a larger --eval-fraction " \
           "gives a finer number)" in captured.out  # said of 3 held-out HH-RLHF pairs as if it were a measurement


def test_completions_repeating_the_prompt_are_warned_about_once(tmp_path, tiny_checkpoint, capsys):
    rows = [{**row, "chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
            for row in distinct_rows(20)]
    data = write_bytes(tmp_path, jsonl(*rows))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out"),
                 "--quiet", "--batch-size", "8", "--max-length", "32"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "begin with the prompt" in line]
    assert warning == [f"dpo-teach train: warning: {data}: in 20 of 20 rows both 'chosen' and 'rejected' begin with "
                       "the prompt; they should hold only the completion that follows it (the trainer scores prompt + "
                       "completion, so the prompt would be read twice): remove the prompt from the start of the "
                       "completions"]


# --- each input read once -------------------------------------------------------------------------------------


def test_train_parses_the_data_file_once_and_checks_prompt_lengths_after(tmp_path, tiny_checkpoint, monkeypatch,
                                                                       capsys):
    """The file is parsed before any model is loaded (so a bad row fails fast) and only then: the prompt-length check,
    which needs the tokenizer, runs on the rows already read and still names the line (before: parsed twice)."""
    import dpo_teach.preference_file

    rows = distinct_rows(20)
    rows[6] = {**rows[6], "prompt": "the film was " * 20}  # 60+ tokens: no room within --max-length 32
    data = write_bytes(tmp_path, jsonl(*rows))
    parsed = []
    parse_line = dpo_teach.preference_file._parse_line
    monkeypatch.setattr(dpo_teach.preference_file, "_parse_line", lambda *a: parsed.append(1) or parse_line(*a))
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out"),
                 "--quiet", "--batch-size", "8", "--max-length", "32", "--skip-invalid"]) == 0
    assert len(parsed) == 20
    out = capsys.readouterr().out
    assert f"skipped 1 invalid rows of {data} (first: line 7: the prompt is" in out
    assert "use a model with a longer context than 32 tokens (--model)" in out, "--max-length 32 is its all"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_train_pairs"] == 17  # 19 valid, 2 held out


def test_demo_loads_the_checkpoint_once(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """`demo --model` reads the checkpoint to check its context, and trains on that same load (before: loaded twice,
    which for a real GPT-2 doubles the wait and the memory at start)."""
    import dpo_teach.model
    import dpo_teach.pipeline
    from dpo_teach.model import build_model, load_checkpoint, save_checkpoint

    _, tok = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "ckpt"  # tiny_checkpoint's 32 positions are too few for the demo's prompts and samples
    save_checkpoint(build_model("tiny", len(tok), tok.eos_token_id, n_positions=64), tok, path)
    loads = []

    def counted(where):
        loads.append(where)
        return load_checkpoint(where)

    class Reached(Exception):
        pass

    def pairs(model, tokenizer, config):  # the first step after π_ref: stop the demo here
        raise Reached

    for module in (dpo_teach.model, dpo_teach.pipeline):
        monkeypatch.setattr(module, "load_checkpoint", counted)
    monkeypatch.setattr(dpo_teach.pipeline, "make_preference_pairs", pairs)
    with pytest.raises(Reached):
        main(["demo", "--model", str(path), "--pairs", "12", "--out", str(tmp_path / "out"), "--quiet"])
    assert loads == [str(path)]


def test_demo_rebuild_trains_on_the_reference_it_just_built(tmp_path, tiny_checkpoint, monkeypatch):
    """`demo --rebuild` builds the toy π_ref anew and goes on with that model (before: it was thrown away and loaded
    again from the cache, and built a second time where the cache could not be written)."""
    import dpo_teach.pipeline
    import dpo_teach.world
    from dpo_teach.model import load_checkpoint

    model, tok = load_checkpoint(tiny_checkpoint)  # stands in for the rebuilt π_ref
    calls = []

    def built(config, rebuild=False, **kwargs):
        calls.append(("built" if rebuild else "loaded", config.preset))
        return model, tok

    class Reached(Exception):
        pass

    def pairs(reference, tokenizer, config):  # the first step after π_ref: stop the demo here
        assert reference is model, "the demo went on with another π_ref than the one --rebuild built"
        raise Reached

    for module in (dpo_teach.world, dpo_teach.pipeline):
        monkeypatch.setattr(module, "load_reference", built)
    monkeypatch.setattr(dpo_teach.pipeline, "make_preference_pairs", pairs)
    with pytest.raises(Reached):
        main(["demo", "--rebuild", "--pairs", "12", "--out", str(tmp_path / "out"), "--quiet"])
    assert calls == [("built", "tiny")]


def test_train_keeps_a_folders_pair_files_it_does_not_write(tmp_path, capsys, no_work):
    """`train --out DIR` deleted the user's own train.jsonl and heldout.jsonl in DIR: the demo writes those names,
    train does not, so for train they are the user's files."""
    data = write_bytes(tmp_path, jsonl(GOOD, OTHER))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.jsonl").write_bytes(jsonl(GOOD))
    (out / "heldout.jsonl").write_bytes(jsonl(OTHER))
    (out / "metrics.json").write_text("{}")  # an earlier train run's: fine to replace
    assert main(["train", "--data", str(data), "--out", str(out)]) == 2
    assert f"--out {out}: holds 2 files (e.g. heldout.jsonl) that a train run does not write" in one_line_error(capsys)
    assert (out / "train.jsonl").read_bytes() == jsonl(GOOD) and (out / "heldout.jsonl").read_bytes() == jsonl(OTHER)


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path, tiny_checkpoint, capsys):
    """A policy saved after its training diverged: train blamed the learning rate, demo crashed in torch.multinomial."""
    from safetensors.torch import load_file, save_file

    from dpo_teach.model import CheckpointError, load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "diverged")
    weights = load_file(path / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("attn.c_attn.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"weight {re.escape(name)} holds nan or inf \(saved after training "):
        load_checkpoint(path)
    data = write_bytes(tmp_path, jsonl(GOOD, OTHER))
    assert main(["train", "--data", str(data), "--model", str(path), "--out", str(tmp_path / "t")]) == 2
    assert "holds nan or inf" in one_line_error(capsys)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_earlier_run(tmp_path, tiny_checkpoint, monkeypatch,
                                                                        capsys):
    """safetensors reports a full disk as its own error (not an OSError): it became a traceback after training."""
    import dpo_teach.model

    class SafetensorError(Exception):
        pass

    def full_disk(self, directory, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    data = write_bytes(tmp_path, jsonl(*distinct_rows(8)))
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}')
    monkeypatch.setattr(dpo_teach.model.PreTrainedModel, "save_pretrained", full_disk)
    assert main(["train", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(out), "--quiet",
                 "--max-length", "32", "--batch-size", "4"]) == 2  # a batch below the 7 training pairs: no warning
    err = one_line_error(capsys)
    assert err.startswith("dpo-teach train: error: Error while serializing: I/O error: No space left on device")
    assert err.rstrip().endswith(f"--out {out} is as it was before this run")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []
    assert (out / "metrics.json").read_text() == '{"earlier": true}'


def test_symbolic_links_as_outputs_stay_and_what_they_name_is_written(tmp_path):
    """`data --out link.jsonl` replaced the link by a plain file and left the file it names unchanged; `train --out
    link` to a folder not made yet trained, then lost the run at the rename onto the link. Now the writes follow
    the link, and the checks look where it points."""
    from dpo_teach.cli_args import check_out_replaceable, check_writable
    from dpo_teach.pipeline import TRAIN_OUTPUTS
    from dpo_teach.utils import atomic_dir, atomic_write_text

    (tmp_path / "target.jsonl").write_text("old")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "target.jsonl")
    check_writable(tmp_path / "link.jsonl", "--out", directory=False)
    atomic_write_text(tmp_path / "link.jsonl", "new")
    assert (tmp_path / "link.jsonl").is_symlink() and (tmp_path / "target.jsonl").read_text() == "new"
    (tmp_path / "runlink").symlink_to(tmp_path / "not_yet" / "run")  # a folder not made yet
    check_writable(tmp_path / "runlink", "--out", directory=True)
    check_out_replaceable(str(tmp_path / "runlink"), TRAIN_OUTPUTS)
    for run in ("first", "second"):
        with atomic_dir(tmp_path / "runlink") as work:
            (work / "metrics.json").write_text(run)
        assert (tmp_path / "runlink").is_symlink() and (tmp_path / "runlink" / "metrics.json").read_text() == run
    assert sorted(p.name for p in (tmp_path / "not_yet").iterdir()) == ["run"]


def test_a_demo_whose_max_length_cuts_its_pairs_says_so_as_train_does(tmp_path, capsys, cache_root):
    """`train --max-length 10` warned that pairs are cut; the demo cut them without a word."""
    assert main(["demo", "--pairs", "12", "--epochs", "1", "--max-length", "10", "--quiet",
                 "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "dpo-teach demo: warning: the demo's sampled pairs: " in err and " pairs are longer than --max-length " \
        "10 tokens and are cut at the end (as TRL does)" in err and "raise --max-length" in err, err


def test_pairs_that_all_cut_to_the_same_tokens_are_refused(tmp_path, capsys, cache_root, monkeypatch):
    """Every pair's completions begin alike for longer than --max-length: cut, each pair had nothing to prefer. The
    run warned, trained (every loss log 2) and wrote a run whose held-out accuracy was 0.000."""
    shared = " the acting was great and the plot was great and the music was great and the end was"
    rows = [{"prompt": f"review {i} :", "chosen": shared + " fine .", "rejected": shared + " dull ."}
            for i in range(12)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("dpo_teach.dpo.train_dpo", lambda *a, **k: pytest.fail("it trained"))
    assert main(["train", "--data", str(tmp_path / "prefs.jsonl"), "--max-length", "12", "--out",
                 str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert "prefs.jsonl: every pair is longer than --max-length 12 tokens" in err and "raise --max-length" in err, err
    assert not (tmp_path / "run").exists()


def test_a_config_of_another_model_over_these_weights_is_refused_before_it_is_built(tmp_path, tiny_checkpoint):
    """config.json's model_type edited to llama over GPT-2's weights: transformers built Llama at its default size
    (13 GB in 30 s here) before comparing any weight."""
    import time

    from dpo_teach.model import CheckpointError, load_checkpoint

    path = _copy_checkpoint(tiny_checkpoint, tmp_path / "edited")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "llama", "architectures": None}))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"config.json describes a llama model of about [\d,]+ M parameters \(32 "
                                              r"layers of width 4096\), but its weights files hold [\d.]+ MB; the "
                                              r"config belongs to another model"):
        load_checkpoint(path)
    assert time.perf_counter() - start < 30  # refused from the files, not after building the model


def test_a_transformers_that_skips_gpt2s_residual_scale_is_refused_before_pi_ref_is_built(tmp_path, monkeypatch,
                                                                                           capsys):
    """transformers 5.0 to 5.14 drew GPT-2's residual projections at 0.02 instead of 0.02/√(2·n_layer)
    (huggingface/transformers#47458): π_ref was another model (the demo's KL 1.95 instead of 1.08) and was cached as
    if it were the course's. Here that init is imitated; the build stops with the version and the fix, nothing is
    cached, and the command says it in one line."""
    import torch

    from dpo_teach import model
    from dpo_teach.model import InstallError, build_model

    class Unscaled(model.GPT2LMHeadModel):
        def __init__(self, config):
            super().__init__(config)
            with torch.no_grad():
                for block in self.transformer.h:
                    block.attn.c_proj.weight.normal_(0.0, config.initializer_range)

    assert build_model("tiny", 300, 0) is not None  # this environment's transformers: the course's model
    monkeypatch.setattr(model, "GPT2LMHeadModel", Unscaled)
    refused = (r"transformers \S+ initialises GPT-2's residual projections without .* \(standard deviation "
               r"0\.0[12]\d*, expected 0\.0100; .*'transformers>=5\.15'")
    with pytest.raises(InstallError, match=refused):
        build_model("tiny", 300, 0)
    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path / "cache"))
    assert main(["data", "--out", str(tmp_path / "pairs.jsonl"), "--pairs", "10"]) == 2
    assert "dpo-teach data: error: transformers " in one_line_error(capsys)
    assert not list((tmp_path / "cache").glob("reference-*")) and not (tmp_path / "pairs.jsonl").exists()


@pytest.mark.parametrize("n_layer", [1, 2, 6])
def test_the_init_check_tells_scaled_from_unscaled_at_any_depth(n_layer):
    """One layer is the hardest case: unscaled is only √2 times the scaled spread. Over ten seeds, the check passes
    every model initialised as GPT-2 is and refuses every one drawn without the scale."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpo_teach.model import InstallError, check_scaled_init

    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_head=2, n_layer=n_layer)
    for seed in range(10):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        check_scaled_init(model)  # as GPT-2 draws it
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_proj.weight.normal_(0.0, config.initializer_range)
        with pytest.raises(InstallError):
            check_scaled_init(model)


def test_a_dpop_run_that_diverges_names_its_lambda():
    """`--loss dpop --dpop-lambda 1e39` diverged at its first step, and the message said to lower the learning rate
    or β only: λ, the weight that blew the loss up, was neither shown nor named."""
    from dpo_teach.dpo import FLAGS, DPOConfig
    from dpo_teach.training import diverged

    said = str(diverged("DPO", 0, 2, 2e-4, DPOConfig(loss_type="dpop", dpop_lambda=1e39), "the loss is nan", FLAGS))
    assert "dpop_lambda=1e+39" in said and "or λ (--dpop-lambda)" in said and "or β (--beta)" in said, said
    plain = str(diverged("DPO", 0, 2, 2e-4, DPOConfig(dpop_lambda=1e39), "the loss is nan", FLAGS))
    assert "λ" not in plain and "dpop_lambda" not in plain, plain  # another loss does not read λ


@pytest.mark.parametrize("config", ["{not json", "[1, 2]"])
def test_a_broken_config_json_is_named_not_the_tokenizer(tmp_path, tiny_checkpoint, config):
    """A checkpoint whose tokenizer files are whole but whose config.json is not: the tokenizer, loaded first, reads
    config.json too, and the error said "the tokenizer cannot be loaded"."""
    import shutil

    from dpo_teach.model import CheckpointError, load_checkpoint

    broken = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    (broken / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="config.json cannot be loaded"):
        load_checkpoint(broken)
