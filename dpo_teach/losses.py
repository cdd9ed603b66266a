"""The preference math, all in one place: Bradley–Terry, the implicit reward, DPO and its variants, the metrics.

Every DPO-family loss takes the summed sequence log-probs of the policy π_θ and of the fixed reference π_ref on the
chosen (y_w) and rejected (y_l) completions, each Shape: (B,), and returns ``(losses, chosen_rewards,
rejected_rewards)``, each Shape: (B,). The caller takes the mean. The implicit rewards r̂(x, y) = β·log(π_θ(y|x) /
π_ref(y|x)) are detached: they are for logging (``rewards/chosen``, ``rewards/rejected``), not for gradients.

The reference log-probs enter only as constants. That is the fixed-reference assumption: π_ref does not depend
on θ, so its log-probs can be computed once, before training, and cached.

Each variant is its own small function, registered once in :data:`LOSSES` under the name that ``DPOConfig.loss_type``
and ``dpo-teach train --loss`` use. The Bradley–Terry *probability* with which "the human" labels lives beside the
ground-truth reward, in :func:`dpo_teach.reward.bt_probability`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

LOSSES: dict[str, Callable] = {}
"""name → loss function; every function here that ``@register`` marks."""
STEADIER_BETA: dict[str, str] = {}
"""name → which way to move β when training with that loss blows up numerically (its loss or gradient becomes nan
or inf; ``training.diverged`` says so): "lower" (a smaller β scales the margin, and so the gradient, down) or "raise"
(IPO: its target 1/(2β) and its gradient grow as β falls). This is about numbers overflowing, not about the policy
drifting from π_ref: against drift a *larger* β anchors every one of these losses but ``reference_free``, which has
no reference to be anchored to (notebook 07, "β too small")."""


LABELS: dict[str, str] = {}
"""name → what a table, a figure or a samples file calls a policy trained with that loss ("DPO", "IPO", ...)."""
LOGPROBS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
"""The four log-probability arguments every loss takes first, in this order (notebook 03's signature)."""


def register(name: str, label: str, steadier_beta: str = "lower") -> Callable:
    """Add a loss to :data:`LOSSES` under ``name``, with its :data:`LABELS` entry and the way to move β when it blows
    up (:data:`STEADIER_BETA`)."""
    assert steadier_beta in ("lower", "raise"), steadier_beta

    def add(fn: Callable) -> Callable:
        assert name not in LOSSES, f"loss {name!r} registered twice"
        LOSSES[name], LABELS[name], STEADIER_BETA[name] = fn, label, steadier_beta
        return fn
    return add


def check_beta(beta: float, zero_ok: bool = False) -> None:
    """Raise ValueError unless β > 0 (or β = 0 where ``zero_ok``: notebook 07 trains at β = 0 to show that nothing
    then learns). A negative β flips the sign of every implicit reward, so training learns the opposite preference."""
    b = torch.as_tensor(beta)  # a float, or a tensor of β's that broadcasts
    if not bool((b >= 0 if zero_ok else b > 0).all()):  # nan fails too
        raise ValueError(f"beta must be {'≥' if zero_ok else '>'} 0, got {beta}: β weighs the KL penalty; a "
                         "negative β learns the opposite preference, and β = 0 learns nothing (or divides by 0). "
                         "Typical values are 0.1 to 1.")


def check_logps(*logps: torch.Tensor | None) -> None:
    """Raise ValueError unless the log-prob arguments (:data:`LOGPROBS`, in order; None: a reference that
    ``reference_free_loss`` ignores) are one number per pair, all Shape: (B,). A (B, 1) beside a (B,) would broadcast
    to a (B, B) loss, and per-token (B, T) log-probs are not yet a sequence's."""
    for name, x in zip(LOGPROBS, logps):
        if x is not None and x.shape != logps[0].shape[:1]:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; each log-prob argument is one number per pair, "
                             f"shape (B,), the same for all four (policy_chosen_logps: {tuple(logps[0].shape)}). Sum "
                             "per-token log-probs over the completion first (logprobs.sequence_logprobs); pass (B,), "
                             "not (B, 1).")


# --- Bradley–Terry and the implicit reward (notebooks 02–03) --------------------------------------------------------

def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry negative log-likelihood −log σ(r(x, y_w) − r(x, y_l)), Eq. 2 in Rafailov et al. 2023.

    The reward model's loss (stage 1 of RLHF) and, with r = r̂, the DPO loss. ``logsigmoid`` keeps it finite for
    any margin (−log of a probability rounded to 0 would be inf). Elementwise.

    Args:
        chosen_rewards: r(x, y_w). Shape: (B,) (or any shape).
        rejected_rewards: r(x, y_l). Same shape.

    Returns:
        Same shape. Equal rewards give ln 2 ≈ 0.6931.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """r̂(x, y) = β·log(π_θ(y|x) / π_ref(y|x)): the reward that the policy defines (Eq. 5 without Z(x)). Elementwise."""
    return beta * (policy_logps - ref_logps)


def preference_probability(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor,
                           beta: float) -> torch.Tensor:
    """The policy's own P(y_w ≻ y_l | x) = σ(β·log π_θ/π_ref(y_w) − β·log π_θ/π_ref(y_l)) (Eq. 6). Elementwise.

    Args:
        chosen_logratio: log π_θ(y_w|x) − log π_ref(y_w|x), e.g. read from a training log.
        rejected_logratio: log π_θ(y_l|x) − log π_ref(y_l|x).
        beta: β.
    """
    return torch.sigmoid(beta * (chosen_logratio - rejected_logratio))


# --- DPO and its variants (notebooks 03, 05 and 07) -----------------------------------------------------------------

