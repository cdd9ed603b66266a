"""Reading a user's preference file: JSON Lines (gzipped or not) in, validated rows out, every bad row named.

Rows as in :mod:`dpo_teach.data` (TRL's ``prompt``/``chosen``/``rejected``); HH-RLHF rows with only ``chosen``/
``rejected`` dialogues are split (:func:`split_dialogue`; what one row must hold is in ``preference_rows.py``). A
refusal is a :class:`DataError` naming the file, the line and the fix; a file that loads but probably does not say
what its author meant gets a :class:`DataWarning`.
"""

from __future__ import annotations

import gzip
import json
import re
import stat
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dpo_teach.preference_rows import ASSISTANT, WholeFile, check_row, split_dialogue  # noqa: F401 (public too)


class DataError(ValueError):
    """A preference file that cannot be used as it is; the message names the file, the line and the fix."""


class DataWarning(UserWarning):
    """A preference file that loads but probably does not say what its author meant; the message says what to do."""


class EOSWarning(DataWarning):
    """The completions of a preference file end with EOS inconsistently (missing, duplicated or one-sided)."""


@dataclass
class PreferenceFile:
    """What :func:`load_preferences` read: the valid rows and, with ``skip_invalid``, what was skipped."""

    rows: list[dict]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    lines: list[int] = field(default_factory=list)  # the line number of each row (for errors found later)


def _prompt_too_long(row: dict, tokenizer, max_length: int, context: int | None = None) -> str:
    """Why the row's prompt leaves no room for a completion within ``max_length`` tokens ("" when it does); where
    ``max_length`` is already the model's ``context``, raising it is no way out."""
    n_prompt = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    if n_prompt < max_length:
        return ""
    return (f"the prompt is {n_prompt} tokens, which leaves no room for a completion in max_length={max_length}; "
            f"{length_fix(max_length, context, 'the prompt')}")


def length_fix(max_length: int, context: int | None, what: str) -> str:
    """What to do about text longer than ``max_length`` tokens: raise it, or, where it is already the model's
    ``context``, use a model that reads more; or shorten ``what``."""
    if context is None or max_length < context:
        return f"raise --max-length, or shorten {what}"
    return f"use a model with a longer context than {context} tokens (--model), or shorten {what}"


def warn_cut(source: str | Path, examples: list[dict], eos_id: int, max_length: int, context: int | None,
             stacklevel: int = 2) -> None:
    """A :class:`DataWarning` when some of the tokenized pairs ``examples`` (``logprobs.tokenize_pairs``) were cut at
    ``max_length`` tokens (a completion that lost its EOS), counting those left with nothing to prefer; a
    :class:`DataError` when that is every pair."""
    cut = [e for e in examples if not e["chosen_ids"][-1:] == e["rejected_ids"][-1:] == [eos_id]]
    if not cut:
        return
    same = sum(e["chosen_ids"] == e["rejected_ids"] for e in cut)
    if same == len(examples):  # every loss is log 2 whatever the policy does: a run of nothing, and its numbers
        raise DataError(f"{source}: every pair is longer than --max-length {max_length} tokens, and cut there its "
                        "chosen and rejected completions are the same tokens, with nothing left to prefer: "
                        f"{length_fix(max_length, context, 'the completions')}")
    warnings.warn(f"{source}: {len(cut)} of {len(examples)} pairs are longer than --max-length {max_length} tokens "
                  "and are cut at the end (as TRL does)"
                  + (f"; {same} of them are then the same tokens, with nothing left to prefer" if same else "")
                  + f": {length_fix(max_length, context, 'the completions')}", DataWarning, stacklevel=stacklevel)


