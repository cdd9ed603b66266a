"""One row of a preference file: what it must hold (plain-text ``prompt``/``chosen``/``rejected``, distinct,
non-empty), HH-RLHF's dialogues split into prompt and completions, and TRL's conversational rows named with how to
flatten them. Each check returns a reason, which :mod:`dpo_teach.preference_file` turns into an error or a skip."""

from __future__ import annotations

ASSISTANT = "\n\nAssistant:"


class WholeFile(str):
    """A reason that is about the whole file (another format: a JSON array, a CSV), not one bad row: skipping rows
    (``--skip-invalid``) cannot help, so the error does not offer it."""


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """HH-RLHF rows: the prompt is the shared prefix up to and including the last ``"\\n\\nAssistant:"``.

    Returns ``(prompt, chosen_completion, rejected_completion)``, or None when the two share no such prefix.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0 or cut + len(ASSISTANT) > n:
        return None
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def check_row(obj) -> tuple[dict | None, str]:
    """Validate one parsed line. Returns ``(row, "")`` or ``(None, reason)``."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return None, WholeFile(f"a JSON array of {len(obj)} objects: JSON Lines has one object per line, without "
                               "[ ]; convert the file with `jq -c '.[]' in.json > out.jsonl`")
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    conversational = [key for key in ("prompt", "chosen", "rejected") if _is_messages(obj.get(key))]
    if conversational:
        return None, _conversational(conversational[0], implicit="prompt" not in obj)
    row = dict(obj)
    if "prompt" not in row and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        parts = split_dialogue(row["chosen"], row["rejected"])
        if parts is None:
            return None, ("no 'prompt' field, and 'chosen'/'rejected' share no prefix ending in "
                          "'\\n\\nAssistant:' (HH-RLHF format); add a 'prompt' field")
        row["prompt"], row["chosen"], row["rejected"] = parts
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            return None, f"the field '{key}' is missing; every row needs 'prompt', 'chosen' and 'rejected'"
        if not isinstance(row[key], str):
            return None, f"the field '{key}' must be a string, got {type(row[key]).__name__}"
        try:
            row[key].encode("utf-8")
        except UnicodeEncodeError as e:  # JSON allows "\ud800" alone, but no text holds half a surrogate pair
            return None, (f"the field '{key}' holds an unpaired surrogate escape (\\u{ord(row[key][e.start]):04x} at "
                          f"character {e.start + 1}), which is not text; fix or remove the escape")
    if not row["prompt"]:  # with no token before it, a completion's first token would never be scored
        return None, "the prompt is empty; give the row a prompt (at least one token before the completion)"
    for key in ("chosen", "rejected"):
        if not row[key].strip():
            return None, f"the '{key}' completion is empty; remove the row or fill it in"
    if row["chosen"] == row["rejected"]:
        return None, "'chosen' and 'rejected' are identical, so the row expresses no preference; remove it"
    return row, ""


def _is_messages(value) -> bool:
    """A list of chat messages, ``[{"role": ..., "content": ...}, ...]`` (TRL's conversational format)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def _conversational(key: str, implicit: bool) -> str:
    """Why a conversational row is refused, and how to flatten it. This loader reads plain text only: turning
    messages into text takes a chat template, and choosing one for the user would change what the model learns."""
    where = (" with an implicit prompt (the first messages of 'chosen' and 'rejected')" if implicit else "")
    fix = ("flatten 'chosen' and 'rejected' to HH-RLHF text ('\\n\\nHuman: …\\n\\nAssistant: …'), which this loader "
           "splits into prompt and completion" if implicit else
           "flatten each field to plain text (e.g. HH-RLHF's '\\n\\nHuman: …\\n\\nAssistant: …' for the prompt, the "
           "assistant's reply for 'chosen'/'rejected')")
    return (f"the field '{key}' is a list of chat messages ({{role, content}}), TRL's conversational format{where}, "
            f"which this loader does not read (it needs plain-text fields); {fix}")