@register("sigmoid", "DPO")
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss, Eq. 7 in Rafailov et al. 2023:

        L = -log σ( β·log π_θ(y_w|x)/π_ref(y_w|x) − β·log π_θ(y_l|x)/π_ref(y_l|x) )

    Args:
        policy_chosen_logps: log π_θ(y_w|x). Shape: (B,).
        policy_rejected_logps: log π_θ(y_l|x). Shape: (B,).
        ref_chosen_logps: log π_ref(y_w|x). Shape: (B,).
        ref_rejected_logps: log π_ref(y_l|x). Shape: (B,).
        beta: β, the strength of the KL penalty; larger keeps π_θ closer to π_ref.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each Shape: (B,); rewards are detached.
    """
    check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log π_θ/π_ref(y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # log π_θ/π_ref(y_l)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@register("cdpo", "cDPO")
def cdpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
              beta: float = 0.1, label_smoothing: float = 0.1):
    """Conservative DPO (cDPO, Mitchell 2023): each label is assumed flipped with probability ε, so

        L = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h),    h = log π_θ/π_ref(y_w) − log π_θ/π_ref(y_l)

    Its minimum is at a finite margin, β·h = log((1 − ε)/ε), instead of at infinity. Same arguments and returns as
    :func:`dpo_loss`, plus ``label_smoothing`` ε in [0, 0.5) (ε = 0 is DPO).
    """
    check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    margin = beta * (chosen_logratios - rejected_logratios)  # β·h
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@register("ipo", "IPO", steadier_beta="raise")  # on nan/inf: a smaller β moves the target 1/(2β) further out
def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1):
    """IPO, Eq. 17 in Azar et al. 2023: ``(h − 1/(2β))²`` with h the difference of log-ratios.

    Instead of pushing the margin to infinity (as -log σ does on deterministic preferences), IPO regresses it to
    the finite target 1/(2β). Here h uses summed log-probs like every loss in this module; TRL 1.16 divides each
    log-ratio by the completion length first, so its β is on another scale. Same arguments and returns as
    :func:`dpo_loss`.
    """
    check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@register("hinge", "hinge")
def hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1):
    """Hinge loss on the implicit-reward margin: ``max(0, 1 − β·h)``.

    SLiC (Zhao et al. 2023) puts a hinge on the policy's own log-probs; normalising them by π_ref, as here, is the
    hinge variant of RSO (Liu et al. 2023) and TRL's ``loss_type="hinge"``. Pairs whose margin already exceeds 1 give
    no gradient at all. Same arguments and returns as :func:`dpo_loss`.
    """
    check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@register("reference_free", "reference-free DPO")
def reference_free_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                        beta: float = 0.1):
    """Reference-free DPO: ``-log σ(β·(log π_θ(y_w|x) − log π_θ(y_l|x)))``, i.e. DPO with a π_ref that is constant
    over responses (then log π_ref cancels in the margin).

    Without the reference nothing anchors the policy: it can raise the margin by any means, fluency included.
    The reference arguments are accepted and ignored so that every loss has one signature; the returned
    "rewards" are then β·log π_θ(y|x). Same returns as :func:`dpo_loss`.
    """
    check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


@register("dpop", "DPOP")
def dpop_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
              beta: float = 0.1, lam: float = 0.5):
    """DPO-Positive (DPOP, Eq. 3 in Pal et al. 2024, "Smaug"):

        L = -log σ( β·[ log π_θ/π_ref(y_w) − log π_θ/π_ref(y_l) − λ·max(0, log π_ref(y_w) − log π_θ(y_w)) ] )

    Plain DPO only sees the difference of the two log-ratios, so it can raise the margin while *both* log-probs
    fall (likelihood displacement). The penalty is 0 while the chosen log-prob stays at or above the reference's
    and grows with λ ≥ 0 once it falls below (λ = 0 is DPO). Same arguments and returns as :func:`dpo_loss`.
    """
    check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    penalty = lam * torch.clamp(-chosen_logratios, min=0)  # > 0 only when y_w lost probability
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios - penalty))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def loss_options() -> set[str]:
    """The options some registered loss takes besides β (``label_smoothing``, ``lam``): keywords with a default, other
    than β and the four log-probabilities (``reference_free_loss`` lets the reference's two default to None)."""
    return {name for fn in LOSSES.values() for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and name not in ("beta", *LOGPROBS)}


def get_loss(name: str, beta: float, **options) -> Callable:
    """``LOSSES[name]`` with β and those of ``options`` that it takes bound (e.g. ``label_smoothing`` for cdpo,
    ``lam`` for dpop; one loss's option is ignored by the others); it is then called with the four log-prob tensors
    alone. An option that no registered loss takes (a typo) is refused, not ignored."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss_type {name!r}; choose one of {sorted(LOSSES)}")
    check_beta(beta, zero_ok=name != "ipo")  # β = 0: nothing learns (notebook 07); IPO's target 1/(2β) has no value
    unknown = sorted(set(options) - loss_options())
    if unknown:
        raise TypeError(f"no loss takes {unknown}; the losses' options are {sorted(loss_options())}")
    fn = LOSSES[name]
    takes = inspect.signature(fn).parameters
    return partial(fn, beta=beta, **{k: v for k, v in options.items() if k in takes})


# --- what a training step reports (TRL's metric names) --------------------------------------------------------------

def step_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, float]:
    """Batch means under TRL's metric names. All arguments Shape: (B,)."""
    return {
        "loss": losses.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": chosen_logps.detach().mean().item(),
        "logps/rejected": rejected_logps.detach().mean().item(),
    }
