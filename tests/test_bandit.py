"""The bandit world's reference functions (notebooks 01–04) against brute-force sums and known values."""

import math

import pytest
import torch

from dpo_teach import bandit, losses
from dpo_teach.reward import bt_probability


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: thread hand-offs cost more than the arithmetic, many times over on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world():
    return bandit.default_bandit()


def random_policies(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=-1)


def test_default_bandit_is_consistent(world):
    P, K = world.pi_ref.shape
    assert (P, K) == (len(world.prompts), len(world.responses[0]))
    assert torch.allclose(world.pi_ref.sum(-1), torch.ones(P, dtype=torch.float64))
    assert world.rewards.dtype == torch.float64 and float(world.rewards.abs().max()) <= 1
    assert float(world.rewards[0, 0]) > 0 > float(world.rewards[0, -1]), "first ending positive, last negative"


def test_kl_matches_a_python_loop_and_handles_zeros():
    p, q = random_policies(4, 6, 0), random_policies(4, 6, 1)
    loop = torch.tensor([sum(a * math.log(a / b) for a, b in zip(pr.tolist(), qr.tolist())) for pr, qr in zip(p, q)],
                        dtype=torch.float64)
    assert torch.allclose(bandit.kl_divergence(p, q), loop, atol=1e-12)
    p0 = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    assert abs(float(bandit.kl_divergence(p0, torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64)))
               - (0.5 * math.log(2) + 0.5 * math.log(2 / 3))) < 1e-12, "0·log 0 = 0, also where q = 0"


def test_optimum_identity_and_maximality(world):
    beta = 0.3
    star = bandit.optimal_policy(world.pi_ref, world.rewards, beta)
    log_z = bandit.log_partition(world.pi_ref, world.rewards, beta)
    pis = random_policies(500, world.pi_ref.shape[1], 2)  # (500, K), compared on every prompt
    for x in range(world.pi_ref.shape[0]):
        j = bandit.objective(pis, world.pi_ref[x], world.rewards[x], beta)
        identity = -beta * bandit.kl_divergence(pis, star[x]) + beta * log_z[x]
        assert torch.allclose(j, identity, atol=1e-12)
        assert bool((j <= beta * log_z[x] + 1e-12).all())


def test_optimal_policy_limits_and_stability(world):
    tiny = bandit.optimal_policy(world.pi_ref, world.rewards, 1e-4)
    assert not bool(torch.isnan(tiny).any())
    assert torch.equal(tiny.argmax(-1), world.rewards.argmax(-1))
    assert torch.allclose(bandit.optimal_policy(world.pi_ref, world.rewards, 1e5), world.pi_ref, atol=1e-4)
    shifted = bandit.optimal_policy(world.pi_ref, world.rewards + torch.tensor([[5.0], [-3.0], [100.0]]), 0.5)
    assert torch.allclose(shifted, bandit.optimal_policy(world.pi_ref, world.rewards, 0.5), atol=1e-12)


def test_bt_functions_are_stable_and_consistent():
    a, b = torch.tensor([1.0, 800.0, -800.0]), torch.tensor([0.0, 0.0, 0.0])
    p = bt_probability(a, b)
    assert abs(float(p[0]) - 1 / (1 + math.exp(-1))) < 1e-6 and not bool(torch.isnan(p).any())
    loss = losses.bradley_terry_loss(a, b)
    assert abs(float(loss[0]) + math.log(float(p[0]))) < 1e-6, "−log σ(1)"
    assert float(loss[1]) < 1e-6 and abs(float(loss[2]) - 800.0) < 1e-3, "finite where σ rounds to 0"


def test_dpo_pieces_agree_with_the_package_loss():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-10 * torch.rand(8, generator=g, dtype=torch.float64) for _ in range(4))
    loss, chosen, rejected = losses.dpo_loss(pc, pr, rc, rr, beta=0.2)
    assert torch.allclose(chosen, losses.implicit_reward(pc, rc, 0.2))
    assert torch.allclose(rejected, losses.implicit_reward(pr, rr, 0.2))
    assert torch.allclose(torch.exp(-loss), losses.preference_probability(pc - rc, pr - rr, 0.2))


def test_sampled_labels_follow_bradley_terry(world):
    prefs = bandit.sample_preferences(world.pi_ref, world.rewards, 200_000, seed=0)
    assert bool((prefs["chosen"] != prefs["rejected"]).all())
    counts = bandit.pair_counts(prefs, *world.pi_ref.shape)
    assert float(counts.sum()) == len(prefs["prompt"])
    x, a, b = 1, 1, 3
    won = float(counts[x, a, b] / (counts[x, a, b] + counts[x, b, a]))
    expected = float(bt_probability(world.rewards[x, a], world.rewards[x, b]))
    n = float(counts[x, a, b] + counts[x, b, a])
    assert abs(won - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_dpo_equals_two_stage_rlhf_and_approaches_the_optimum(world):
    counts = bandit.pair_counts(bandit.sample_preferences(world.pi_ref, world.rewards, 300_000, seed=1),
                                *world.pi_ref.shape)
    r_hat = bandit.fit_reward_mle(counts)
    assert float((bandit.center(r_hat) - bandit.center(world.rewards)).abs().max()) < 0.08
    pi_dpo = bandit.fit_dpo(counts, world.pi_ref, 0.5)
    assert float((pi_dpo - bandit.optimal_policy(world.pi_ref, r_hat, 0.5)).abs().max()) < 1e-5
    assert float((pi_dpo - bandit.optimal_policy(world.pi_ref, world.rewards, 0.5)).abs().max()) < 0.03
    shifted = bandit.fit_reward_mle(counts, init=torch.full_like(world.rewards, 7.0))
    assert torch.allclose(shifted - r_hat, torch.full_like(r_hat, 7.0), atol=1e-5), "the mean stays where it starts"


def test_train_policy_reference_modes(world):
    counts = bandit.pair_counts(bandit.sample_preferences(world.pi_ref, world.rewards, 50_000, seed=2),
                                *world.pi_ref.shape)
    runs = {m: bandit.train_policy(counts, world.pi_ref, 0.5, reference=m, steps=200, lr=2.0, log_every=50)
            for m in ["fixed", "moving", "none"]}
    assert abs(runs["fixed"][1][0]["loss"] - math.log(2)) < 1e-12
    assert all(abs(h["loss"] - math.log(2)) < 1e-12 for h in runs["moving"][1])
    kls = [h["kl"] for h in runs["moving"][1]]
    assert kls == sorted(kls) and kls[-1] > 2 * runs["fixed"][1][-1]["kl"]
    with pytest.raises(ValueError, match="reference must be"):
        bandit.bandit_dpo_loss(torch.log(world.pi_ref), counts, world.pi_ref, 0.5, reference="other")
