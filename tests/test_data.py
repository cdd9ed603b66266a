"""Preference pairs: generation, Bradley–Terry labels, and every bad row the loader must name."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from dpo_teach import data, preference_file
from dpo_teach.data import PreferenceConfig, bt_ceiling, bt_probability, heldout_overlap, split_pairs, write_preferences
from dpo_teach.preference_file import DataError, DataWarning, load_preferences, split_dialogue

# 200 real HH-RLHF rows (MIT, Anthropic; see the LICENSE and README beside the file): red-teaming data, tests only
HH = Path(__file__).resolve().parent / "data" / "hh-rlhf-sample" / "harmless-base-test-first200.jsonl"
GOOD = {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."}


def test_the_loader_names_are_still_importable_from_data():
    """The loader moved to preference_file; notebooks and the README import it from data: the same objects."""
    for name in ("DataError", "DataWarning", "EOSWarning", "PreferenceFile", "load_preferences", "read_preferences",
                 "check_preferences", "eos_problems", "split_dialogue", "ASSISTANT"):
        assert getattr(data, name) is getattr(preference_file, name), name


def write_lines(tmp_path, lines):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_generated_pairs_are_labelled_by_bradley_terry(pairs):
    assert len(pairs) > 250  # identical pairs dropped, most kept
    for r in pairs:
        assert set(r) == {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}
        assert r["chosen"] != r["rejected"]
    # with τ = 0.1 the chosen completion has the higher reward far more often than not
    better = sum(r["chosen_reward"] > r["rejected_reward"] for r in pairs)
    worse = sum(r["chosen_reward"] < r["rejected_reward"] for r in pairs)
    assert better > 4 * worse
    # ... but not always: each label is flipped with Bradley–Terry's probability σ(−|Δr| / τ), so the number of
    # pairs whose chosen completion has the lower reward is a sum of those Bernoullis (ties aside)
    tau = PreferenceConfig().bt_temperature
    flip = [bt_probability(min(a, b), max(a, b), tau) for r in pairs
            if (a := r["chosen_reward"]) != (b := r["rejected_reward"])]
    mean, sd = sum(flip), math.sqrt(sum(q * (1 - q) for q in flip))
    assert mean > 4 * sd, "the check below needs pairs whose label can flip"
    assert abs(worse - mean) <= 4 * sd, f"{worse} labels flipped; Bradley–Terry expects {mean:.1f} ± {sd:.1f}"


def test_bt_probability_and_ceiling():
    assert bt_probability(0.5, 0.5, 0.1) == 0.5
    assert math.isclose(bt_probability(0.3, 0.1, 0.1), 1 / (1 + math.exp(-2)))
    with warnings.catch_warnings():  # a τ so small that (r_a − r_b) / τ overflows: the sure label, and no warning
        warnings.simplefilter("error")
        assert bt_probability(np.float64(0.3), np.float64(0.1), 1e-320) == 1.0
        assert bt_probability(np.float64(0.1), np.float64(0.3), 1e-320) == 0.0
    rows = [{"chosen_reward": 0.0, "rejected_reward": 0.0}, {"chosen_reward": -1.0, "rejected_reward": 1.0}]
    assert math.isclose(bt_ceiling(rows, 0.1), (0.5 + 1 / (1 + math.exp(-20))) / 2)


def test_write_then_load_roundtrip_keeps_every_field_unchanged(tmp_path, pairs):
    path = tmp_path / "p.jsonl"
    write_preferences(path, pairs)
    loaded = load_preferences(path)
    assert loaded.rows == pairs and loaded.skipped == []


def test_split_is_seeded_and_disjoint(pairs):
    a_train, a_eval = split_pairs(pairs, 0.2, seed=3)
    b_train, b_eval = split_pairs(pairs, 0.2, seed=3)
    assert a_eval == b_eval and a_train == b_train
    assert len(a_eval) == round(0.2 * len(pairs))
    train, held_out = {id(r) for r in a_train}, {id(r) for r in a_eval}  # the rows themselves, not equal copies
    assert not train & held_out and train | held_out == {id(r) for r in pairs} and len(train) == len(a_train)
    _, other_eval = split_pairs(pairs, 0.2, seed=4)
    assert other_eval != a_eval, "the seed picks the held-out rows"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "chosen": " a"', "not valid JSON"),
    ('["x", " a", " b"]', "expected a JSON object"),
    ('{"prompt": "x", "rejected": " b"}', "'chosen' is missing"),
    ('{"chosen": " a", "rejected": " b"}', "no 'prompt' field"),
    ('{"prompt": "x", "chosen": 3, "rejected": " b"}', "'chosen' must be a string"),
    ('{"prompt": null, "chosen": " a", "rejected": " b"}', "'prompt' must be a string"),
    ('{"prompt": "x", "chosen": "   ", "rejected": " b"}', "'chosen' completion is empty"),
    ('{"prompt": "x", "chosen": " a", "rejected": ""}', "'rejected' completion is empty"),
    ('{"prompt": "", "chosen": " a", "rejected": " b"}', "the prompt is empty"),  # else y's first token goes unscored
    ('{"prompt": "x", "chosen": " same", "rejected": " same"}', "identical"),
])
def test_bad_rows_name_file_line_and_fix(tmp_path, line, message):
    path = write_lines(tmp_path, [json.dumps(GOOD), "", line, json.dumps(GOOD)])
    with pytest.raises(DataError) as err:
        load_preferences(path)
    text = str(err.value)
    assert f"{path}:3:" in text and message in text and "--skip-invalid" in text


def test_prompt_that_leaves_no_room_is_reported(tmp_path, world):
    _, tok = world
    long_prompt = {"prompt": "the film was " * 30, "chosen": " great .", "rejected": " bad ."}
    path = write_lines(tmp_path, [json.dumps(GOOD), json.dumps(long_prompt)])
    with pytest.raises(DataError, match=r":2: the prompt is \d+ tokens.*max_length=64"):
        load_preferences(path, tok, max_length=64)
    assert len(load_preferences(path, tok, max_length=200).rows) == 2


def test_skip_invalid_counts_and_keeps_the_rest_unchanged(tmp_path):
    extra = {**GOOD, "chosen": " so great .", "note": {"kept": [1, 2]}}
    path = write_lines(tmp_path, [json.dumps(GOOD), "oops", json.dumps({**GOOD, "rejected": " great ."}),
                                  json.dumps(extra)])
    loaded = load_preferences(path, skip_invalid=True)
    assert loaded.rows == [GOOD, extra]
    assert [line for line, _ in loaded.skipped] == [2, 3]


def test_missing_empty_and_all_invalid_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="empty"):
        load_preferences(write_lines(tmp_path, ["", "  "]))
    with pytest.raises(DataError, match="no valid preference rows.*1 skipped"):
        load_preferences(write_lines(tmp_path, ["{"]), skip_invalid=True)


def test_hh_rlhf_rows_split_at_the_last_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Why did the chicken..."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."
    prompt, c, r = split_dialogue(chosen, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert (c, r) == (" Why did the chicken...", " No.")
    assert split_dialogue("\n\nHuman: a", "\n\nHuman: b") is None


def test_real_hh_rlhf_sample_loads(world):
    _, tok = world
    with pytest.raises(DataError, match=r":87: the 'chosen' completion is empty"):
        load_preferences(HH)  # row 87 of the real file has an empty chosen answer
    loaded = load_preferences(HH, tok, max_length=4096, skip_invalid=True)
    assert len(loaded.rows) == 199 and loaded.skipped[0][0] == 87
    raw = [json.loads(line) for line in HH.read_text(encoding="utf-8").splitlines()]
    for row, original in zip(loaded.rows[:20], raw[:20]):
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["chosen"] == original["chosen"]  # nothing lost or changed
        assert row["prompt"] + row["rejected"] == original["rejected"]


def test_gzipped_jsonl_is_read_transparently(tmp_path):
    """HH-RLHF ships ``train.jsonl.gz``: read as it is, bad rows named by their line as in the plain file."""
    import gzip

    path = tmp_path / "harmless-base-test.jsonl.gz"
    path.write_bytes(gzip.compress(HH.read_bytes()))
    with pytest.raises(DataError, match=r":87: the 'chosen' completion is empty"):
        load_preferences(path)  # before: "not UTF-8 (byte 0x8b ...); re-save the file as UTF-8 (iconv -f latin1 ...)"
    assert load_preferences(path, skip_invalid=True).rows == load_preferences(HH, skip_invalid=True).rows
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a download cut short
    with pytest.raises(DataError, match=r"cut.jsonl.gz: the gzip data is truncated or corrupt \(.*\); download"):
        load_preferences(cut, skip_invalid=True)


def test_completions_that_repeat_the_prompt_are_warned_about(tmp_path):
    full = {"prompt": "the film was", "chosen": "the film was great .", "rejected": "the film was bad ."}
    path = write_lines(tmp_path, [json.dumps(full)] * 3 + [json.dumps(GOOD)])
    with pytest.warns(DataWarning, match=r"in 3 of 4 rows both 'chosen' and 'rejected' begin with the prompt; .* "
                                         r"remove the prompt from the start of the completions") as caught:
        assert len(load_preferences(path).rows) == 4  # still loads: a warning, not an error
    assert {w.filename for w in caught} == {__file__}, "the warning points at the caller's line, not the package"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_preferences(write_lines(tmp_path, [json.dumps(full), json.dumps(GOOD), json.dumps(GOOD)]))  # a minority


def test_heldout_overlap_counts_heldout_pairs_also_in_training():
    other = {**GOOD, "chosen": " fine ."}
    assert heldout_overlap([GOOD, other], [GOOD, {**GOOD, "prompt": "x"}]) == 1
    assert heldout_overlap([GOOD] * 18, [GOOD] * 2) == 2
    assert heldout_overlap([other], [GOOD]) == 0


def test_pairs_swapped_and_completions_that_hold_a_human_turn_are_warned_about(tmp_path):
    """Both were trained without a word: a pair also labelled the other way round (the loss pulls it both ways), and
    HH-RLHF dialogues that differ before their last Assistant turn (each completion then carries the human's words)."""
    from dpo_teach.data import warn_label_problems

    swapped = {**GOOD, "chosen": GOOD["rejected"], "rejected": GOOD["chosen"]}
    other = {**GOOD, "chosen": " fine ."}
    with pytest.warns(DataWarning, match=r"prefs.jsonl: 2 of the 3 distinct pairs also appear with chosen and "
                                         r"rejected swapped"):
        warn_label_problems("prefs.jsonl", [GOOD, GOOD, swapped, other])
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: thanks\n\nAssistant: bye",
          "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: go away\n\nAssistant: ok"}
    (row,) = load_preferences(write_lines(tmp_path, [json.dumps(hh)])).rows
    assert row["prompt"] == "\n\nHuman: hi\n\nAssistant:" and "\n\nHuman:" in row["chosen"], row
    with pytest.warns(DataWarning, match=r"hh.jsonl: 1 of the 2 pairs have a '\\n\\nHuman:' turn in a completion"):
        warn_label_problems("hh.jsonl", [row, GOOD])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_label_problems("prefs.jsonl", [GOOD, other, GOOD])  # a duplicate is the held-out check's
