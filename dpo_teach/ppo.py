"""Stage 2 of classic RLHF: PPO on the KL-penalised reward, written out so that each piece can be read and tested.

The objective is the one DPO starts from (Eq. 3 in Rafailov et al. 2023):

    max_π  E_{x, y∼π}[ r(x, y) ] − β · KL( π(·|x) ‖ π_ref(·|x) )

PPO (Schulman et al. 2017, as used for RLHF by Ziegler et al. 2019 and Ouyang et al. 2022, and in TRL's
``PPOTrainer``) optimises it on-line, one rollout at a time:

1. sample completions from the current policy π_θ (on-policy: new samples every iteration);
2. score them: r(x, y) from the reward model (or the ground truth) at the last token, and a per-token KL penalty
   −β·(log π_θ(y_t|…) − log π_ref(y_t|…)) at every token (:func:`kl_penalized_rewards`);
3. a value model V(x, y_<t) estimates the return from each token on; GAE turns rewards and values into
   advantages (:func:`gae`);
4. several epochs of minibatch steps on the clipped surrogate (:func:`clipped_policy_loss`) and the clipped value
   loss (:func:`clipped_value_loss`), which keep each update close to the policy that sampled the rollout.

Metric names follow TRL's PPO trainer (``objective/kl``, ``objective/scores``, ``policy/clipfrac``, ``loss/value``,
...; TRL appends ``_avg`` to the minibatch averages), with two differences: the ratio is ``policy/ratio`` (TRL:
``val/ratio``), and ``objective/entropy`` is the exact entropy of each next-token distribution, summed over the
completion, where TRL sums −log p of the sampled tokens (an estimate of it). Shape letters:
N completions in a rollout, L completion tokens (see :mod:`dpo_teach.rollout`).
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
from dpo_teach.reward_model import ScalarModel
from dpo_teach.rollout import RolloutBatch, collate_rollout, token_logprobs
from dpo_teach.sampling import sample
from dpo_teach.training import adamw, diverging, minibatches, optimizer_step, set_lr
from dpo_teach.utils import lr_at, set_seed

RewardFn = Callable[[list[str], list[str]], np.ndarray]  # (prompts, completions) -> scores, Shape: (N,)


# ----------------------------------------------------------------------------------------------- the math, pure


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1. Shapes: any two equal shapes; returns a scalar."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shift and scale to mean 0 and std 1 over the masked positions; zero elsewhere. Shape: unchanged."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def kl_penalized_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of RLHF: −β·(log π_θ − log π_ref) at every token, plus r(x, y) at the last token.

    Summed over a completion this is r(x, y) − β·log π_θ(y|x)/π_ref(y|x), whose expectation under π_θ is the
    objective above (the sum of per-token log-ratios is an unbiased estimate of the sequence KL).

    Args:
        scores: r(x, y) per completion. Shape: (N,).
        logps: log π_θ(y_t | x, y_<t) of the sampled tokens, from the rollout. Shape: (N, L).
        ref_logps: log π_ref(y_t | x, y_<t). Shape: (N, L).
        mask: 1 on completion tokens. Shape: (N, L).
        kl_coef: β.

    Returns:
        ``(rewards, kl)``: per-token rewards and per-token log-ratios, each Shape: (N, L), zero past the end.
    """
    kl = (logps - ref_logps) * mask  # (N, L)
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # (N,) index of each completion's last token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right to left over each completion.

        δ_t = r_t + γ·V_{t+1} − V_t,     A_t = δ_t + γ·λ·A_{t+1},     returns_t = A_t + V_t

    with V and A taken as 0 past the last token (the episode ends there).

    Args:
        rewards: per-token rewards. Shape: (N, L).
        values: V(x, y_<t), the value model's estimate before token t. Shape: (N, L).
        mask: 1 on completion tokens. Shape: (N, L).

    Returns:
        ``(advantages, returns)``, each Shape: (N, L), zero where ``mask`` is 0.
    """
    rewards, values = rewards * mask, values * mask
    L = rewards.shape[1]
    next_advantage = torch.zeros_like(rewards[:, 0])  # (N,)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(L)):
        next_value = values[:, t + 1] if t + 1 < L else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      cliprange: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π_θ/π_old, shared by PPO and GRPO.

    Returns:
        ``(loss, clipped)``: the per-token loss and where the clipped term is the active one (bool), each of the
        broadcast shape of the inputs, e.g. Shape: (N, L).
    """
    ratio = (logps - old_logps).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Eq. 7 in Schulman et al. 2017), as a loss to minimise:

        L = E_t[ max( −A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε) ) ],    ρ_t = π_θ(y_t|…) / π_old(y_t|…)

    Args:
        logps: log π_θ of the rollout's tokens, with gradient. Shape: (N, L).
        old_logps: log π_old, the policy that sampled the rollout. Shape: (N, L).
        advantages: A_t. Shape: (N, L).
        mask: 1 on completion tokens. Shape: (N, L).
        cliprange: ε.

    Returns:
        ``(loss, stats)``; stats hold ``clipfrac`` (share of tokens where the clipped term is active),
        ``approxkl`` (½·E[(log ρ)²]) and ``ratio`` (mean ρ).
    """
    log_ratio = logps - old_logps
    per_token, clipped = clipped_surrogate(logps, old_logps, advantages, cliprange)
    loss = masked_mean(per_token, mask)
    ratio = log_ratio.exp()
    stats = {"clipfrac": masked_mean(clipped.float(), mask).item(),
             "approxkl": 0.5 * masked_mean(log_ratio.detach() ** 2, mask).item(),
             "ratio": masked_mean(ratio.detach(), mask).item()}
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, cliprange_value: float = 0.2) -> tuple[torch.Tensor, float]:
    """Value loss with clipping: ½·E_t[ max( (V − R)², (V_old + clip(V − V_old, ±ε_v) − R)² ) ].

    Args:
        values: V_θ, with gradient. Shape: (N, L).
        old_values: V at rollout time. Shape: (N, L).
        returns: R_t, the GAE targets. Shape: (N, L).
        mask: 1 on completion tokens. Shape: (N, L).
        cliprange_value: ε_v.

    Returns:
        ``(loss, clipfrac)``: the loss and the share of tokens where the clipped term is the larger one.
    """
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask).item()


# ------------------------------------------------------------------------------------------------------ the loop


@dataclass
class PPOConfig:
    kl_coef: float = 0.1  # β of the per-token KL penalty
    steps: int = 40  # PPO iterations, each one rollout then its updates
    rollout_size: int = 128  # prompts per rollout, one completion each
    ppo_epochs: int = 4  # passes over each rollout
    minibatch_size: int = 32  # completions per gradient step
    lr: float = 3e-4  # peak learning rate (AdamW) of policy and value model, cosine decay over the
    # iterations (utils.lr_at: a 5 % warm-up, so none under 40 iterations)
    cliprange: float = 0.2  # ε of the clipped surrogate
    cliprange_value: float = 0.2  # ε_v of the clipped value loss
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    max_new_tokens: int = 16  # completion length limit of rollouts
    seed: int = 0  # prompt choice, sampling and minibatch-order seed


@dataclass
class Rollout:
    """One rollout, scored: everything a PPO update needs, computed with the policy that sampled it."""

    batch: RolloutBatch
    scores: torch.Tensor  # (N,) r(x, y)
    logps: torch.Tensor  # (N, L) log π_old
    values: torch.Tensor  # (N, L) V_old
    advantages: torch.Tensor  # (N, L) whitened GAE advantages
    returns: torch.Tensor  # (N, L) GAE value targets
    kl: torch.Tensor  # (N, L) per-token log π_old − log π_ref
    entropy: torch.Tensor  # (N, L) H(π_old) per position
    ended: torch.Tensor  # (N,) bool, the completion ended with EOS


@torch.no_grad()
def make_rollout(policy, reference, value_model: ScalarModel, tokenizer, reward_fn: RewardFn, prompts: list[str],
                 config: PPOConfig, seed: int, compute: Compute) -> Rollout:
    """Sample one completion per prompt from ``policy``, score it, and compute advantages and returns."""
    samples = sample(policy, tokenizer, prompts, config.max_new_tokens, seed=seed)
    batch = collate_rollout(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id)
    mask = batch.response_mask
    logps, entropy = token_logprobs(policy, batch, with_entropy=True)  # (N, L) each
    ref_logps, _ = token_logprobs(reference, batch)
    values = value_model(batch.input_ids, batch.attention_mask)[:, batch.prompt_len - 1:-1] * mask  # (N, L)
    scores = torch.as_tensor(reward_fn(samples.prompts, samples.completions), dtype=torch.float32)  # (N,)
    rewards, kl = kl_penalized_rewards(scores, logps, ref_logps, mask, config.kl_coef)
    advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    N = len(prompts)
    compute.add(completions=N, forward=4 * N)  # generate, π_θ, π_ref and V; the reward_fn counts itself
    return Rollout(batch, scores, logps, values, whiten(advantages, mask), returns, kl, entropy,
                   torch.tensor(samples.ended))


def ppo_update(policy, value_model: ScalarModel, optimizer, rollout: Rollout, config: PPOConfig,
               generator: torch.Generator, compute: Compute) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch steps over one rollout. Returns the minibatch means of the losses/stats."""
    stats: dict[str, list[float]] = {}
    policy.train()
    value_model.train()
    for _, idx in minibatches(len(rollout.batch), config.minibatch_size, config.ppo_epochs, generator):
        mb, mask = rollout.batch[idx], rollout.batch.response_mask[idx]
        logps, _ = token_logprobs(policy, mb)
        values = value_model(mb.input_ids, mb.attention_mask)[:, mb.prompt_len - 1:-1]
        pg_loss, pg_stats = clipped_policy_loss(logps, rollout.logps[idx], rollout.advantages[idx], mask,
                                                config.cliprange)
        vf_loss, vf_clipfrac = clipped_value_loss(values, rollout.values[idx], rollout.returns[idx], mask,
                                                  config.cliprange_value)
        optimizer_step(optimizer, pg_loss + config.vf_coef * vf_loss)
        compute.add(forward=2 * len(idx), backward=2 * len(idx))  # π_θ and V
        for key, value in {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                           "val/clipfrac": vf_clipfrac, **{f"policy/{k}": v for k, v in pg_stats.items()}}.items():
            stats.setdefault(key, []).append(value)
    policy.eval()
    value_model.eval()
    return {k: float(np.mean(v)) for k, v in stats.items()}


