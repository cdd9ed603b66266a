"""Preference data: pairs sampled from π_ref and labelled by Bradley–Terry, held-out splits, and JSONL files.

A row is ``{"prompt": x, "chosen": y_w, "rejected": y_l}`` (TRL's column names); our generated rows add
``chosen_reward`` and ``rejected_reward``, the ground-truth rewards, which the label-noise ceiling needs.
Reading a user's file (validation, HH-RLHF rows, the errors and warnings) lives in :mod:`dpo_teach.preference_file`;
its public names are re-exported here, so ``from dpo_teach.data import load_preferences`` keeps working.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_teach import grammar
from dpo_teach.preference_file import (  # noqa: F401 (re-exported: the loader's public names)
    ASSISTANT,
    DataError,
    DataWarning,
    EOSWarning,
    PreferenceFile,
    check_preferences,
    eos_problems,
    load_preferences,
    read_preferences,
    split_dialogue,
)
from dpo_teach.reward import bt_probability, ground_truth_reward
from dpo_teach.sampling import sample
from dpo_teach.utils import atomic_write_text


@dataclass
class PreferenceConfig:
    n_prompts: int = 2000  # prompts drawn (with replacement) from the grammar's prompts; two samples each
    bt_temperature: float = 0.1  # τ in P(a ≻ b) = σ((r(a) − r(b)) / τ); smaller = less label noise
    max_new_tokens: int = 16  # completion length limit when sampling from π_ref
    seed: int = 0  # prompt choice, sampling and labelling seed


@torch.no_grad()
def make_preference_pairs(model: torch.nn.Module, tokenizer, config: PreferenceConfig) -> list[dict]:
    """Sample two completions per prompt from ``model`` (π_ref), label them with Bradley–Terry noise.

    Pairs whose two completions are identical carry no preference and are dropped, so slightly fewer than
    ``n_prompts`` rows come back.
    """
    rng = random.Random(config.seed)
    prompts = rng.choices(grammar.all_prompts(), k=config.n_prompts)
    a = sample(model, tokenizer, prompts, config.max_new_tokens, seed=config.seed)
    b = sample(model, tokenizer, prompts, config.max_new_tokens, seed=config.seed + 10_000)
    ra, rb = ground_truth_reward(a.completions), ground_truth_reward(b.completions)
    rows = []
    for i, prompt in enumerate(prompts):
        ya, yb = a.completions[i], b.completions[i]
        if ya == yb or not ya.strip() or not yb.strip():
            continue
        a_wins = rng.random() < bt_probability(ra[i], rb[i], config.bt_temperature)
        (yw, rw), (yl, rl) = ((ya, ra[i]), (yb, rb[i])) if a_wins else ((yb, rb[i]), (ya, ra[i]))
        rows.append({"prompt": prompt, "chosen": yw, "rejected": yl,
                     "chosen_reward": float(rw), "rejected_reward": float(rl)})
    return rows


def bt_ceiling(rows: list[dict], temperature: float) -> float:
    """Best accuracy any model can reach on these labels: E[max(p, 1 − p)] with p the Bradley–Terry probability.

    Needs ``chosen_reward``/``rejected_reward`` in every row (our generated files have them).
    """
    ps = [bt_probability(r["chosen_reward"], r["rejected_reward"], temperature) for r in rows]
    return sum(max(p, 1 - p) for p in ps) / len(ps)


def split_pairs(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle with ``seed`` and split into (train, held-out)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(eval_fraction * len(rows)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def split_heldout(rows: list[dict], eval_fraction: float, seed: int, source: str,
                  fraction_arg: str = "--eval-fraction", more_rows: str = "add rows") -> tuple[list[dict], list[dict]]:
    """:func:`split_pairs`, refusing a split that leaves a side empty (no pair to train on, or none held out).

    Raises:
        DataError: the message starts with ``source`` (where the rows came from) and says which number to change:
            ``fraction_arg`` (the argument that sets ``eval_fraction``), to a value that works, or the number of
            rows (``more_rows``: how to get more).
    """
    train_rows, heldout = split_pairs(rows, eval_fraction, seed)
    n = len(rows)
    if n < 2:
        raise DataError(f"{source}: {n} valid row{'' if n == 1 else 's'} {'is' if n == 1 else 'are'} too few to hold "
                        f"out one pair and train on the rest; {more_rows}")
    if not heldout:
        raise DataError(f"{source}: {fraction_arg} {eval_fraction:g} of {n} valid rows rounds to no held-out pair; "
                        f"pass at least {fraction_arg} {_fraction_text(1, n)} to hold out one, or {more_rows}")
    if not train_rows:
        raise DataError(f"{source}: {fraction_arg} {eval_fraction:g} of {n} valid rows holds out all of them, leaving "
                        f"none to train on; pass at most {fraction_arg} {_fraction_text(n - 1, n)}, or {more_rows}")
    return train_rows, heldout


def _fraction_text(k: int, n: int) -> str:
    """``k / n`` in as few digits as still hold out ``k`` of ``n`` rows (:func:`split_pairs` rounds the product)."""
    for digits in range(1, 17):
        text = f"{k / n:.{digits}g}"
        if int(round(float(text) * n)) == k:
            return text
    return repr(k / n)


def preferences_text(rows: list[dict]) -> str:
    """Rows as JSON Lines: one object per line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_preferences(path: str | Path, rows: list[dict]) -> None:
    """Write rows as JSONL, atomically."""
    atomic_write_text(path, preferences_text(rows))


