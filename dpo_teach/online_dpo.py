"""Online (iterative) DPO: DPO's fixed data set replaced, round by round, by fresh pairs from the current policy.

Offline DPO (:mod:`dpo_teach.dpo`) trains on pairs sampled once from π_ref. Online DPO keeps the DPO loss and moves
the data. This module runs it round by round, as iterative DPO does, refreshing the reference between rounds as Xu
et al. 2023 ("Some things are more CRINGE than others") and Yuan et al. 2024 (self-rewarding language models) do.
Xiong et al. 2024 (RLHFlow) also start each round from the last policy but keep π_ref as the reference in every
round: ``refresh_reference=False``. Guo et al. 2024 (online AI feedback) and TRL's ``OnlineDPOTrainer`` take one step
per fresh batch against a fixed π_ref, which ``refresh_reference=False`` also comes closer to::

    π_0 = π_ref
    for round k = 1 … R:
        sample two completions per prompt from π_{k−1}          (on-policy data, like PPO)
        label each pair: Bradley–Terry on the ground truth, or the reward model's order
        π_k = DPO on those pairs against the round's reference  (fixed for the whole round)
        refresh: the next round's reference is π_k              (or keep π_ref: ``refresh_reference=False``)

Inside a round nothing moves but π_θ, exactly DPO's assumption (notebook 04 shows what breaks when the reference
moves *during* training); the reference changes only **between** rounds, where a new DPO problem starts.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from dpo_teach import grammar
from dpo_teach.compute import Compute
from dpo_teach.data import PreferenceConfig, make_preference_pairs
from dpo_teach.dpo import DPOConfig, train_dpo
from dpo_teach.ppo import RewardFn
from dpo_teach.sampling import sample

LABELLERS = ("bt", "rm")


@dataclass
class OnlineDPOConfig:
    rounds: int = 4  # sample → label → DPO → refresh cycles
    prompts_per_round: int = 500  # prompts per round, two completions each
    labeller: str = "bt"  # "bt": Bradley–Terry on the ground truth (as the offline pairs); "rm": the reward model
    bt_temperature: float = 0.1  # τ of the "bt" labeller
    refresh_reference: bool = True  # the next round's reference is this round's policy (False: π_ref throughout)
    max_new_tokens: int = 16  # completion length limit when sampling pairs
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(lr=5e-4, epochs=2))  # each round's DPO (β, lr, …)
    seed: int = 0  # prompt choice, sampling, labelling and batch-order seed


def dpo_compute(n_pairs: int, config: DPOConfig) -> Compute:
    """What DPO on ``n_pairs`` costs: π_θ scores each pair every epoch with backward (chosen and rejected: two
    sequences); π_ref once (precomputed) or every epoch."""
    ref_passes = 1 if config.precompute_ref else config.epochs
    return Compute(forward=2 * n_pairs * (ref_passes + config.epochs), backward=2 * n_pairs * config.epochs)


@torch.no_grad()
def reward_model_pairs(policy, tokenizer, reward_fn: RewardFn, config: OnlineDPOConfig, seed: int) -> list[dict]:
    """Two completions per prompt from ``policy``; the one ``reward_fn`` scores higher is chosen (ties dropped)."""
    prompts = random.Random(seed).choices(grammar.all_prompts(), k=config.prompts_per_round)
    a = sample(policy, tokenizer, prompts, config.max_new_tokens, seed=seed)
    b = sample(policy, tokenizer, prompts, config.max_new_tokens, seed=seed + 10_000)
    ra, rb = reward_fn(prompts, a.completions), reward_fn(prompts, b.completions)
    return [{"prompt": p, "chosen": ya if sa > sb else yb, "rejected": yb if sa > sb else ya}
            for p, ya, yb, sa, sb in zip(prompts, a.completions, b.completions, ra, rb, strict=True)
            if ya != yb and ya.strip() and yb.strip() and sa != sb]


def round_pairs(policy, tokenizer, config: OnlineDPOConfig, seed: int, compute: Compute,
                reward_fn: RewardFn | None) -> list[dict]:
    """One round's labelled pairs, sampled from the current ``policy``, with their sampling and labelling costs."""
    n = config.prompts_per_round
    compute.add(completions=2 * n, forward=2 * n)
    if config.labeller == "bt":  # the very labeller of the offline preference set, now on π_θ's samples
        rows = make_preference_pairs(policy, tokenizer, PreferenceConfig(
            n_prompts=n, bt_temperature=config.bt_temperature, max_new_tokens=config.max_new_tokens, seed=seed))
        compute.add(ground_truth_calls=n)
        return rows
    if reward_fn is None:
        raise ValueError("OnlineDPOConfig.labeller='rm' needs a reward_fn (e.g. a LearnedReward)")
    return reward_model_pairs(policy, tokenizer, reward_fn, config, seed)


def train_online_dpo(policy, reference, tokenizer, config: OnlineDPOConfig, reward_fn: RewardFn | None = None,
                     compute: Compute | None = None, callback: Callable[[dict], None] | None = None,
                     progress: bool = False) -> list[dict]:
    """Train ``policy`` in place with online DPO; ``reference`` (π_ref) itself is never updated.

    Args:
        policy: π_θ, usually a copy of ``reference``.
        reference: π_ref, the first round's reference (and every round's with ``refresh_reference=False``).
        tokenizer: shared by the models.
        config: hyper-parameters.
        reward_fn: the labeller when ``config.labeller == "rm"`` (it counts its own calls).
        compute: a counter to add this run's costs to.
        callback: called after each round with that round's metrics.
        progress: show DPO's progress bars.

    Returns:
        One dict per round: ``round``, ``completions`` (sampled so far), ``pairs``, the round's mean DPO ``loss``
        and ``rewards/accuracies``, and ``reference`` ("π_ref" or the round whose policy it was).
    """
    if config.labeller not in LABELLERS:
        raise ValueError(f"OnlineDPOConfig.labeller={config.labeller!r}: choose one of {LABELLERS}")
    compute = compute if compute is not None else Compute()
    round_reference, reference_name, history = reference, "π_ref", []
    for k in range(config.rounds):
        seed = config.seed * 1_000_003 + k + 1
        rows = round_pairs(policy, tokenizer, config, seed, compute, reward_fn)
        dpo_cfg = replace(config.dpo, seed=seed)
        steps = train_dpo(policy, round_reference, tokenizer, rows, dpo_cfg, progress=progress)
        compute.add(**dpo_compute(len(rows), dpo_cfg).as_dict())
        metrics = {"round": k + 1, "completions": compute.completions, "pairs": len(rows),
                   "loss": float(np.mean([s["loss"] for s in steps])),
                   "rewards/accuracies": float(np.mean([s["rewards/accuracies"] for s in steps])),
                   "reference": reference_name}
        history.append(metrics)
        if callback is not None:
            callback(metrics)
        if config.refresh_reference:  # between rounds only: the next DPO problem starts from where this one ended
            round_reference, reference_name = copy.deepcopy(policy).eval(), f"round {k + 1}"
    return history