class _DuplicateKey(ValueError):
    """A JSON object with one key twice (``json`` would silently keep the last value)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` for ``json.loads``: a dict, or :class:`_DuplicateKey` naming the repeated key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _lines(f) -> Iterator[bytes]:
    """A binary file's lines without their ends, split at \\n, \\r\\n or \\r (as Python's text mode splits)."""
    for chunk in f:
        yield from chunk.removesuffix(b"\n").removesuffix(b"\r").split(b"\r")


def _parse_line(raw: bytes, first: bool) -> tuple[dict | None, str]:
    """Decode, parse and validate one line. Returns ``(row, "")``, ``(None, reason)`` or ``(None, "blank")``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, (f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-save the file as UTF-8 "
                      "(e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`)")
    line = line.removeprefix("\ufeff")  # a byte-order mark some editors write, also mid-file (`cat a.jsonl b.jsonl`)
    if not line.strip():
        return None, "blank"
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        if line.strip() in ("[", "{"):  # the first line of a pretty-printed JSON file
            return None, _pretty_printed(line.strip())
        if (first and not line.lstrip().startswith(("{", "[")) and re.search(r"\bprompt\b", line, re.IGNORECASE)
                and any(c in line for c in ",;\t")):  # a spreadsheet's header row
            sep = max(",;\t", key=line.count)  # its separator
            return None, WholeFile(
                "the first line reads like a CSV header, not a JSON object: this loader reads JSON Lines; convert it: "
                f"`python -c \"import pandas as pd; d = pd.read_csv('in.csv', sep={sep!r}); d.columns = "
                "d.columns.str.lower(); d.to_json('out.jsonl', orient='records', lines=True, force_ascii=False)\"`")
        return None, f"not valid JSON ({e.msg} at column {e.colno}); fix the line"
    except _DuplicateKey as e:
        return None, (f"the key {e.args[0]!r} appears twice in one object, and JSON would keep only the last value; "
                      "remove the one you do not mean")
    except RecursionError:
        return None, "JSON nested too deeply to read; a row is one flat object of strings"
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        return None, f"not usable JSON ({e}); fix the line"
    return check_row(obj)


def _pretty_printed(bracket: str) -> str:
    if bracket == "[":
        return WholeFile("a line with a lone '[': the file looks like one JSON array printed over many lines, not "
                         "JSON Lines (one whole object per line); convert it with `jq -c '.[]' in.json > out.jsonl`")
    return WholeFile("a line with a lone '{': the rows look printed over several lines each, but JSON Lines needs "
                     "one whole object per line; convert the file with `jq -c . in.json > out.jsonl`")


# Files that are not UTF-8 JSON Lines, by their first bytes: (magic, what the file is, what to do).
_ICONV = "convert it: `iconv -f {} -t utf-8 in.jsonl > out.jsonl`"
_NOT_JSONL = [
    (b"\xff\xfe\x00\x00", "UTF-32 text (byte-order mark FF FE 00 00)", _ICONV.format("utf-32")),
    (b"\x00\x00\xfe\xff", "UTF-32 text (byte-order mark 00 00 FE FF)", _ICONV.format("utf-32")),
    (b"\xff\xfe", "UTF-16 text (byte-order mark FF FE)", _ICONV.format("utf-16")),
    (b"\xfe\xff", "UTF-16 text (byte-order mark FE FF)", _ICONV.format("utf-16")),
    (b"PAR1", "a Parquet file", "this loader reads JSON Lines only; convert it: `python -c \"import pandas as pd; "
     "pd.read_parquet('in.parquet').to_json('out.jsonl', orient='records', lines=True, force_ascii=False)\"`"),
    (b"BZh", "bzip2-compressed", "decompress it first: `bunzip2 -k in.jsonl.bz2`"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first: `unxz -k in.jsonl.xz`"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first: `unzstd in.jsonl.zst`"),
    (b"PK\x03\x04", "a zip archive", "unzip it first and pass the JSON Lines file inside"),
    # a file of another kind passed by mistake: converting its bytes (the advice for text that is not UTF-8) would
    # not help
    (b"\x89PNG\r\n\x1a\n", "a PNG image", "pass the JSON Lines file of preference pairs instead"),
    (b"\xff\xd8\xff", "a JPEG image", "pass the JSON Lines file of preference pairs instead"),
    (b"%PDF-", "a PDF document", "pass the JSON Lines file of preference pairs instead"),
]
_GZIP = b"\x1f\x8b"  # gzip's magic: read transparently (HH-RLHF ships *.jsonl.gz)


