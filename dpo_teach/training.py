"""The loop mechanics every trainer shares, as small helpers (not a Trainer class), so that SFT, DPO, the reward model
and PPO each show only what differs between them: what they score, and which loss they take.

A trainer reads::

    optimizer = adamw(model.parameters(), config.lr)
    for step, (epoch, idx) in enumerate(minibatches(len(examples), config.batch_size, config.epochs, generator)):
        lr = lr_at(step, total, config.lr)           # utils.lr_at: warm-up, cosine
        set_lr(optimizer, lr)
        loss = ...                                   # the algorithm
        with diverging("SFT", step, total, lr, config):  # nan or inf: an error naming the run, step and settings
            optimizer_step(optimizer, loss)          # zero_grad → backward → clip → step
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch


class TrainingError(RuntimeError):
    """Training diverged: the loss or the gradient is no longer a finite number (nan or inf), or (DPO,
    ``dpo.thrown_off``) the weights were thrown so far that the policy finds its chosen completions all but
    impossible. Nothing is saved; raised through :func:`diverging` or :func:`diverged`, the message says which run,
    at which step, and what to change."""


BETAS = ("beta", "kl_coef")  # the config fields that hold a trainer's β, the weight of its KL term


def diverged(name: str, step: int, total: int, lr: float, config, what: str,
             flags: Mapping[str, str] | None = None) -> TrainingError:
    """The error for ``name``'s step ``step`` (0-based) of ``total`` that diverged (``what``: the loss is nan, ...):
    where, the learning rate then, the run's peak lr and β (``config.lr``, and ``config.beta`` or ``config.kl_coef``
    where the config has one), and what to change: the learning rate, or β where it is not 0, lowered (a large β can
    overflow the KL term) unless the config's ``steadier_beta`` says "raise" (IPO's loss, :data:`losses.STEADIER_BETA`),
    or the loss's own weight where the config's ``loss_weights`` names one (DPOP's λ). A setting is named by its
    command-line flag where ``flags`` (field → flag) has one, else by its config field."""
    flags = flags or {}
    betas = [key for key in BETAS if hasattr(config, key)]
    weights = list(getattr(config, "loss_weights", ()))  # the loss's own weight (DPOConfig: DPOP's λ)
    settings = ", ".join(f"{label}={getattr(config, key):g}" for key, label in
                         [("lr", "peak lr"), *((key, key) for key in betas + weights)])
    fix = f"Lower the learning rate ({flags.get('lr', 'lr')}, e.g. {config.lr / 10:g})"
    raise_beta = getattr(config, "steadier_beta", "lower") == "raise"  # the loss's own word (DPOConfig)
    fix += "".join(f" or {'raise ' if raise_beta else ''}β ({flags.get(key, key)})"
                   for key in betas if getattr(config, key))
    fix += "".join(f" or λ ({flags.get(key, key)})" for key in weights)
    return TrainingError(f"{name} diverged at step {step + 1} of {total} ({what}; learning rate {lr:.3g} at this "
                         f"step, {settings}); nothing was saved. {fix}")


@contextmanager
def diverging(name: str, step: int, total: int, lr: float, config,
              flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Around a training step: a :class:`TrainingError` raised inside (by :func:`optimizer_step`) comes out as
    :func:`diverged`'s, which says which run, which step and which settings."""
    try:
        yield
    except TrainingError as e:
        raise diverged(name, step, total, lr, config, str(e), flags) from None


def adamw(params: Iterable[torch.nn.Parameter], lr: float, **kwargs) -> torch.optim.AdamW:
    """AdamW without weight decay unless asked (``weight_decay=...``); ``kwargs`` go to ``torch.optim.AdamW``."""
    return torch.optim.AdamW(params, lr=lr, **{"weight_decay": 0.0, **kwargs})


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the schedule is applied by hand, one step at a time)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def n_steps(n_examples: int, batch_size: int, epochs: int = 1) -> int:
    """Optimizer steps of :func:`minibatches`: ⌈n_examples / batch_size⌉ per epoch (the last batch may be short)."""
    return -(-n_examples // batch_size) * epochs


def minibatches(n_examples: int, batch_size: int, epochs: int,
                generator: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:
    """``(epoch, indices)`` of every minibatch: each epoch is a fresh permutation drawn from ``generator``.

    Yields:
        The epoch number and the example indices of one minibatch, Shape: (≤ batch_size,).
    """
    for epoch in range(epochs):
        order = torch.randperm(n_examples, generator=generator)
        for start in range(0, n_examples, batch_size):
            yield epoch, order[start:start + batch_size]


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float = 1.0) -> None:
    """One update: clear old gradients, backpropagate ``loss``, clip the gradient norm of all the optimizer's
    parameters to ``max_grad_norm``, step.

    Raises:
        TrainingError: ``loss`` or the gradient norm is nan or inf (training diverged); the parameters are left as
            they were, since one such step would turn every weight into nan.
    """
    if not torch.isfinite(loss.detach()).all():
        raise TrainingError(f"the loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not torch.isfinite(norm):
        raise TrainingError(f"the gradient norm is {norm.item()}")
    optimizer.step()
