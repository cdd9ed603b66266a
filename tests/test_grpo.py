"""GRPO and RLOO: advantages, the clipped objective and the KL term on hand-computed inputs; training on the toy world;
and mutants of the key lines, each of which the hand-value checks catch.

The hand checks are plain functions (``check_*``) so that the mutant test can run all of them against each mutant.
"""

import copy
import inspect
import math
import textwrap

import pytest
import torch

from dpo_teach import grpo, ppo, rloo
from dpo_teach.compute import Compute
from dpo_teach.grpo import GRPOConfig, train_grpo
from dpo_teach.reward import ground_truth_reward
from dpo_teach.rloo import train_rloo


def close(actual: torch.Tensor, expected, atol=1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=atol)


def gt_reward(prompts, completions):
    return ground_truth_reward(completions)


# ---------------------------------------------------------------------------------------- hand-computed values


def check_group_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])  # two groups of K = 3
    # group 0: mean 2, sample std 1 → (−1, 0, 1)/(1 + 1e-4); group 1: all equal → 0, not 0/0
    close(grpo.group_advantages(scores, 3), [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    close(grpo.group_advantages(scores, 3, scale=False), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # pairs (0, 4) and (7, 9): deviations ±2 and ±1 over sample stds 2√2 and √2 → ±1/√2 both, whatever the scale
    close(grpo.group_advantages(torch.tensor([0.0, 4.0, 7.0, 9.0]), 2), [-0.70708, 0.70708, -0.70706, 0.70706])


def check_k3_kl():
    logps, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-2.0, -2.0, 0.0])
    # log π_ref − log π_θ = (−1, 0, 0.5): e^d − d − 1
    close(grpo.k3_kl(logps, ref), [math.exp(-1) + 1 - 1, 0.0, math.exp(0.5) - 0.5 - 1])
    assert (grpo.k3_kl(torch.randn(50), torch.randn(50)) >= 0).all()


def check_clipped_objective_and_kl():
    old = torch.zeros(2, 3)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1], [0.7, 1.0, 9.0]]))
    ref = torch.log(torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last token of row 1 is padding
    adv = torch.tensor([1.0, -1.0])  # one advantage per completion, at every token
    # row 0 (A = 1): max(−ρ, −clip ρ) = (−1.2, −0.5, −1.1); row 1 (A = −1): max(ρ, clip ρ) = (0.8, 1.0)
    surrogate = [[-1.2, -0.5, -1.1], [0.8, 1.0, 0.0]]
    k3 = [[1 / r - math.log(1 / r) - 1 for r in (1.5, 0.5, 1.1)], [1 / 0.7 + math.log(0.7) - 1, 2 - math.log(2) - 1, 0]]
    for beta in (0.0, 0.5):
        per_token = [[s + beta * k for s, k in zip(srow, krow)] for srow, krow in zip(surrogate, k3)]
        seq = (sum(per_token[0]) / 3 + sum(per_token[1][:2]) / 2) / 2
        tok = (sum(per_token[0]) + sum(per_token[1][:2])) / 5
        loss, stats = grpo.grpo_loss(logps, old, ref, adv, mask, beta=beta, cliprange=0.2, loss_norm="sequence")
        assert loss.item() == pytest.approx(seq, abs=1e-5), (beta, "sequence")
        loss, _ = grpo.grpo_loss(logps, old, ref, adv, mask, beta=beta, cliprange=0.2, loss_norm="token")
        assert loss.item() == pytest.approx(tok, abs=1e-5), (beta, "token")
    assert stats["clipfrac"] == pytest.approx(2 / 5)  # 1.5 (A > 0) and 0.7 (A < 0) are clipped
    # β = 0 needs no reference at all
    loss0, _ = grpo.grpo_loss(logps, old, None, adv, mask, beta=0.0)
    assert loss0.item() == pytest.approx((sum(surrogate[0]) / 3 + 0.9) / 2, abs=1e-5)


def check_kl_pulls_towards_the_reference():
    """The gradient of β·k3 moves log π_θ towards log π_ref (with A = 0 only the KL term acts)."""
    logps = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0]])
    loss, _ = grpo.grpo_loss(logps, logps.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=1.0)
    loss.backward()
    # d/dlogp (e^{ref − logp} − (ref − logp) − 1) = 1 − e^{ref − logp}; a descent step moves logp by −grad
    close(logps.grad, [[(1 - math.exp(-1)) / 2, (1 - math.exp(1)) / 2]])
    assert logps.grad[0, 0] > 0 > logps.grad[0, 1]  # above the reference: pushed down; below: pushed up