def rollout_metrics(rollout: Rollout, kl_coef: float) -> dict[str, float]:
    """TRL's ``objective/*`` metrics of a rollout (sequence sums averaged over completions)."""
    mask = rollout.batch.response_mask
    kl = rollout.kl.sum(-1)  # (N,) sequence-level log π_old/π_ref
    return {"objective/kl": kl.mean().item(),
            "objective/entropy": rollout.entropy.sum(-1).mean().item(),
            "objective/non_score_reward": (-kl_coef * kl).mean().item(),
            "objective/rlhf_reward": (rollout.scores - kl_coef * kl).mean().item(),
            "objective/scores": rollout.scores.mean().item(),
            "val/num_eos_tokens": int(rollout.ended.sum()),
            "completion_length": mask.sum(-1).mean().item()}


def train_ppo(policy, reference, value_model: ScalarModel, tokenizer, reward_fn: RewardFn, config: PPOConfig,
              compute: Compute | None = None, callback: Callable[[dict], None] | None = None,
              progress: bool = False) -> list[dict]:
    """Train ``policy`` (and ``value_model``) in place with PPO on ``reward_fn`` minus the KL penalty to ``reference``.

    Args:
        policy: π_θ, usually a copy of ``reference``.
        reference: π_ref; never updated.
        value_model: V, e.g. ``ScalarModel.from_causal_lm(reference, head_std=0.0)``.
        tokenizer: shared by the models.
        reward_fn: r(x, y) for a list of prompts and completion texts, e.g. a ``LearnedReward`` or the ground truth.
        config: hyper-parameters.
        compute: a counter to add this run's costs to.
        callback: called with each iteration's metrics (e.g. to evaluate the policy every few iterations).
        progress: show a progress bar.

    Returns:
        The history: one dict per PPO iteration with ``step``, ``episode`` (completions so far), ``lr`` and
        TRL's metric names.
    """
    set_seed(config.seed)
    compute = compute if compute is not None else Compute()
    prompt_rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = adamw(list(policy.parameters()) + list(value_model.parameters()), config.lr, eps=1e-5)
    reference.eval()
    history: list[dict] = []
    for step in tqdm(range(config.steps), desc=f"PPO kl={config.kl_coef:g}", disable=not progress):
        lr = lr_at(step, config.steps, config.lr)
        set_lr(optimizer, lr)
        prompts = prompt_rng.choices(grammar.all_prompts(), k=config.rollout_size)
        rollout = make_rollout(policy, reference, value_model, tokenizer, reward_fn, prompts, config,
                               seed=config.seed * 1_000_003 + step + 1, compute=compute)
        with diverging("PPO", step, config.steps, lr, config):
            updated = ppo_update(policy, value_model, optimizer, rollout, config, generator, compute)
        metrics = {"step": step, "episode": (step + 1) * config.rollout_size, "lr": lr,
                   **rollout_metrics(rollout, config.kl_coef), **updated}
        history.append(metrics)
        if callback is not None:
            callback(metrics)
    return history
