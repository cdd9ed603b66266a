"""The loader warns when the completions of a preference file end with EOS inconsistently (issue 10, §5)."""

from __future__ import annotations

import warnings

import pytest

from dpo_teach.data import write_preferences
from dpo_teach.pitfalls import tokenize_as_written, with_eos_in_text
from dpo_teach.preference_file import EOSWarning, eos_problems, load_preferences

ROWS = [{"prompt": "the film was", "chosen": " great .", "rejected": " bad ."},
        {"prompt": "honestly , the acting was", "chosen": " superb .", "rejected": " dull ."}]


def loaded_warnings(tmp_path, rows, tokenizer, **kwargs) -> list[str]:
    path = tmp_path / "pairs.jsonl"
    write_preferences(path, rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_preferences(path, tokenizer, **kwargs)
    assert all(issubclass(w.category, EOSWarning) for w in caught)
    return [str(w.message) for w in caught]


def test_clean_rows_load_without_a_warning(tmp_path, world):
    _, tokenizer = world
    assert loaded_warnings(tmp_path, ROWS, tokenizer) == []
    assert loaded_warnings(tmp_path, with_eos_in_text(ROWS, tokenizer.eos_token, "both"), tokenizer,
                           eos_in_text=True) == []


def test_one_sided_eos_is_flagged(tmp_path, world):
    _, tokenizer = world
    messages = loaded_warnings(tmp_path, with_eos_in_text(ROWS, tokenizer.eos_token, "chosen"), tokenizer)
    assert any("100% of the chosen and 0% of the rejected" in m for m in messages)
    assert all(m.startswith(str(tmp_path / "pairs.jsonl")) for m in messages), "the file is named"


def test_duplicated_eos_is_flagged(tmp_path, world):
    _, tokenizer = world
    messages = loaded_warnings(tmp_path, with_eos_in_text(ROWS, tokenizer.eos_token, "both"), tokenizer)
    assert len(messages) == 1 and "duplicated EOS" in messages[0]


def test_missing_eos_is_flagged_where_the_pipeline_expects_it(tmp_path, world):
    _, tokenizer = world
    messages = loaded_warnings(tmp_path, ROWS, tokenizer, eos_in_text=True)
    assert len(messages) == 1 and "never learn to stop" in messages[0]


@pytest.mark.parametrize("eos", [None, ""])
def test_no_eos_token_no_check(eos):
    assert eos_problems(with_eos_in_text(ROWS, "</s>", "chosen"), eos) == []


def test_tokenize_as_written_appends_nothing(world):
    _, tokenizer = world
    (example,) = tokenize_as_written(tokenizer, with_eos_in_text(ROWS[:1], tokenizer.eos_token, "rejected"), 64)
    assert example["rejected_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in example["chosen_ids"]
