"""GRPO: PPO without the value model. The baseline is the other completions of the same prompt.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1; TRL's ``GRPOTrainer``):

1. for each prompt, sample a **group** of G completions from the current policy π_old;
2. score them, r_1 … r_G, and give every token of completion i the same advantage, normalised within its group
   (:func:`group_advantages`)::

       A_i = (r_i − mean(r_1 … r_G)) / (std(r_1 … r_G) + δ)

   The group mean replaces PPO's value model V (:mod:`dpo_teach.ppo`): no second network, no GAE;
3. minimise PPO's clipped surrogate (:func:`dpo_teach.ppo.clipped_surrogate`) plus β times a per-token estimate of
   KL(π_θ‖π_ref) — the k3 estimator :func:`k3_kl`, whose gradient per token is in fact that of KL(π_ref‖π_θ) —
   inside the loss, not in the reward as PPO does. β = 0 (TRL's default today) needs no reference model at all;
4. average the per-token loss over a batch (:func:`grpo_loss`). **How** is a real choice: ``"sequence"`` (the GRPO
   paper) averages tokens within each completion first, so a long completion's tokens weigh less each;
   ``"token"`` (DAPO; TRL's ``bnpo``) averages over all tokens of the batch, so every token weighs the same (Dr.
   GRPO divides by a constant instead: the batch size times the longest allowed completion).

RLOO (:mod:`dpo_teach.rloo`) runs the same loop with its own advantage and loss. Shape letters: N completions
(prompts × G, a group's completions next to each other), L completion tokens (see :mod:`dpo_teach.rollout`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from dpo_teach import grammar
from dpo_teach.compute import Compute
from dpo_teach.ppo import RewardFn, clipped_surrogate, masked_mean
from dpo_teach.rollout import RolloutBatch, collate_rollout, token_logprobs
from dpo_teach.sampling import sample
from dpo_teach.training import adamw, diverging, minibatches, optimizer_step, set_lr
from dpo_teach.utils import lr_at, set_seed

LOSS_NORMS = ("sequence", "token")

# ----------------------------------------------------------------------------------------------- the math, pure


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean of its group) / (std of its group + δ): the GRPO paper's outcome advantage.

    Args:
        scores: r(x, y) per completion, groups of ``group_size`` next to each other. Shape: (N,).
        group_size: G ≥ 2, completions per prompt.
        scale: divide by the group's standard deviation (sample std, as TRL); False keeps only the mean baseline
            (Dr. GRPO's fix: a group whose rewards barely differ is not blown up to unit scale).
        eps: δ, keeps a group of equal rewards at advantage 0 instead of 0/0.

    Returns:
        One advantage per completion. Shape: (N,).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}: with one completion per prompt there is "
                         "no group to compare with (the advantage would be 0, its scale nan); sample G >= 2 "
                         "completions per prompt, or use PPO for one")
    assert scores.numel() % group_size == 0, "scores must hold whole groups of group_size completions"
    groups = scores.view(-1, group_size)  # (N / G, G)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ‖π_ref) estimate k3 = e^{log π_ref − log π_θ} − (log π_ref − log π_θ) − 1 (Schulman 2020;
    Eq. 4 in Shao et al. 2024). Unbiased for tokens sampled from π_θ, never negative. Shape: unchanged.

    Its *value* estimates KL(π_θ‖π_ref); its *gradient* follows the other direction. At one position, given the
    prefix, with the sampled token y held fixed (the loss does not differentiate through the sampling),
    ∇k3 = (1 − π_ref/π_θ)·∇log π_θ, whose expectation over y ~ π_θ is Σ_y (π_θ − π_ref)·∇log π_θ
    = −Σ_y π_ref·∇log π_θ = ∇KL(π_ref‖π_θ) of that position's next-token distributions. Summed over a completion,
    the prefixes are still π_θ's samples, so this is not the gradient of the whole sequences' KL(π_ref‖π_θ) either.
    Both directions vanish at π_θ = π_ref, so either pulls the policy back towards π_ref; they differ in how hard
    away from it. (From the second gradient step on a batch, minibatches and epochs alike, the tokens are π_old's,
    not π_θ's: as in the GRPO paper, no importance ratio corrects k3 for that. TRL's default
    ``use_bias_correction_kl=True`` multiplies k3 by the differentiable π_θ/π_old, which makes its gradient that of
    KL(π_θ‖π_ref) even on-policy: the other direction of the KL than this function's.)"""
    log_ratio = ref_logps - logps
    return log_ratio.exp() - log_ratio - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_norm: str) -> torch.Tensor:
    """A batch's loss from per-token losses: ``"sequence"`` = mean over completions of each completion's token mean
    (GRPO paper); ``"token"`` = mean over every token of the batch (DAPO). Shapes: (N, L) in, a scalar out."""
    if loss_norm == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_norm == "token":
        return masked_mean(per_token, mask)
    raise ValueError(f"loss_norm={loss_norm!r}: choose one of {LOSS_NORMS}")


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, beta: float = 0.0, cliprange: float = 0.2,
              loss_norm: str = "sequence") -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss (Eq. 3 in Shao et al. 2024, to minimise): the clipped surrogate with each completion's advantage
    at every token, plus β·k3 per token, aggregated by ``loss_norm``.

    Args:
        logps: log π_θ of the completions' tokens, with gradient. Shape: (N, L).
        old_logps: log π_old, the policy that sampled them. Shape: (N, L).
        ref_logps: log π_ref; may be None when ``beta`` is 0. Shape: (N, L).
        advantages: one per completion (:func:`group_advantages`). Shape: (N,).
        mask: 1 on completion tokens. Shape: (N, L).
        beta: weight of the KL term.
        cliprange: ε of the clip.
        loss_norm: ``"sequence"`` or ``"token"`` (see :func:`aggregate`).

    Returns:
        ``(loss, stats)``: stats hold ``clipfrac`` and ``kl`` (mean per-token k3; 0 when β = 0).
    """
    per_token, clipped = clipped_surrogate(logps, old_logps, advantages.unsqueeze(-1), cliprange)  # (N, L) each
    kl = torch.zeros_like(per_token)
    if beta != 0.0:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, loss_norm)
    return loss, {"clipfrac": masked_mean(clipped.float(), mask).item(), "kl": masked_mean(kl.detach(), mask).item()}


# ------------------------------------------------------------------------------------------------------ the loop


@dataclass
class GRPOConfig:
    beta: float = 0.04  # KL weight: GRPO's per-token k3 in the loss; RLOO's sequence KL in the reward (0 = none)
    steps: int = 20  # iterations, each one batch of groups then its updates
    prompts_per_step: int = 16  # prompts per iteration
    group_size: int = 8  # G completions per prompt (prompts_per_step × G completions per iteration)
    epochs: int = 2  # passes over each batch (μ in the GRPO paper; only 1 with one minibatch = fresh samples)
    minibatch_size: int = 32  # completions per gradient step
    lr: float = 3e-4  # peak learning rate (AdamW), cosine decay (utils.lr_at: no warm-up under 40 steps)
    cliprange: float = 0.2  # ε of the clipped ratio
    loss_norm: str = "sequence"  # "sequence" (GRPO paper) or "token" (DAPO, TRL's bnpo) averaging of the loss
    scale_rewards: bool = True  # GRPO: divide advantages by the group's std; RLOO: whiten them over the batch
    max_new_tokens: int = 16  # completion length limit
    seed: int = 0  # prompt choice, sampling and minibatch-order seed


@dataclass
class Groups:
    """One iteration's completions, G per prompt, scored: everything an update needs, from the policy that sampled."""

    batch: RolloutBatch
    scores: torch.Tensor  # (N,) r(x, y)
    advantages: torch.Tensor  # (N,) one per completion
    logps: torch.Tensor  # (N, L) log π_old
    ref_logps: torch.Tensor | None  # (N, L) log π_ref; None when β = 0 (no reference needed)
    ended: torch.Tensor  # (N,) bool, the completion ended with EOS


AdvantageFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, GRPOConfig], torch.Tensor]
LossFn = Callable[[torch.Tensor, "Groups", torch.Tensor, GRPOConfig], tuple[torch.Tensor, dict[str, float]]]


def grpo_advantages(scores, logps, ref_logps, mask, config: GRPOConfig) -> torch.Tensor:
    """GRPO's advantage for :func:`make_groups`: the reward normalised in its group (the KL is in the loss)."""
    return group_advantages(scores, config.group_size, config.scale_rewards)


def grpo_minibatch_loss(logps: torch.Tensor, groups: Groups, idx: torch.Tensor, config: GRPOConfig):
    """:func:`grpo_loss` on the rows ``idx`` of ``groups``."""
    ref = groups.ref_logps[idx] if groups.ref_logps is not None else None
    return grpo_loss(logps, groups.logps[idx], ref, groups.advantages[idx], groups.batch.response_mask[idx],
                     config.beta, config.cliprange, config.loss_norm)


@torch.no_grad()
def make_groups(policy, reference, tokenizer, reward_fn: RewardFn, prompts: list[str], config: GRPOConfig, seed: int,
                compute: Compute, advantage_fn: AdvantageFn = grpo_advantages) -> Groups:
    """Sample G completions of each prompt from ``policy``, score them, and compute their advantages."""
    repeated = [p for p in prompts for _ in range(config.group_size)]  # a group's completions side by side
    samples = sample(policy, tokenizer, repeated, config.max_new_tokens, seed=seed)
    batch = collate_rollout(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id)
    logps, _ = token_logprobs(policy, batch)  # (N, L)
    ref_logps = token_logprobs(reference, batch)[0] if config.beta != 0.0 else None
    scores = torch.as_tensor(reward_fn(samples.prompts, samples.completions), dtype=torch.float32)  # (N,)
    advantages = advantage_fn(scores, logps, ref_logps, batch.response_mask, config)
    N = len(repeated)
    compute.add(completions=N, forward=(3 if ref_logps is not None else 2) * N)  # generate, π_old, π_ref
    return Groups(batch, scores, advantages, logps, ref_logps, torch.tensor(samples.ended))


