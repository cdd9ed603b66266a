"""The DPO training loop: preference pairs in, a trained policy and a history of TRL-named metrics out.

The reference π_ref is fixed, so by default its log-probs on every pair are computed once, before training, and
cached with the pairs (``precompute_ref=True``). Computing them on the fly each step gives the same numbers at the
cost of a second forward pass per step; the option exists to show exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dpo_teach.logprobs import PreferenceCollator, concatenated_logprobs, tokenize_pairs
from dpo_teach.losses import LOSSES
from dpo_teach.utils import lr_at, set_seed


@dataclass
class DPOConfig:
    beta: float = 0.5  # β: KL-penalty strength; larger keeps π_θ closer to π_ref
    loss_type: str = "sigmoid"  # a key of losses.LOSSES: sigmoid (DPO), cdpo, ipo, hinge, reference_free
    label_smoothing: float = 0.0  # ε for cdpo (assumed label-flip probability)
    lr: float = 2e-4  # peak learning rate (AdamW), 5 % warm-up then cosine decay
    batch_size: int = 32  # preference pairs per step
    epochs: int = 1  # passes over the training pairs
    max_length: int = 64  # prompt + completion tokens; longer completions are cut at the end
    precompute_ref: bool = True  # compute π_ref log-probs once before training (else every step)
    seed: int = 0  # batch-order seed
    progress: bool = False  # show a tqdm bar


def _loss_fn(config: DPOConfig) -> Callable:
    if config.loss_type not in LOSSES:
        raise ValueError(f"unknown loss_type {config.loss_type!r}; choose one of {sorted(LOSSES)}")
    loss = LOSSES[config.loss_type]
    if config.loss_type in ("sigmoid", "cdpo"):
        return lambda *logps: loss(*logps, beta=config.beta, label_smoothing=config.label_smoothing)
    return lambda *logps: loss(*logps, beta=config.beta)


@torch.no_grad()
def reference_logprobs(reference: torch.nn.Module, examples: list[dict], pad_token_id: int,
                       batch_size: int = 256) -> list[dict]:
    """Return copies of tokenized ``examples`` with ``ref_chosen_logps`` and ``ref_rejected_logps`` added.

    One pass of π_ref over the data, under ``no_grad``: legal because π_ref is fixed.
    """
    collate = PreferenceCollator(pad_token_id)
    reference.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        chosen, rejected = concatenated_logprobs(reference, collate(chunk))
        for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            out.append({**e, "ref_chosen_logps": c, "ref_rejected_logps": r})
    return out


def step_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, float]:
    """Batch means under TRL's metric names."""
    return {
        "loss": losses.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": chosen_logps.detach().mean().item(),
        "logps/rejected": rejected_logps.detach().mean().item(),
    }


def train_dpo(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    rows: list[dict],
    config: DPOConfig,
    loss_fn: Callable | None = None,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``policy`` in place with DPO on preference ``rows`` against the fixed ``reference``.

    Args:
        policy: π_θ, usually a copy of ``reference`` (``copy.deepcopy``).
        reference: π_ref; never updated.
        tokenizer: shared by both models.
        rows: dicts with ``prompt``, ``chosen``, ``rejected`` (see ``data.load_preferences``).
        config: hyper-parameters.
        loss_fn: replaces the loss chosen by ``config.loss_type``; called as
            ``loss_fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)`` and
            returning ``(losses, chosen_rewards, rejected_rewards)`` (e.g. a student's own ``dpo_loss``).
        callback: called with each step's metrics dict (e.g. for live plots).

    Returns:
        The history: one dict per step with ``step``, ``epoch``, ``lr`` and TRL's metric names.
    """
    set_seed(config.seed)
    loss_fn = loss_fn or _loss_fn(config)
    pad = tokenizer.pad_token_id
    examples = tokenize_pairs(tokenizer, rows, config.max_length)
    if config.precompute_ref:
        examples = reference_logprobs(reference, examples, pad)
        collate = PreferenceCollator(pad, extra_keys=("ref_chosen_logps", "ref_rejected_logps"))
    else:
        collate = PreferenceCollator(pad)
    reference.eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(examples) // config.batch_size)
    total = steps_per_epoch * config.epochs
    policy.train()
    history: list[dict] = []
    bar = tqdm(total=total, desc="DPO", disable=not config.progress)
    for epoch in range(config.epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            batch = collate([examples[i] for i in order[start:start + config.batch_size]])
            step = len(history)
            lr = lr_at(step, total, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chosen_logps, rejected_logps = concatenated_logprobs(policy, batch)  # (B,), (B,)
            if config.precompute_ref:
                ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                with torch.no_grad():
                    ref_chosen, ref_rejected = concatenated_logprobs(reference, batch)
            losses, chosen_rewards, rejected_rewards = loss_fn(chosen_logps, rejected_logps, ref_chosen, ref_rejected)
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            metrics = {"step": step, "epoch": epoch, "lr": lr,
                       **step_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps)}
            history.append(metrics)
            if callback is not None:
                callback(metrics)
            bar.update(1)
    bar.close()
    policy.eval()
    return history
