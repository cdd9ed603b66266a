"""Property test of the preference loader: whatever bytes a file holds, ``load_preferences`` returns valid rows or
raises ``DataError`` with a one-line message naming the file, never anything else.

Each strategy runs a fixed number of derandomized examples, so CI sees the same cases every time; the counts of
cases tried per input kind are printed (``pytest -s``) and checked.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_teach.preference_file import DataError, PreferenceFile, load_preferences

N = 300  # examples per strategy
SETTINGS = settings(max_examples=N, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEYS = ("prompt", "chosen", "rejected")
GOOD = {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),  # floats include NaN and ±inf
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
row_like = st.dictionaries(st.sampled_from([*KEYS, "chosen_reward", "Prompt"]) | st.text(max_size=8),
                           json_values | st.text(), max_size=5)  # objects that look like rows, mostly wrong
any_char = st.characters(codec=None) | st.integers(0xD800, 0xDFFF).map(chr)  # all of unicode, lone surrogates too
string_rows = st.fixed_dictionaries({k: st.text(any_char, max_size=30) for k in KEYS}).map(
    lambda d: json.dumps(d).encode())  # random strings, lone surrogates written as "\ud800" escapes
separators = st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"])


@st.composite
def mixed_lines(draw) -> bytes:
    """A file of good rows, row-like objects, JSON values, junk bytes and blanks, with random line ends."""
    parts = draw(st.lists(st.one_of(
        st.just(json.dumps(GOOD).encode()),
        string_rows,
        row_like.map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=40),
        st.just(b""),
    ), max_size=8))
    sep = draw(separators)
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + sep.join(parts) + draw(st.sampled_from([b"", sep]))


STRATEGIES = {
    "random bytes": st.binary(max_size=2000),
    "random unicode text": st.text(any_char, max_size=500).map(
        lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates become invalid UTF-8
    "JSON values, one per line": st.lists(json_values, max_size=6).map(
        lambda vs: b"\n".join(json.dumps(v).encode("utf-8", "surrogatepass") for v in vs)),
    "row-like JSON objects": st.lists(row_like, max_size=6).map(
        lambda ds: b"\n".join(json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass") for d in ds)),
    "rows of random strings": st.lists(string_rows, min_size=1, max_size=6).map(b"\n".join),
    "mixed lines": mixed_lines(),
}
COUNTS: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def tokenizer():
    from dpo_teach.tokenizer import train_tokenizer

    return train_tokenizer(["the film was great .", "honestly , the acting was awful ."] * 20, vocab_size=280)


def _check(path, data: bytes, tokenizer, skip: bool, counts: dict[str, int]) -> None:
    path.write_bytes(data)
    counts["cases"] += 1
    counts["lines"] += len(data.splitlines())
    try:
        loaded = load_preferences(path, tokenizer, 32 if tokenizer is not None else None, skip_invalid=skip)
    except DataError as e:
        message = str(e)
        assert message.startswith(f"{path}") and "\n" not in message, message
        counts["DataError"] += 1
        return
    assert isinstance(loaded, PreferenceFile) and loaded.rows
    for row in loaded.rows:
        assert all(isinstance(row[k], str) for k in KEYS) and row["chosen"] != row["rejected"]
        row["prompt"].encode("utf-8")  # real text, no lone surrogates
    assert skip or not loaded.skipped
    counts["rows returned"] += 1
    counts["lines skipped"] += len(loaded.skipped)


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_loader_only_returns_rows_or_raises_data_error(kind, tmp_path, tokenizer):
    counts = COUNTS.setdefault(kind, {"cases": 0, "lines": 0, "DataError": 0, "rows returned": 0, "lines skipped": 0})
    path = tmp_path / "prefs.jsonl"

    @SETTINGS
    @given(data=STRATEGIES[kind], skip=st.booleans(), with_tokenizer=st.booleans())
    def check(data: bytes, skip: bool, with_tokenizer: bool) -> None:
        _check(path, data, tokenizer if with_tokenizer else None, skip, counts)

    check()
    print(f"\n{kind}: {counts}")
    assert counts["cases"] >= N * 0.9  # hypothesis may stop early only when a strategy runs out of new cases
    assert counts["DataError"] > 0