def check_k3_gradient_is_that_of_the_reverse_kl():
    """Averaged over tokens drawn from π_θ, β·k3's gradient is ∇KL(π_ref‖π_θ), not ∇KL(π_θ‖π_ref) (its value's)."""
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.0], requires_grad=True)  # π_θ over 5 tokens
    ref_logps = torch.log_softmax(torch.tensor([0.2, 0.4, -0.3, 0.1, 0.5]), -1)
    logps = torch.log_softmax(logits, -1)
    pi = logps.exp()
    # the exact expectation over the sampled token: each token's k3 weighted by its (non-differentiated) probability
    (expected,) = torch.autograd.grad((pi.detach() * grpo.k3_kl(logps, ref_logps)).sum(), logits, retain_graph=True)
    (reverse,) = torch.autograd.grad((ref_logps.exp() * (ref_logps - logps)).sum(), logits, retain_graph=True)
    (forward,) = torch.autograd.grad((pi * (logps - ref_logps)).sum(), logits)
    close(expected, reverse.tolist())
    assert (expected - forward).abs().max() > 0.05  # the two directions' gradients differ here


def check_rloo_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])
    # baselines: (2+3)/2, (1+3)/2, (1+2)/2 | (0+0)/2, (6+0)/2, (6+0)/2
    close(rloo.rloo_advantages(scores, 3), [-1.5, 0.0, 1.5, 6.0, -3.0, -3.0])
    # = K/(K−1) · (r − group mean)
    close(rloo.rloo_advantages(scores, 3), (1.5 * grpo.group_advantages(scores, 3, scale=False)).tolist())


