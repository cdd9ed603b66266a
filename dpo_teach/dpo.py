"""The DPO training loop: preference pairs in, a trained policy and a history of TRL-named metrics out.

The reference π_ref is fixed, so by default its log-probs on every pair are computed once, before training, and
cached with the pairs (``precompute_ref=True``). Computing them on the fly each step gives the same numbers at the
cost of a second forward pass per step; the option exists to show exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dpo_teach.logprobs import (
    REF_KEYS,
    PreferenceCollator,
    check_batch_size,
    concatenated_logprobs,
    tokenize_pairs,
    with_reference_logprobs,
)
from dpo_teach.losses import STEADIER_BETA, check_beta, get_loss, step_metrics
from dpo_teach.model import same_weights
from dpo_teach.training import adamw, diverged, diverging, minibatches, n_steps, optimizer_step, set_lr
from dpo_teach.utils import lr_at, set_seed

# The flags of `dpo-teach train` and `demo` that set these DPOConfig fields: the CLI passes them to train_dpo so
# that a divergence error names them (elsewhere, in a notebook or the comparison, it names the config fields).
FLAGS = {"lr": "--lr", "beta": "--beta", "dpop_lambda": "--dpop-lambda"}
# A step after which the policy gives its batch's chosen completions less than this log-probability per token ends
# the run as diverged, though every number is still finite: a uniform guess over GPT-2's 50,257 tokens gives -10.8,
# so only weights thrown far off go below it, as a learning rate of 10 does (its losses swing between 0 and
# thousands; the weights stay finite, so the nan checks do not see it). It does not depend on β or the loss, whose
# values grow with β in healthy runs (at β = 1000 a policy barely moved has a loss near 100).
LOGP_PER_TOKEN_FLOOR = -50.0


def thrown_off(logp_chosen, batch: dict[str, torch.Tensor]) -> str | None:
    """What is wrong when ``batch``'s chosen completions got less than :data:`LOGP_PER_TOKEN_FLOOR` nats per token
    under the policy, else None. ``logp_chosen`` is their summed log-probability averaged over the batch's first half
    of rows (a step's ``logps/chosen``); it is spread over their mean completion length. Anything but a float (a
    custom step that reports no such metric) is not checked."""
    if not isinstance(logp_chosen, float) or "completion_mask" not in batch:
        return None
    chosen = batch["completion_mask"][: batch["completion_mask"].shape[0] // 2]
    per_token = logp_chosen / max(float(chosen.sum()) / max(len(chosen), 1), 1.0)
    if per_token < LOGP_PER_TOKEN_FLOOR:
        return (f"the chosen completions' log-probability fell to {per_token:.3g} nats per token, below "
                f"{LOGP_PER_TOKEN_FLOOR:g}: the weights were thrown far off")
    return None


def unlike_reference(logp_chosen, batch: dict[str, torch.Tensor]) -> str | None:
    """What is wrong when, at the first step of a policy that starts as π_ref, its chosen log-probability
    ``logp_chosen`` (the step's ``logps/chosen``) is under half or over twice π_ref's on the same rows (the batch's
    precomputed ``ref_chosen_logps``), else None. The two should agree (up to dropout, which a training forward
    applies): a step that averages the policy's log-probs over the completion tokens
    (``concatenated_logprobs(..., average=True)``) against π_ref's sums gives a tenth of them on 10-token completions,
    and the loss then trains on that gap, without a word. Not checked without precomputed log-probs, or where π_ref's
    are above -1 nat (too short to tell)."""
    if not isinstance(logp_chosen, float) or "ref_chosen_logps" not in batch:
        return None
    ref = float(batch["ref_chosen_logps"].mean())
    if ref < -1.0 and not 0.5 <= logp_chosen / ref <= 2.0:
        return (f"at the first step the policy is still π_ref, yet its chosen completions' log-probability is "
                f"{logp_chosen:.4g} against π_ref's {ref:.4g} on the same rows ({logp_chosen / ref:.2g} times): the "
                "two are not computed the same way. A mean over the completion tokens on one side and a sum on the "
                "other does this (DPO compares sums: logprobs.concatenated_logprobs without average=True); so do "
                "other masks or other tokens for the policy than for π_ref")
    return None


@dataclass
class DPOConfig:
    beta: float = 0.5  # β: KL-penalty strength; larger keeps π_θ closer to π_ref
    loss_type: str = "sigmoid"  # a key of losses.LOSSES: sigmoid (DPO), cdpo, ipo, hinge, reference_free, dpop
    label_smoothing: float = 0.1  # ε of cdpo (assumed label-flip probability); other losses ignore it
    dpop_lambda: float = 0.5  # λ of dpop (penalty on a chosen log-prob below the reference's); others ignore it
    lr: float = 2e-4  # peak learning rate (AdamW), 5 % warm-up then cosine decay
    batch_size: int = 32  # preference pairs per step
    epochs: int = 1  # passes over the training pairs
    max_length: int = 64  # prompt + completion tokens; longer completions are cut at the end
    precompute_ref: bool = True  # compute π_ref log-probs once before training (else every step)
    seed: int = 0  # batch-order seed

    def __post_init__(self) -> None:
        check_beta(self.beta, zero_ok=True)  # β = 0: notebook 07 shows that nothing learns
        check_batch_size(self.batch_size)

    def loss(self) -> Callable:
        """The configured loss with β (and its own option) bound: called with the four log-prob tensors."""
        return get_loss(self.loss_type, self.beta, label_smoothing=self.label_smoothing, lam=self.dpop_lambda)

    @property
    def steadier_beta(self) -> str:
        """Which way to move β when this loss's training blows up to nan/inf ("lower" or "raise"): the loss registry's
        word (losses.STEADIER_BETA)."""
        return STEADIER_BETA.get(self.loss_type, "lower")

    @property
    def loss_weights(self) -> tuple[str, ...]:
        """The fields of this loss's own weight, which can blow its training up as β can (DPOP's λ): named by
        ``training.diverged`` beside the learning rate and β."""
        return ("dpop_lambda",) if self.loss_type == "dpop" and self.dpop_lambda else ()


def dpo_step(policy: torch.nn.Module, reference: torch.nn.Module, batch: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, loss_fn: Callable, max_grad_norm: float = 1.0) -> dict[str, float]:
    """One DPO training step on a ``PreferenceCollator`` batch; returns its metrics (TRL's names).

    π_ref's log-probs come from the batch when precomputed (``ref_chosen_logps``/``ref_rejected_logps``), else from
    one forward of ``reference`` under ``no_grad``; the policy's chosen and rejected rows go through one forward;
    the per-example losses are averaged over the pairs; then clear, backward, clip, step.
    """
    policy.train()
    chosen_logps, rejected_logps = concatenated_logprobs(policy, batch)  # (B,), (B,)
    if "ref_chosen_logps" in batch:
        ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    else:
        with torch.no_grad():
            ref_chosen, ref_rejected = concatenated_logprobs(reference, batch)
    losses, chosen_rewards, rejected_rewards = loss_fn(chosen_logps, rejected_logps, ref_chosen, ref_rejected)
    optimizer_step(optimizer, losses.mean(), max_grad_norm)
    return step_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps)


def train_dpo(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    rows: list[dict],
    config: DPOConfig,
    loss_fn: Callable | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
    step_fn: Callable | None = None,
    examples: list[dict] | None = None,
    flags: Mapping[str, str] | None = None,
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
        progress: show a progress bar.
        step_fn: replaces :func:`dpo_step` (same signature), e.g. a student's own training step.
        examples: already tokenized ``rows`` (``tokenize_pairs``' format), e.g. with EOS handled differently
            (notebook 07's EOS pitfall); ``rows`` is then only counted. When they carry π_ref's log-probs
            (``logprobs.reference_logprobs``: one pass for every run on the same pairs), those are used when
            ``config.precompute_ref`` is True (the default); otherwise π_ref runs at every step and they are ignored.
        flags: what a divergence error calls ``lr`` and ``beta`` (the CLI passes :data:`FLAGS`); by default their
            field names, as a notebook or the comparison sets them.

    Returns:
        The history: one dict per step with ``step``, ``epoch``, ``lr`` and TRL's metric names.
    """
    set_seed(config.seed)
    loss_fn = loss_fn or config.loss()
    examples = examples if examples is not None else tokenize_pairs(tokenizer, rows, config.max_length)
    extra = REF_KEYS if config.precompute_ref else ()
    if config.precompute_ref:  # legal because π_ref is fixed: one pass, before training (or before several runs)
        examples = with_reference_logprobs(reference, examples, tokenizer.pad_token_id)
    collate = PreferenceCollator(tokenizer.pad_token_id, extra_keys=extra)
    reference.eval()
    optimizer = adamw(policy.parameters(), config.lr)
    total = n_steps(len(examples), config.batch_size, config.epochs)
    batches = minibatches(len(examples), config.batch_size, config.epochs, torch.Generator().manual_seed(config.seed))
    starts_as_reference = same_weights(policy, reference)
    policy.train()
    history: list[dict] = []
    for step, (epoch, idx) in enumerate(tqdm(batches, total=total, desc="DPO", disable=not progress)):
        batch = collate([examples[i] for i in idx.tolist()])
        lr = lr_at(step, total, config.lr)
        set_lr(optimizer, lr)
        with diverging("DPO", step, total, lr, config, flags):
            metrics = (step_fn or dpo_step)(policy, reference, batch, optimizer, loss_fn)
        reported = metrics if isinstance(metrics, dict) else {}  # a custom step_fn may report anything
        loss, logp = reported.get("loss"), reported.get("logps/chosen")
        if isinstance(loss, float) and not math.isfinite(loss):  # a custom step_fn that stepped anyway
            raise diverged("DPO", step, total, lr, config, f"the loss is {loss}", flags)
        unlike = unlike_reference(logp, batch) if step == 0 and starts_as_reference else None
        if unlike:
            raise ValueError(f"DPO step 1 of {total}: {unlike}")
        thrown = thrown_off(logp, batch)
        if thrown:
            raise diverged("DPO", step, total, lr, config, thrown, flags)
        history.append({"step": step, "epoch": epoch, "lr": lr, **metrics})
        if callback is not None:
            callback(history[-1])
    policy.eval()
    thrown = after_last_update(policy, batch) if history else None
    if thrown:
        raise diverged("DPO", total - 1, total, lr_at(total - 1, total, config.lr), config, thrown, flags)
    return history


def after_last_update(policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with ``policy`` after the last step's update, else None: a weight that is no longer finite, or
    (:func:`thrown_off`) chosen completions of the last ``batch`` below the floor. Each step's metrics come from the
    forward pass before its update, so no step sees the last update; this one forward under ``no_grad`` does (an
    evaluation, like those after training: not counted in the run's ``Compute``)."""
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        return "a weight is no longer finite"
    with torch.no_grad():
        chosen, _ = concatenated_logprobs(policy, batch)
    logp = chosen.mean().item()
    if not math.isfinite(logp):
        return "after the last step's update, the policy's log-probabilities are no longer finite"
    thrown = thrown_off(logp, batch)
    return f"after the last step's update, {thrown}" if thrown else None