def heldout_overlap(train_rows: list[dict], heldout_rows: list[dict]) -> int:
    """How many held-out rows also appear in the training rows (same prompt, chosen and rejected): duplicated rows
    in a file end up on both sides of a split, and held-out accuracy on them measures memory, not generalisation."""
    seen = {(r["prompt"], r["chosen"], r["rejected"]) for r in train_rows}
    return sum((r["prompt"], r["chosen"], r["rejected"]) in seen for r in heldout_rows)


HUMAN_TURN = "\n\nHuman:"  # where HH-RLHF's human speaks (preference_rows.ASSISTANT: where the assistant does)


def warn_label_problems(path: str | Path, rows: list[dict]) -> None:
    """Warn (:class:`DataWarning`) about pairs DPO cannot learn from as meant: a pair that appears again with its
    chosen and rejected swapped (the loss pulls it both ways), and completions that hold a ``"\n\nHuman:"`` turn (an
    HH-RLHF pair whose dialogues differ before their last Assistant turn: the prompt is cut at an earlier one, and
    each completion carries the human's later words, which DPO then scores too)."""
    pairs = {(r["prompt"], r["chosen"], r["rejected"]) for r in rows}
    swapped = sum((p, rejected, chosen) in pairs for p, chosen, rejected in pairs)
    if swapped:
        warnings.warn(f"{path}: {swapped} of the {len(pairs)} distinct pairs also appear with chosen and rejected "
                      "swapped, so DPO pulls each of them both ways (label noise, from several raters); keep one "
                      "label per pair if the file should not hold any", DataWarning, stacklevel=2)
    turns = sum(HUMAN_TURN in r["chosen"] or HUMAN_TURN in r["rejected"] for r in rows)
    if turns:
        warnings.warn(f"{path}: {turns} of the {len(rows)} pairs have a {HUMAN_TURN!r} turn in a completion: their "
                      "two dialogues differ before the last Assistant turn, so the prompt ends at an earlier one and "
                      "DPO also scores the human's later words; keep the dialogues' earlier turns the same, or give "
                      "'prompt', 'chosen' and 'rejected' yourself", DataWarning, stacklevel=2)


def warn_heldout_overlap(path: str | Path, train_rows: list[dict], heldout_rows: list[dict]) -> None:
    """Warn (:class:`DataWarning`) when held-out rows also appear in training (see :func:`heldout_overlap`)."""
    n = heldout_overlap(train_rows, heldout_rows)
    if n:
        warnings.warn(f"{path}: {n} of the {len(heldout_rows)} held-out pairs also appear in the training pairs "
                      "(the file repeats rows), so held-out accuracy overstates how well the policy generalises; "
                      "remove duplicate rows (e.g. `sort -u`)", DataWarning, stacklevel=2)