def check_rloo_kl_in_the_reward_and_the_sequence_loss():
    cfg = GRPOConfig(beta=0.5, group_size=2, scale_rewards=False)
    scores = torch.tensor([1.0, 0.0])
    logps, ref = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]]), torch.tensor([[-2.0, -1.0], [-2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # sequence KLs: 1 and 0 → penalised rewards 0.5 and 0 → LOO advantages 0.5, −0.5
    close(rloo.rloo_advantages_with_kl(scores, logps, ref, mask, cfg), [0.5, -0.5])
    seq, old = torch.log(torch.tensor([1.5, 1.1, 0.5])), torch.zeros(3)
    loss, stats = rloo.rloo_loss(seq, old, torch.tensor([2.0, -1.0, -1.0]), cliprange=0.2)
    # max(−2·1.5, −2·1.2) = −2.4; max(1.1, 1.1) = 1.1; max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-2.4 + 1.1 + 0.8) / 3)
    assert stats["clipfrac"] == pytest.approx(2 / 3)


CHECKS = [check_group_advantages, check_k3_kl, check_k3_gradient_is_that_of_the_reverse_kl,
          check_clipped_objective_and_kl, check_kl_pulls_towards_the_reference, check_rloo_advantages,
          check_rloo_kl_in_the_reward_and_the_sequence_loss]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_hand_computed_values(check):
    check()


def test_one_completion_per_prompt_is_refused_not_turned_into_nan():
    with pytest.raises(ValueError, match="group_size must be at least 2, got 1"):
        grpo.group_advantages(torch.tensor([1.0, 2.0, 3.0]), 1)
    assert torch.isfinite(grpo.group_advantages(torch.tensor([1.0, 2.0, 3.0, 3.0]), 2)).all()


def test_bad_loss_norm_is_named():
    with pytest.raises(ValueError, match="loss_norm"):
        grpo.aggregate(torch.ones(1, 2), torch.ones(1, 2), "batch")


# ---------------------------------------------------------------------------------------------------- mutants

# (module, function, the key line as written, its mutant): each mutant must fail at least one hand check
MUTANTS = {
    "advantage not centred": (grpo, "group_advantages", "advantages = groups - groups.mean(dim=1, keepdim=True)",
                              "advantages = groups"),
    "advantage not scaled": (grpo, "group_advantages",
                             "advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)", "pass"),
    "KL sign flipped": (grpo, "grpo_loss", "per_token = per_token + beta * kl", "per_token = per_token - beta * kl"),
    "KL direction swapped": (grpo, "k3_kl", "log_ratio = ref_logps - logps", "log_ratio = logps - ref_logps"),
    "clip disabled": (ppo, "clipped_surrogate", "ratio.clamp(1 - cliprange, 1 + cliprange)", "ratio"),
    "token mean for sequence": (grpo, "aggregate", "((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()",
                                "masked_mean(per_token, mask)"),
    "baseline includes itself": (rloo, "rloo_advantages",
                                 "(groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)",
                                 "groups.mean(dim=1, keepdim=True)"),
    "RLOO KL sign flipped": (rloo, "rloo_advantages_with_kl", "scores - config.beta", "scores + config.beta"),
}


def mutate(module, name: str, line: str, mutant: str):
    source = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert source.count(line) == 1, f"the key line of {name} changed; update MUTANTS: {line!r}"
    namespace = dict(vars(module))
    exec(compile(source.replace(line, mutant), f"<mutant of {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


@pytest.mark.parametrize("label", sorted(MUTANTS))
def test_every_mutant_of_a_key_line_fails_a_hand_check(label, monkeypatch):
    module, name, line, mutant = MUTANTS[label]
    original, fn = getattr(module, name), mutate(module, name, line, mutant)
    for mod in (ppo, grpo, rloo):  # the function is looked up in each module that imported it
        if getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, fn)
    failed = []
    for check in CHECKS:
        try:
            check()
        except AssertionError:
            failed.append(check.__name__)
    assert failed, f"mutant {label!r} passes every hand check"


# ------------------------------------------------------------------------------------------- on the toy world


def _run(world, train, steps=6, **kw):
    reference, tokenizer = world
    policy, compute = copy.deepcopy(reference), Compute()
    cfg = GRPOConfig(steps=steps, prompts_per_step=8, group_size=4, minibatch_size=16, lr=1e-3, seed=3, **kw)
    history = train(policy, reference, tokenizer, gt_reward, cfg, compute=compute)
    return history, compute, policy


@pytest.mark.parametrize("train", [train_grpo, train_rloo], ids=["grpo", "rloo"])
def test_training_raises_the_reward_and_is_reproducible(world, train):
    reference, _ = world
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    history, compute, _ = _run(world, train, beta=0.04)
    scores = [h["objective/scores"] for h in history]
    assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.1, scores
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # the first batch comes from π_ref itself
    assert [h["episode"] for h in history] == [32 * (i + 1) for i in range(6)]
    # per iteration: 32 sampled; π_old and π_ref on them; epochs × 32 through π_θ with backward
    assert compute.completions == 6 * 32 and compute.backward == 6 * 2 * 32
    assert compute.forward == 6 * (3 * 32 + 2 * 32) and compute.ground_truth_calls == 0
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())  # π_ref stays fixed
    again, _, _ = _run(world, train, steps=2, beta=0.04)
    assert again[0] == history[0]


class NoReference(torch.nn.Module):
    """A reference that must not be run (GRPO with β = 0 needs none)."""

    def forward(self, *a, **k):
        raise AssertionError("β = 0: the reference must not be run")

    @property
    def transformer(self):
        raise AssertionError("β = 0: the reference must not be run")


def test_grpo_with_beta_zero_never_runs_the_reference(world):
    reference, tokenizer = world
    policy, compute = copy.deepcopy(reference), Compute()
    cfg = GRPOConfig(beta=0.0, steps=2, prompts_per_step=4, group_size=4, minibatch_size=16, seed=1)
    history = train_grpo(policy, NoReference(), tokenizer, gt_reward, cfg, compute=compute)
    assert len(history) == 2 and compute.forward == 2 * (2 * 16 + 2 * 16)  # generate and π_old; no π_ref


def test_loss_norm_changes_the_update_on_unequal_lengths(world):
    """Same samples, same seed: per-sequence and per-token averaging give different policies."""
    a = _run(world, train_grpo, steps=2, loss_norm="sequence")[2]
    b = _run(world, train_grpo, steps=2, loss_norm="token")[2]
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="loss_norm"):
        _run(world, train_grpo, steps=1, loss_norm="batch")
