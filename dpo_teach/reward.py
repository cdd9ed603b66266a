"""The ground-truth reward r(x, y): VADER's compound sentiment score of the completion, in [-1, 1].

It plays the role of the DPO paper's sentiment classifier in the IMDb experiment (§6.1) and of "the human" who
labels preferences. VADER is a lexicon and rule-based scorer that ships with its lexicon, so it runs offline.
Only the completion y is scored, not the prompt x: the policy is rewarded for what it writes.

How "the human" turns rewards into preference labels is the Bradley–Terry model (Eq. 1 in Rafailov et al. 2023),
:func:`bt_probability`, with a temperature τ for label noise. Its negative log-likelihood, the loss a reward model
and DPO minimise, is :func:`dpo_teach.losses.bradley_terry_loss`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=200_000)
def sentiment(text: str) -> float:
    """VADER compound score of ``text`` in [-1, 1]."""
    return float(_analyzer().polarity_scores(text)["compound"])


def ground_truth_reward(completions: list[str]) -> np.ndarray:
    """r(x, y) for each completion y (text after the prompt, without EOS). Shape: (N,)."""
    return np.array([sentiment(c) for c in completions], dtype=np.float64)


def in_lexicon(word: str) -> bool:
    """Whether VADER scores ``word`` at all (words outside its lexicon score 0)."""
    return word.lower() in _analyzer().lexicon


def bt_probability(reward_a, reward_b, temperature: float = 1.0):
    """Bradley–Terry: P(a ≻ b) = exp(r_a/τ) / (exp(r_a/τ) + exp(r_b/τ)) = σ((r_a − r_b) / τ), Eq. 1 in Rafailov et
    al. 2023 (τ = 1 there). Elementwise on tensors (notebook 02); on two numbers it returns a float (the labeller)."""
    if isinstance(reward_a, torch.Tensor) or isinstance(reward_b, torch.Tensor):
        return torch.sigmoid((reward_a - reward_b) / temperature)
    z = -float(reward_a - reward_b) / float(temperature)  # Python floats: ±inf for a tiny τ, where numpy warns
    return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))  # exp overflows a float past ~709
