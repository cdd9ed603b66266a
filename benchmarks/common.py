"""Helpers shared by the benchmarks: a quiet offline environment, the toy world and its pairs, and statistics."""

from __future__ import annotations

import os
import statistics
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def quiet_offline() -> None:
    """No hub access, no telemetry, no progress bars: the benchmarks time training, not terminal output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # the `peers` extra is not installed; only the TRL comparison needs it
        pass


def world_and_pairs(preset: str, n_pairs: int, seed: int = 0):
    """The demo's π_ref for ``preset`` (built once, then cached) and at least ``n_pairs`` preference rows.

    Returns ``(reference, tokenizer, rows)``; rows carry only TRL's columns ``prompt``/``chosen``/``rejected``.
    """
    from dpo_teach.data import PreferenceConfig, make_preference_pairs
    from dpo_teach.world import WorldConfig, load_reference

    reference, tokenizer = load_reference(WorldConfig(preset=preset, seed=seed))
    rows = make_preference_pairs(reference, tokenizer, PreferenceConfig(n_prompts=int(n_pairs * 1.1) + 8, seed=seed))
    if len(rows) < n_pairs:
        raise RuntimeError(f"only {len(rows)} distinct pairs sampled, {n_pairs} needed")
    return reference, tokenizer, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:n_pairs]]


def summary(values: list[float]) -> dict:
    """``{"values", "mean", "min", "max"}`` of a list of numbers (None entries are dropped)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"values": values, "mean": None, "min": None, "max": None}
    return {"values": values, "mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}


def window_rates(stamps: list[float], warmup: int, window: int, items_per_step: int) -> list[float]:
    """Items per second over consecutive windows of ``window`` steps, after ``warmup`` steps.

    ``stamps[i]`` is the clock at the end of step i; a window of W steps runs from the end of step k-1 to the end of
    step k+W-1, so only whole training steps are counted.
    """
    rates = []
    for start in range(warmup, len(stamps) - window + 1, window):
        elapsed = stamps[start + window - 1] - stamps[start - 1]
        rates.append(window * items_per_step / elapsed)
    return rates


def set_threads(n: int | None) -> None:
    """Use ``n`` torch threads here and in child processes (None keeps torch's default, one per core).

    On a machine shared with other jobs, fewer threads than cores avoids OpenMP threads spinning while they wait
    for a core, which can slow a step several-fold and swamp every difference measured here.
    """
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
