"""RLOO: REINFORCE with a leave-one-out baseline, the simplest member of the policy-gradient family.

Ahmadian et al. 2024 ("Back to Basics", after Kool et al. 2019), as in TRL's ``RLOOTrainer``. Each prompt gets G
completions, like GRPO (:mod:`dpo_teach.grpo`, whose sampling loop it shares); what differs is small:

- the KL to π_ref goes into the **reward**, once per sequence, as in PPO: r_i − β·log π_old(y_i|x)/π_ref(y_i|x);
- the baseline of completion i is the mean reward of the **other** G − 1 completions of its prompt
  (:func:`rloo_advantages`), an unbiased baseline because it does not depend on y_i itself (with
  ``scale_rewards=True`` the batch's standard deviation, y_i's reward included, then scales it; the comparison
  keeps it off, as TRL's ``normalize_advantages=False`` does)::

      A_i = r_i − (1 / (G − 1)) · Σ_{j≠i} r_j = G / (G − 1) · (r_i − mean(r_1 … r_G))

- the whole completion is one action: the ratio and its clip are taken on the **sequence** log-probability
  (:func:`rloo_loss`), and the loss is a mean over completions. With one pass and a single gradient step per batch
  (``epochs=1``, ``minibatch_size`` ≥ the batch) the ratio is 1 and this is plain REINFORCE; every further minibatch
  or pass steps from a policy that has already moved.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dpo_teach.compute import Compute
from dpo_teach.grpo import Groups, GRPOConfig, train_group_policy
from dpo_teach.ppo import RewardFn, clipped_surrogate, whiten


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = r_i − the mean of the other completions of its prompt (leave-one-out baseline).

    Args:
        scores: rewards, groups of ``group_size`` next to each other. Shape: (N,).
        group_size: G ≥ 2 (with one completion there is no other to compare with).

    Returns:
        Shape: (N,).
    """
    assert group_size >= 2, "the leave-one-out baseline needs at least two completions per prompt"
    groups = scores.view(-1, group_size)  # (N / G, G)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # (N / G, G) mean of the others
    return (groups - baseline).reshape(-1)


def rloo_loss(seq_logps: torch.Tensor, old_seq_logps: torch.Tensor, advantages: torch.Tensor,
              cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate on whole completions: mean_i max(−A_i·ρ_i, −A_i·clip(ρ_i, 1 ± ε)),
    ρ_i = π_θ(y_i|x) / π_old(y_i|x).

    Args:
        seq_logps: log π_θ(y|x), summed over the completion, with gradient. Shape: (N,).
        old_seq_logps: log π_old(y|x). Shape: (N,).
        advantages: Shape: (N,).
        cliprange: ε.

    Returns:
        ``(loss, stats)``: stats hold ``clipfrac`` (share of completions whose clipped term is active).
    """
    per_sequence, clipped = clipped_surrogate(seq_logps, old_seq_logps, advantages, cliprange)  # (N,) each
    return per_sequence.mean(), {"clipfrac": clipped.float().mean().item()}


def rloo_advantages_with_kl(scores, logps, ref_logps, mask, config: GRPOConfig) -> torch.Tensor:
    """RLOO's advantage for the shared loop: the KL-penalised sequence reward minus the leave-one-out baseline;
    with ``config.scale_rewards``, whitened over the batch, like TRL's ``normalize_advantages`` (not exactly: whiten
    divides by the population standard deviation, TRL by the sample one plus 1e-4)."""
    if ref_logps is not None:
        scores = scores - config.beta * ((logps - ref_logps) * mask).sum(-1)  # (N,) r − β·log π_old/π_ref
    advantages = rloo_advantages(scores, config.group_size)
    return whiten(advantages, torch.ones_like(advantages)) if config.scale_rewards else advantages


def rloo_minibatch_loss(logps: torch.Tensor, groups: Groups, idx: torch.Tensor, config: GRPOConfig):
    """:func:`rloo_loss` on the rows ``idx`` of ``groups`` (token log-probs summed to sequences)."""
    mask = groups.batch.response_mask[idx]
    return rloo_loss((logps * mask).sum(-1), (groups.logps[idx] * mask).sum(-1), groups.advantages[idx],
                     config.cliprange)


def train_rloo(policy, reference, tokenizer, reward_fn: RewardFn, config: GRPOConfig, compute: Compute | None = None,
               callback: Callable[[dict], None] | None = None, progress: bool = False) -> list[dict]:
    """Train ``policy`` in place with RLOO (arguments as :func:`dpo_teach.grpo.train_grpo`; ``config.beta`` is the
    KL coefficient in the reward, ``config.loss_norm`` is not used: the loss is per completion)."""
    return train_group_policy(policy, reference, tokenizer, reward_fn, config, rloo_advantages_with_kl,
                              rloo_minibatch_loss, "RLOO", compute, callback, progress)