def _check_readable(path: Path) -> bool:
    """Refuse what is not a regular file of UTF-8 JSON Lines (gzipped or not), by its first bytes, with what to do.
    Returns whether the file is gzipped."""
    fix = "pass the path of a JSONL file with one preference pair per line"
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file; {fix}")
    if not path.exists():
        raise DataError(f"{path}: no such file; {fix}")
    if not path.is_file():  # opened twice (its first bytes, then its lines): a pipe would lose them
        mode = path.stat().st_mode
        kind = ("a pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a special file")
        raise DataError(f"{path}: is {kind}, not a regular file; save the data to a file first and pass its path")
    head = _head(path, gzipped=False)
    gzipped = head.startswith(_GZIP)
    if gzipped:
        head = _head(path, gzipped=True)
    for magic, what, todo in _NOT_JSONL:
        if head.startswith(magic):
            raise DataError(f"{path}: is {'gzipped ' if gzipped else ''}{what}, not UTF-8 JSON Lines; {todo}")
    return gzipped


def _head(path: Path, gzipped: bool) -> bytes:
    """The first 8 bytes of ``path`` (decompressed if ``gzipped``)."""
    return b"".join(_file_chunks(path, gzipped, lambda f: [f.read(8)]))


def _file_lines(path: Path, gzipped: bool) -> Iterator[bytes]:
    """The lines of ``path``, decompressed if ``gzipped``."""
    yield from _file_chunks(path, gzipped, _lines)


def _file_chunks(path: Path, gzipped: bool, read) -> Iterator[bytes]:
    """``read(f)``'s chunks of the open file; an unreadable file or a truncated or corrupt archive is a DataError."""
    try:
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            yield from read(f)
    except (OSError, EOFError, zlib.error) as e:
        if gzipped:
            raise DataError(f"{path}: the gzip data is truncated or corrupt ({e}); download or compress it again, "
                            "or pass the uncompressed file") from None
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); check the file's permissions") from None


def load_preferences(
    path: str | Path, tokenizer=None, max_length: int | None = None, skip_invalid: bool = False,
    eos_in_text: bool = False,
) -> PreferenceFile:
    """Read and validate a JSONL preference file: :func:`read_preferences`, then :func:`check_preferences`.

    Every row is checked: valid JSON object; string ``prompt``/``chosen``/``rejected`` (or an HH-RLHF row with
    only ``chosen``/``rejected``); non-empty completions; chosen ≠ rejected; and, given a tokenizer and
    ``max_length``, a prompt that leaves room for the completion. Blank lines are ignored. Extra fields are kept
    unchanged. Given a tokenizer with an EOS token, it warns (:class:`EOSWarning`, see :func:`eos_problems`) when the
    completions end with EOS inconsistently: duplicated (the text ends with EOS and the trainer appends another),
    missing (``eos_in_text=True`` but none ends with it), or different between chosen and rejected.

    Raises:
        DataError: on the first bad row (``file:line: reason``; rows that are not valid come before prompts that are
            too long), unless ``skip_invalid``; then bad rows are listed in ``PreferenceFile.skipped``. Also when the
            file is missing or holds no valid row.
    """
    data = read_preferences(path, skip_invalid)
    return check_preferences(path, data, tokenizer, max_length, skip_invalid, eos_in_text, _stacklevel=3)


def read_preferences(path: str | Path, skip_invalid: bool = False) -> PreferenceFile:
    """Parse and validate every row of a JSONL preference file, without a tokenizer: everything
    :func:`load_preferences` checks but the prompt's length in tokens, and no warnings yet. Reads the file once, so
    a caller can refuse a bad file before it loads a model, then finish with :func:`check_preferences`.

    Raises:
        DataError: as :func:`load_preferences`.
    """
    path = Path(path)
    gzipped = _check_readable(path)
    data = PreferenceFile([])
    # bytes: a line that is not UTF-8 is reported (or skipped) like any other bad row
    for lineno, raw in enumerate(_file_lines(path, gzipped), start=1):
        row, reason = _parse_line(raw, lineno == 1)
        if reason != "blank":
            _keep(data, path, lineno, row, reason, skip_invalid)
    return _some_rows(data, path)


