"""The bandit world of notebooks 01–04: a few prompts, K whole responses each, explicit π_ref and r. Everything exact.

In the language-model world a response is a token sequence and every quantity is estimated from samples. Here a
response is one of K fixed strings, so π_ref(·|x) is a probability vector, KL is a finite sum and the optimum of
the KL-regularized objective has a closed form. The notebooks ask students to write these functions themselves;
this module holds the reference versions that later cells and notebooks use (same names, same signatures).

Shapes: ``P`` prompts, ``K`` responses per prompt. A policy is a tensor of probabilities of Shape: (P, K) (or
(K,) for one prompt) whose last dimension sums to 1; all functions work on the last dimension and broadcast over
the others. Computations use float64 so that identities can be checked to 1e-12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.losses import bradley_terry_loss, check_beta, implicit_reward
from dpo_teach.reward import bt_probability

PROMPTS = ["the film was", "honestly , the acting was", "overall , the ending felt"]
RESPONSES = [
    [" brilliant .", " fine .", " long .", " dull .", " awful ."],
    [" superb .", " enjoyable .", " plain .", " weak .", " terrible ."],
    [" wonderful and funny .", " lovely .", " ordinary .", " so boring .", " disappointing ."],
]
PI_REF = [
    [0.10, 0.30, 0.25, 0.25, 0.10],
    [0.05, 0.20, 0.40, 0.25, 0.10],
    [0.15, 0.15, 0.30, 0.25, 0.15],
]


@dataclass
class Bandit:
    """A bandit world: for prompt x = ``prompts[i]`` the responses are ``responses[i]``."""

    prompts: list[str]  # x, P of them
    responses: list[list[str]]  # y, K per prompt
    pi_ref: torch.Tensor  # π_ref(y|x), Shape: (P, K), rows sum to 1
    rewards: torch.Tensor  # r(x, y), Shape: (P, K)


def default_bandit() -> Bandit:
    """The course's bandit: 3 review openings × 5 endings; r is the VADER score of the ending (as in the LM world)."""
    from dpo_teach.reward import ground_truth_reward

    rewards = torch.stack([torch.from_numpy(ground_truth_reward(row)) for row in RESPONSES]).double()
    return Bandit(PROMPTS, RESPONSES, torch.tensor(PI_REF, dtype=torch.float64), rewards)


# --- notebook 01: the KL-regularized objective ------------------------------------------------------------------

def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_y p(y)·log(p(y)/q(y)) over the last dimension, with 0·log 0 = 0. Shape: (..., K) → (...).

    Only an exact 0 in ``p`` counts as 0: a negative entry (log-probabilities passed for probabilities) or a nan gives
    nan, not a KL.
    """
    terms = torch.where(p == 0, torch.zeros_like(p), p * (torch.log(p) - torch.log(q)))
    return terms.sum(-1)


def objective(pi: torch.Tensor, pi_ref: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """J(π) = E_{y∼π}[r(x, y)] − β·KL(π‖π_ref), Eq. 3 in Rafailov et al. 2023 (for one x). Shape: (..., K) → (...)."""
    return (pi * r).sum(-1) - beta * kl_divergence(pi, pi_ref)


def optimal_policy(pi_ref: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """π*(y|x) = π_ref(y|x)·exp(r(x, y)/β) / Z(x), Eq. 4 in Rafailov et al. 2023.

    Computed as a softmax of log π_ref + r/β, which does not overflow for a tiny β, as long as r/β itself is finite.
    """
    check_beta(beta)
    return torch.softmax(torch.log(pi_ref) + r / beta, dim=-1)


def log_partition(pi_ref: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """log Z(x) = log Σ_y π_ref(y|x)·exp(r(x, y)/β). Shape: (..., K) → (...)."""
    check_beta(beta)
    return torch.logsumexp(torch.log(pi_ref) + r / beta, dim=-1)


# --- notebooks 02–04: preferences in the bandit (the formulas themselves live in reward.py and losses.py) -----------

def sample_preferences(pi_ref: torch.Tensor, rewards: torch.Tensor, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Draw ``n`` prompts uniformly, two responses from π_ref for each, and a Bradley–Terry label on ``rewards``.

    Pairs with two identical responses carry no preference and are dropped: a share Σ_y π_ref(y|x)² of each prompt's
    draws, about a quarter with :data:`PI_REF` (10,000 draws give about 7,600 pairs).

    Returns:
        ``prompt``, ``chosen``, ``rejected``: index tensors, each Shape: (N,) with N ≤ n.
    """
    g = torch.Generator().manual_seed(seed)
    P = pi_ref.shape[0]
    x = torch.randint(P, (n,), generator=g)  # (n,)
    a = torch.multinomial(pi_ref[x], 1, replacement=True, generator=g).squeeze(1)  # (n,)
    b = torch.multinomial(pi_ref[x], 1, replacement=True, generator=g).squeeze(1)  # (n,)
    a_wins = torch.rand(n, generator=g, dtype=torch.float64) < bt_probability(rewards[x, a], rewards[x, b])
    keep = a != b
    chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    return {"prompt": x[keep], "chosen": chosen[keep], "rejected": rejected[keep]}