def update(policy, optimizer, groups: Groups, config: GRPOConfig, loss_fn: LossFn, generator: torch.Generator,
           compute: Compute) -> dict[str, float]:
    """``epochs`` passes of minibatch steps over one batch of groups. Returns the minibatch means of the stats."""
    stats: dict[str, list[float]] = {}
    policy.train()
    for _, idx in minibatches(len(groups.batch), config.minibatch_size, config.epochs, generator):
        logps, _ = token_logprobs(policy, groups.batch[idx])
        loss, step_stats = loss_fn(logps, groups, idx, config)
        optimizer_step(optimizer, loss)
        compute.add(forward=len(idx), backward=len(idx))
        for key, value in {"loss/policy": loss.item(), **{f"policy/{k}": v for k, v in step_stats.items()}}.items():
            stats.setdefault(key, []).append(value)
    policy.eval()
    return {k: float(np.mean(v)) for k, v in stats.items()}


def group_metrics(groups: Groups, group_size: int) -> dict[str, float]:
    """What an iteration sampled: TRL-style ``objective/*`` names, sequence sums averaged over completions
    (``objective/kl`` is 0 when β = 0: π_ref is then never run, and the evaluation measures the KL instead)."""
    mask = groups.batch.response_mask
    kl = ((groups.logps - groups.ref_logps) * mask).sum(-1).mean().item() if groups.ref_logps is not None else 0.0
    return {"objective/scores": groups.scores.mean().item(), "objective/kl": kl,
            "objective/score_std_in_group": groups.scores.view(-1, group_size).std(dim=1).mean().item(),
            "val/num_eos_tokens": int(groups.ended.sum()), "completion_length": mask.sum(-1).mean().item()}


def train_group_policy(policy, reference, tokenizer, reward_fn: RewardFn, config: GRPOConfig,
                       advantage_fn: AdvantageFn, loss_fn: LossFn, name: str, compute: Compute | None = None,
                       callback: Callable[[dict], None] | None = None, progress: bool = False) -> list[dict]:
    """The loop GRPO and RLOO share: sample groups, score, one advantage per completion, clipped updates.

    Returns:
        The history: one dict per iteration with ``step``, ``episode`` (completions so far), ``lr`` and metrics.
    """
    set_seed(config.seed)
    compute = compute if compute is not None else Compute()
    prompt_rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = adamw(policy.parameters(), config.lr, eps=1e-5)
    reference.eval()
    history: list[dict] = []
    per_step = config.prompts_per_step * config.group_size
    label = f"{name} {'kl' if name == 'RLOO' else 'β'}={config.beta:g}"  # RLOO's β is a KL coefficient in the reward
    for step in tqdm(range(config.steps), desc=label, disable=not progress):
        lr = lr_at(step, config.steps, config.lr)
        set_lr(optimizer, lr)
        prompts = prompt_rng.choices(grammar.all_prompts(), k=config.prompts_per_step)
        groups = make_groups(policy, reference, tokenizer, reward_fn, prompts, config,
                             seed=config.seed * 1_000_003 + step + 1, compute=compute, advantage_fn=advantage_fn)
        with diverging(name, step, config.steps, lr, config):
            updated = update(policy, optimizer, groups, config, loss_fn, generator, compute)
        metrics = {"step": step, "episode": (step + 1) * per_step, "lr": lr, **group_metrics(groups, config.group_size),
                   **updated}
        history.append(metrics)
        if callback is not None:
            callback(metrics)
    return history


def train_grpo(policy, reference, tokenizer, reward_fn: RewardFn, config: GRPOConfig, compute: Compute | None = None,
               callback: Callable[[dict], None] | None = None, progress: bool = False) -> list[dict]:
    """Train ``policy`` in place with GRPO on ``reward_fn`` (π_ref enters only through β·k3; β = 0 ignores it).

    Args:
        policy: π_θ, usually a copy of ``reference``.
        reference: π_ref; never updated (not even run when ``config.beta`` is 0).
        tokenizer: shared by the models.
        reward_fn: r(x, y) for lists of prompts and completion texts (a ``LearnedReward`` or the ground truth).
        config: hyper-parameters.
        compute: a counter to add this run's costs to.
        callback: called with each iteration's metrics.
        progress: show a progress bar.
    """
    if config.loss_norm not in LOSS_NORMS:
        raise ValueError(f"GRPOConfig.loss_norm={config.loss_norm!r}: choose one of {LOSS_NORMS}")
    return train_group_policy(policy, reference, tokenizer, reward_fn, config, grpo_advantages, grpo_minibatch_loss,
                              "GRPO", compute, callback, progress)
