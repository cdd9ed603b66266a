"""DPO's failure modes, made reproducible (notebook 07): biased preference data, a displacement fix, sample checks.

- **Length exploitation.** :func:`relabel_with_length_bonus` relabels sampled pairs the way verbosity-biased
  labellers would (Bradley–Terry on the reward plus a bonus per word), so that the chosen completion is
  systematically longer; :func:`length_balanced` keeps a subset in which length no longer predicts the label.
- **Likelihood displacement.** :func:`dpo_teach.losses.dpop_loss` (DPO-Positive, Pal et al. 2024, ``loss_type="dpop"``)
  penalises a chosen completion whose log-probability falls below the reference's, which plain DPO allows.
- **A missing or duplicated EOS.** :func:`with_eos_in_text` writes the EOS token into the text of one side's
  completions, as an export script that handles the two columns differently would; :func:`tokenize_as_written`
  tokenizes such rows without appending EOS (a pipeline that expects EOS in the text), so a completion ends with
  EOS only where the text says so. ``data.load_preferences`` warns about both (``data.eos_problems``).
- **Reward hacking.** :func:`sample_report` describes what the samples of a drifting policy look like beside the
  reward, KL and fluency that ``evaluate_policy`` reports: length, stacked sentiment words, repeated words, and the
  reward the ground truth still pays for the ill-formed ones.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np

from dpo_teach import grammar
from dpo_teach.evaluate import fluency
from dpo_teach.logprobs import tokenize_pairs
from dpo_teach.reward import bt_probability, ground_truth_reward
from dpo_teach.sampling import Samples

SENTIMENT_WORDS = frozenset(grammar.POSITIVE + grammar.NEGATIVE + grammar.VERBS_POSITIVE + grammar.VERBS_NEGATIVE)


def n_words(text: str) -> int:
    """Length of a completion in words (what a labeller sees), not in tokens."""
    return len(text.split())


def relabel_with_length_bonus(rows: list[dict], bonus: float, temperature: float = 0.1, seed: int = 0) -> list[dict]:
    """Relabel each pair by Bradley–Terry on ``r(x, y) + bonus · words(y)`` instead of ``r(x, y)``.

    Same prompts and completions as ``rows`` (which need ``chosen_reward``/``rejected_reward``), new labels: a
    labeller who likes long answers. ``chosen_reward``/``rejected_reward`` stay the ground-truth rewards.
    """
    rng = random.Random(seed)
    out = []
    for row in rows:
        a = (row["chosen"], row["chosen_reward"])
        b = (row["rejected"], row["rejected_reward"])
        score_a, score_b = a[1] + bonus * n_words(a[0]), b[1] + bonus * n_words(b[0])
        (yw, rw), (yl, rl) = (a, b) if rng.random() < bt_probability(score_a, score_b, temperature) else (b, a)
        out.append({**row, "chosen": yw, "rejected": yl, "chosen_reward": rw, "rejected_reward": rl})
    return out


def length_stats(rows: list[dict]) -> dict[str, float]:
    """How strongly length predicts the label: shares of pairs whose chosen completion is longer/shorter (in
    words), the mean word gap chosen − rejected, and the mean length of chosen and rejected completions."""
    gaps = np.array([n_words(r["chosen"]) - n_words(r["rejected"]) for r in rows])
    return {
        "chosen_longer": float(np.mean(gaps > 0)),
        "chosen_shorter": float(np.mean(gaps < 0)),
        "mean_gap_words": float(np.mean(gaps)),
        "chosen_words": float(np.mean([n_words(r["chosen"]) for r in rows])),
        "rejected_words": float(np.mean([n_words(r["rejected"]) for r in rows])),
    }


def length_balanced(rows: list[dict], seed: int = 0) -> list[dict]:
    """A length-controlled subset: for every word gap d > 0, as many pairs in which the chosen completion is d words
    longer as pairs in which it is d words shorter (the larger group is subsampled); equal-length pairs are kept.

    In the result the gap chosen − rejected is symmetric around 0, so length alone no longer predicts the label;
    what still separates chosen from rejected is everything else (here: sentiment). Order is shuffled with ``seed``.
    """
    groups: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    out = []
    for row in rows:
        gap = n_words(row["chosen"]) - n_words(row["rejected"])
        if gap == 0:
            out.append(row)
        else:
            groups[abs(gap)][gap < 0].append(row)  # [0]: chosen longer, [1]: chosen shorter
    rng = random.Random(seed)
    for gap in sorted(groups):
        longer, shorter = groups[gap]
        n = min(len(longer), len(shorter))
        out += rng.sample(longer, n) + rng.sample(shorter, n)
    rng.shuffle(out)
    return out


def sample_report(samples: Samples) -> dict[str, float]:
    """What a policy's samples look like beyond :func:`dpo_teach.evaluate.evaluate_policy`'s metrics (which already
    hold their mean ``reward``, ``fluency`` and ``ended``): the signs of reward hacking.

    ``words`` (mean length in words), ``sentiment_words`` (mean count of the grammar's sentiment words per
    completion), ``repeats`` (share of completions that repeat a word three or more times) and ``reward_ill_formed``
    (mean ground-truth reward of the ill-formed samples only: what the reward pays for broken text; NaN if none).
    """
    ill_formed = ~fluency(samples).astype(bool)
    rewards = ground_truth_reward(samples.completions)
    words = [c.split() for c in samples.completions]
    return {
        "words": float(np.mean([n_words(c) for c in samples.completions])),
        "sentiment_words": float(np.mean([sum(x in SENTIMENT_WORDS for x in w) for w in words])),
        "repeats": float(np.mean([max((w.count(x) for x in set(w)), default=0) >= 3 for w in words])),
        "reward_ill_formed": float(rewards[ill_formed].mean()) if ill_formed.any() else float("nan"),
    }


def with_eos_in_text(rows: list[dict], eos: str, side: str = "rejected") -> list[dict]:
    """Copies of ``rows`` whose ``side`` completions (``"chosen"``, ``"rejected"`` or ``"both"``) end with ``eos``."""
    sides = ("chosen", "rejected") if side == "both" else (side,)
    return [{**row, **{k: row[k] + eos for k in sides}} for row in rows]


def tokenize_as_written(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """Like ``logprobs.tokenize_pairs``, but nothing is appended: a completion ends with EOS only if its text does
    (the EOS string in the text becomes the EOS token). Completions are cut to fit ``max_length``."""
    return tokenize_pairs(tokenizer, rows, max_length, append_eos=False)