def check_preferences(path: str | Path, data: PreferenceFile, tokenizer=None, max_length: int | None = None,
                      skip_invalid: bool = False, eos_in_text: bool = False, _stacklevel: int = 2,
                      context: int | None = None) -> PreferenceFile:
    """The checks of :func:`load_preferences` that need the tokenizer, on the rows :func:`read_preferences` read
    from ``path``: a prompt that leaves room for the completion within ``max_length``, and the warnings (EOS, and
    completions that repeat the prompt). Returns the rows that pass (``data`` itself without a tokenizer)."""
    path = Path(path)
    if tokenizer is not None and max_length is not None:
        checked = PreferenceFile([], list(data.skipped))
        for lineno, row in zip(data.lines, data.rows, strict=True):
            reason = _prompt_too_long(row, tokenizer, max_length, context)
            _keep(checked, path, lineno, None if reason else row, reason, skip_invalid)
        checked.skipped.sort()
        data = _some_rows(checked, path)
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    for message in eos_problems(data.rows, eos, eos_in_text):
        warnings.warn(f"{path}: {message}", EOSWarning, stacklevel=_stacklevel)  # the warning names the user's line
    repeated = sum(_repeats_prompt(r) for r in data.rows)
    if repeated > len(data.rows) / 2:
        warnings.warn(f"{path}: in {repeated} of {len(data.rows)} rows both 'chosen' and 'rejected' begin with the "
                      "prompt; they should hold only the completion that follows it (the trainer scores prompt + "
                      "completion, so the prompt would be read twice): remove the prompt from the start of the "
                      "completions", DataWarning, stacklevel=_stacklevel)  # the warning names the user's line
    return data


def _keep(data: PreferenceFile, path: Path, lineno: int, row: dict | None, reason: str, skip_invalid: bool) -> None:
    """Add line ``lineno``'s ``row`` to ``data``, or its ``reason`` to ``data.skipped``, or raise the DataError."""
    if row is not None:
        data.rows.append(row)
        data.lines.append(lineno)
    elif skip_invalid:
        data.skipped.append((lineno, reason))
    else:
        skip = "" if isinstance(reason, WholeFile) else " (or pass --skip-invalid to skip bad rows)"
        raise DataError(f"{path}:{lineno}: {reason}{skip}")


def _some_rows(data: PreferenceFile, path: Path) -> PreferenceFile:
    """``data``, unless it holds no valid row: then the DataError that says why."""
    if not data.rows:
        raise DataError(f"{path}: no valid preference rows"
                        + (f" ({len(data.skipped)} skipped, first at line {data.skipped[0][0]}: {data.skipped[0][1]})"
                           if data.skipped else "; the file is empty"))
    return data


def _repeats_prompt(row: dict) -> bool:
    """Both completions start with the row's prompt (a file that stores prompt + completion as 'chosen')."""
    prompt = row["prompt"].strip()
    return bool(prompt) and all(row[k].lstrip().startswith(prompt) for k in ("chosen", "rejected"))


def eos_problems(rows: list[dict], eos: str | None, eos_in_text: bool = False) -> list[str]:
    """What is wrong with how the completions of ``rows`` end with the EOS string ``eos`` (empty: nothing).

    ``eos_in_text=False`` (this package's convention): the trainer appends EOS to every completion, so the text
    must not end with it too (else two EOS; TRL appends it only where the text does not already end with it).
    ``eos_in_text=True`` (a pipeline that appends nothing): every completion must end with it, or the model never
    learns to stop. Either way, chosen and rejected must not differ in it, or DPO learns "ends / does not end" as
    the preference.
    """
    if not eos or not rows:
        return []
    chosen = sum(r["chosen"].rstrip().endswith(eos) for r in rows) / len(rows)
    rejected = sum(r["rejected"].rstrip().endswith(eos) for r in rows) / len(rows)
    problems = []
    if abs(chosen - rejected) > 0.05:
        problems.append(f"{chosen:.0%} of the chosen and {rejected:.0%} of the rejected completions end with the EOS "
                        f"token {eos!r}: DPO will learn to prefer (or avoid) ending the text; make them agree")
    if not eos_in_text and max(chosen, rejected) > 0:
        problems.append(f"completions end with the EOS token {eos!r} in the text, and the trainer appends another "
                        f"(duplicated EOS); remove it from the text (in Python, where your own code appends nothing, "
                        "pass eos_in_text=True)")
    if eos_in_text and min(chosen, rejected) == 0:
        side = "chosen" if chosen == 0 else "rejected"
        problems.append(f"no {side} completion ends with the EOS token {eos!r}, which this pipeline expects in the "
                        f"text (eos_in_text=True): the model would never learn to stop; append it")
    return problems
