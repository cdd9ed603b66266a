"""The ground-truth reward r(x, y): VADER's compound sentiment score of the completion, in [-1, 1].

It plays the role of the DPO paper's sentiment classifier in the IMDb experiment (§6.1) and of "the human" who
labels preferences. VADER is a lexicon and rule-based scorer that ships with its lexicon, so it runs offline.
Only the completion y is scored, not the prompt x: the policy is rewarded for what it writes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
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