def pair_counts(prefs: dict[str, torch.Tensor], P: int, K: int) -> torch.Tensor:
    """n[x, w, l] = how often y_w ≻ y_l was labelled for prompt x. Shape: (P, K, K)."""
    _check_ids(prefs, P, K)  # an id past its range would alias another cell of the flat index below
    counts = torch.zeros(P * K * K, dtype=torch.float64)
    flat = (prefs["prompt"] * K + prefs["chosen"]) * K + prefs["rejected"]
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    return counts.view(P, K, K)


def _check_ids(prefs: dict[str, torch.Tensor], P: int, K: int) -> None:
    """Raise ValueError unless every prompt id of ``prefs`` is in [0, P) and every response id in [0, K)."""
    for key, n, name in (("prompt", P, "P"), ("chosen", K, "K"), ("rejected", K, "K")):
        ids = prefs[key]
        if len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < n:
            raise ValueError(f"prefs[{key!r}] holds ids {int(ids.min())} to {int(ids.max())}, but {name}={n} leaves "
                             f"room for 0 to {n - 1}: pass P, the number of prompts, then K, the responses per prompt "
                             "(pi_ref.shape), in that order")


def center(r: torch.Tensor) -> torch.Tensor:
    """Subtract each prompt's mean reward: the per-prompt shift that preferences cannot identify. Shape kept."""
    return r - r.mean(-1, keepdim=True)


def fit_reward_mle(counts: torch.Tensor, init: torch.Tensor | None = None, max_iter: int = 500) -> torch.Tensor:
    """Maximum-likelihood Bradley–Terry rewards from pair counts (stage 1 of RLHF). Shape: (P, K, K) → (P, K).

    Minimizes Σ n[x, w, l]·bradley_terry_loss(r̂[x, w], r̂[x, l]) / Σ n with L-BFGS from ``init`` (default 0). The
    loss only sees differences within a prompt, so its gradient sums to 0 over each prompt's responses: every
    prompt's mean reward stays where ``init`` put it. Compare estimates after :func:`center`.
    """
    P, K, _ = counts.shape
    r_hat = (torch.zeros(P, K, dtype=torch.float64) if init is None else init.clone().double()).requires_grad_(True)
    total = counts.sum()
    optimizer = torch.optim.LBFGS([r_hat], max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (counts * bradley_terry_loss(r_hat[:, :, None], r_hat[:, None, :])).sum() / total  # (P, K, K) pairs
        loss.backward()
        return loss

    optimizer.step(closure)
    return r_hat.detach()


def bandit_dpo_loss(logits: torch.Tensor, counts: torch.Tensor, pi_ref: torch.Tensor | None, beta: float,
                    reference: str = "fixed") -> torch.Tensor:
    """The mean DPO loss (Eq. 7) of the policy softmax(``logits``) over the labelled pairs in ``counts``.

    ``reference`` says what plays π_ref: ``"fixed"`` the given ``pi_ref`` (DPO), ``"moving"`` a detached copy of
    the current policy (the reference re-set to π_θ every step), ``"none"`` nothing (reference-free: log π_ref = 0).
    """
    logp = torch.log_softmax(logits, dim=-1)  # (P, K)
    if reference == "fixed":
        ref = torch.log(pi_ref)
    elif reference == "moving":
        ref = logp.detach()
    elif reference == "none":
        ref = torch.zeros_like(logp)
    else:
        raise ValueError(f"reference must be 'fixed', 'moving' or 'none', got {reference!r}")
    r_hat = implicit_reward(logp, ref, beta)  # (P, K): β·log π_θ/π_ref
    losses = bradley_terry_loss(r_hat[:, :, None], r_hat[:, None, :])  # (P, K, K): pair (y_w, y_l) = (k, j)
    return (counts * losses).sum() / counts.sum()


def fit_dpo(counts: torch.Tensor, pi_ref: torch.Tensor, beta: float, max_iter: int = 500) -> torch.Tensor:
    """Minimize the DPO loss over policy logits with L-BFGS, starting from π_ref. Returns π_θ, Shape: (P, K)."""
    check_beta(beta)
    logits = torch.log(pi_ref).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([logits], max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = bandit_dpo_loss(logits, counts, pi_ref, beta)
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(logits.detach(), dim=-1)


def train_policy(counts: torch.Tensor, pi_ref: torch.Tensor, beta: float, reference: str = "fixed",
                 steps: int = 2000, lr: float = 1.0, log_every: int = 20) -> tuple[torch.Tensor, list[dict]]:
    """Plain gradient descent on the DPO loss from π_θ = π_ref, logging the loss and KL(π_θ‖π_ref) (the original).

    Returns ``(pi, history)`` with ``pi`` Shape: (P, K) and one ``{"step", "loss", "kl"}`` dict per ``log_every``
    steps, where ``kl`` is the mean over prompts of KL(π_θ‖π_ref) to the *original* reference.
    """
    check_beta(beta)
    if log_every < 1:  # else a ZeroDivisionError from the loop's modulo, or nothing logged
        raise ValueError(f"log_every must be a positive number of steps, got {log_every}")
    logits = torch.log(pi_ref).clone().requires_grad_(True)
    history = []
    for step in range(steps + 1):
        loss = bandit_dpo_loss(logits, counts, pi_ref, beta, reference)
        if step % log_every == 0 or step == steps:
            pi = torch.softmax(logits.detach(), dim=-1)
            history.append({"step": step, "loss": loss.item(), "kl": kl_divergence(pi, pi_ref).mean().item()})
        if step == steps:
            break
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            logits -= lr * grad
    return torch.softmax(logits.detach(), dim=-1), history
