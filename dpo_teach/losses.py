"""Preference losses as pure functions: log-probs in, per-example losses and implicit rewards out.

All functions take the summed sequence log-probs of the policy π_θ and of the fixed reference π_ref on the chosen
(y_w) and rejected (y_l) completions, each Shape: (B,), and return ``(losses, chosen_rewards, rejected_rewards)``,
each Shape: (B,). The caller takes the mean. The implicit rewards r̂(x, y) = β·log(π_θ(y|x) / π_ref(y|x)) are
detached: they are for logging (``rewards/chosen``, ``rewards/rejected``), not for gradients.

The reference log-probs enter only as constants. That is the fixed-reference assumption: π_ref does not depend
on θ, so its log-probs can be computed once, before training, and cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log π_θ(y_w|x)/π_ref(y_w|x)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # log π_θ(y_l|x)/π_ref(y_l|x)
    return chosen_logratios, rejected_logratios


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss, Eq. 7 in Rafailov et al. 2023:

        L = -log σ( β·log π_θ(y_w|x)/π_ref(y_w|x) − β·log π_θ(y_l|x)/π_ref(y_l|x) )

    With ``label_smoothing`` ε > 0 this is conservative DPO (cDPO, Mitchell 2023): the label is assumed flipped
    with probability ε, so the loss is ``(1-ε)·L(y_w ≻ y_l) + ε·L(y_l ≻ y_w)``.

    Args:
        policy_chosen_logps: log π_θ(y_w|x). Shape: (B,).
        policy_rejected_logps: log π_θ(y_l|x). Shape: (B,).
        ref_chosen_logps: log π_ref(y_w|x). Shape: (B,).
        ref_rejected_logps: log π_ref(y_l|x). Shape: (B,).
        beta: β, the strength of the KL penalty; larger keeps π_θ closer to π_ref.
        label_smoothing: ε in [0, 0.5), the assumed probability that a label is flipped.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each Shape: (B,); rewards are detached.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_logratios - rejected_logratios)  # r̂(x, y_w) − r̂(x, y_l)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def cdpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
              beta: float = 0.1, label_smoothing: float = 0.1):
    """Conservative DPO: :func:`dpo_loss` with label smoothing ε (default 0.1). Same arguments and returns."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta=beta, label_smoothing=label_smoothing)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1):
    """IPO, Eq. 17 in Azar et al. 2023: ``(h − 1/(2β))²`` with h the difference of log-ratios.

    Instead of pushing the margin to infinity (as -log σ does on deterministic preferences), IPO regresses it to
    the finite target 1/(2β). Here h uses summed log-probs like every loss in this module; TRL 1.16 divides each
    log-ratio by the completion length first, so its β is on another scale. Same arguments and returns as
    :func:`dpo_loss`.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1):
    """Hinge loss on the reward margin (SLiC, Zhao et al. 2023): ``max(0, 1 − β·h)``.

    Pairs whose implicit-reward margin already exceeds 1 give no gradient at all. Same arguments and returns as
    :func:`dpo_loss`.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def reference_free_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                        beta: float = 0.1):
    """Reference-free DPO: ``-log σ(β·(log π_θ(y_w|x) − log π_θ(y_l|x)))``, i.e. π_ref taken as uniform.

    Without the reference nothing anchors the policy: it can raise the margin by any means, fluency included.
    The reference arguments are accepted and ignored so that every loss has one signature; the returned
    "rewards" are then β·log π_θ(y|x). Same returns as :func:`dpo_loss`.
    """
    logits = beta * (policy_chosen_logps - policy_rejected_logps)
    losses = -F.logsigmoid(logits)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


LOSSES = {
    "sigmoid": dpo_loss,
    "cdpo": cdpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "reference_free": reference_free_loss,
}
