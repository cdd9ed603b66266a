"""The first things an exercise's tests check about what an answer returned: a torch tensor, of the shape and dtype
the exercise asks for, and for a preference loss its three tensors in their order.

Each check fails with a sentence that tells the student what to change. Without them the first sign of a result in
float32 (a ``.float()``, a ``torch.zeros(n)`` filled in a loop) was torch's own ``RuntimeError: Float did not match
Double`` from inside a test's ``torch.allclose``, and that of a NumPy array ``TypeError: allclose(): argument 'input'
must be Tensor``: neither says which line of the answer to look at.
"""

from __future__ import annotations

import torch

LOSS_PARTS = ("losses", "chosen_rewards", "rejected_rewards")


def _kind(value) -> str:
    """A value's type as a student would recognise it: ``float``, ``numpy.ndarray``, ``tuple``."""
    module = type(value).__module__.split(".")[0]
    return type(value).__name__ if module == "builtins" else f"{module}.{type(value).__name__}"


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def returned(value, shape: tuple, dtype: torch.dtype, what: str):
    """``value`` itself, once it is a torch tensor of ``shape`` and ``dtype``.

    Raises:
        AssertionError: ``what`` (the result's meaning, "one loss per pair"), then what differs and how to fix it.
    """
    if not torch.is_tensor(value):
        raise AssertionError(f"{what}: return a torch tensor, not a {_kind(value)} (stay with torch operations on the "
                             "inputs: no .numpy(), .tolist(), .item() or float())")
    if tuple(value.shape) != tuple(shape):
        raise AssertionError(f"{what}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.dtype != dtype:
        raise AssertionError(f"{what}: the inputs are {_dtype(dtype)}, the result is {_dtype(value.dtype)}: compute in "
                             "the inputs' dtype (no .float() or .double(); a tensor you fill starts as "
                             "torch.zeros_like(x), not torch.zeros(n))")
    return value


def loss_triple(out, shape: tuple, dtype: torch.dtype):
    """``out`` itself, once it is ``(losses, chosen_rewards, rejected_rewards)``: three tensors of ``shape`` and
    ``dtype``, and, where the log-probabilities given carry gradients, only the losses carry them (the order).

    Raises:
        AssertionError: which of the three differs, and how.
    """
    if not isinstance(out, tuple) or len(out) != 3:
        raise AssertionError("return a tuple of three tensors, (losses, chosen_rewards, rejected_rewards), not a "
                             f"{_kind(out)}" + (f" of {len(out)}" if isinstance(out, tuple) else ""))
    for name, part in zip(LOSS_PARTS, out, strict=True):
        returned(part, shape, dtype, f"{name} (per-example tensors of shape (B,), not the mean)")
    carrying = [name for name, part in zip(LOSS_PARTS, out, strict=True) if part.requires_grad]
    if carrying and carrying != ["losses"]:
        if not out[0].requires_grad:
            raise AssertionError(f"the tuple's first tensor carries no gradient, its {' and '.join(carrying)} do: "
                                 "return (losses, chosen_rewards, rejected_rewards) in this order, the losses first "
                                 "(with their graph), then the two detached implicit rewards")
        raise AssertionError("detach the implicit rewards: chosen_rewards and rejected_rewards are numbers to watch, "
                             "not to train through (β·(logp − ref_logp).detach())")
    return out
