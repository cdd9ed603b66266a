"""PPO: GAE, the clipped objectives and the KL penalty on hand-computed inputs; one update on a real rollout."""

import copy
import math
import random

import pytest
import torch

from dpo_teach import grammar
from dpo_teach.compute import Compute
from dpo_teach.ppo import (
    PPOConfig,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalized_rewards,
    make_rollout,
    masked_mean,
    ppo_update,
    train_ppo,
    whiten,
)
from dpo_teach.reward import ground_truth_reward
from dpo_teach.reward_model import ScalarModel
from dpo_teach.rollout import collate_rollout, token_logprobs

TRL_NAMES = ["objective/kl", "objective/scores", "objective/entropy", "objective/non_score_reward",
             "objective/rlhf_reward", "policy/clipfrac", "policy/approxkl", "loss/policy", "loss/value",
             "val/clipfrac"]


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=1e-6)


def gt_reward(prompts, completions):
    return ground_truth_reward(completions)


def test_gae_matches_a_hand_computed_example():
    # row 0: γ = 1, λ = 0.5, full length. δ = [0.1, 0.1, 0.3]; A_2 = 0.3, A_1 = 0.1 + 0.5·0.3, A_0 = 0.1 + 0.5·0.25
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 0.5)
    close(adv, [[0.225, 0.25, 0.3]])
    close(ret, [[0.725, 0.85, 1.0]])
    # row 1: γ = 0.9, λ = 1, two tokens then padding; the padded value (9.9) must not leak into the last token
    adv, ret = gae(torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[0.1, 0.2, 9.9]]),
                   torch.tensor([[1.0, 1.0, 0.0]]), 0.9, 1.0)
    close(adv, [[0.08 + 0.9 * 1.8, 1.8, 0.0]])
    close(ret, [[1.8, 2.0, 0.0]])


def test_gae_with_lambda_one_gives_reward_to_go_whatever_the_values():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in (6, 4, 1, 3)])
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = (rewards * mask).flip(-1).cumsum(-1).flip(-1) * mask
    assert torch.allclose(returns, to_go, atol=1e-5)


def test_clipped_policy_loss_on_known_ratios():
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding: ratio 3 and A = 7 must not count
    loss, stats = clipped_policy_loss(logps, old, advantages, mask, cliprange=0.2)
    # token 0: max(−1.5, −1.2) = −1.2 (clipped); token 1: max(−0.5, −0.8) = −0.5; token 2: max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert stats["clipfrac"] == pytest.approx(1 / 3)
    assert stats["ratio"] == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    loss.backward()
    # d/dlogp of −A·ρ is −A·ρ; the clipped token and the padding get no gradient
    close(logps.grad, [[0.0, -0.5 / 3, 1.1 / 3, 0.0]])


def test_clipped_value_loss_on_known_values():
    values = torch.tensor([[1.0, 0.1, 5.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    returns = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: max((1 − 1)², (0.2 − 1)²) = 0.64 (clipped, no gradient); token 1: 0.1² inside the clip range
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert clipfrac == pytest.approx(0.5)
    loss.backward()
    close(values.grad, [[0.0, 0.5 * 2 * 0.1 / 2, 0.0]])


def test_kl_penalty_per_token_and_score_at_the_last_token():
    scores = torch.tensor([1.0, -2.0])
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, -9.0]])
    ref_logps = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(scores, logps, ref_logps, mask, kl_coef=0.1)
    close(kl, [[0.5, -1.0, 0.0], [1.0, -1.0, 0.0]])
    close(rewards, [[-0.05, 0.1, 1.0], [-0.1, 0.1 - 2.0, 0.0]])
    # summed over a completion: r(x, y) − β·log π/π_ref(y|x), the objective whose optimum DPO solves in closed form
    assert rewards.sum(-1).tolist() == pytest.approx((scores - 0.1 * kl.sum(-1)).tolist())


def test_whiten_and_masked_mean_ignore_padding():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.5)
    w = whiten(values, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(w ** 2, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert w[:, 2].tolist() == [0.0, 0.0]


def test_token_logprobs_sum_to_the_sequence_logprob_of_the_core_engine(world):
    from dpo_teach.logprobs import pad_rows, sequence_logprobs

    reference, tokenizer = world
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("the film was", "honestly , the cast is")]
    completions = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for c in (" great .", " very dull and i hated it .")]
    batch = collate_rollout(prompts, completions, tokenizer.pad_token_id)  # prompts left-padded
    with torch.no_grad():
        logps, entropy = token_logprobs(reference, batch, with_entropy=True)
        expected = sequence_logprobs(reference, **pad_rows(prompts, completions, tokenizer.pad_token_id))
    assert torch.allclose(logps.sum(-1), expected, atol=1e-4)
    assert (entropy[batch.response_mask == 0] == 0).all() and (entropy[batch.response_mask == 1] > 0).all()


@pytest.fixture(scope="module")
def rollout(world):
    reference, tokenizer = world
    torch.manual_seed(0)
    policy, value = copy.deepcopy(reference), ScalarModel.from_causal_lm(reference, head_std=0.0)
    prompts = random.Random(0).choices(grammar.all_prompts(), k=64)
    cfg = PPOConfig(kl_coef=0.05, rollout_size=64, minibatch_size=16, ppo_epochs=2, lr=1e-3)
    r = make_rollout(policy, reference, value, tokenizer, gt_reward, prompts, cfg, seed=0, compute=Compute())
    return policy, value, cfg, r


def test_one_ppo_update_improves_the_surrogate_on_a_fixed_batch(world, rollout):
    policy, value, cfg, r = rollout
    policy, value = copy.deepcopy(policy), copy.deepcopy(value)
    mask = r.batch.response_mask

    def losses():
        with torch.no_grad():
            logps, _ = token_logprobs(policy, r.batch)
            values = value(r.batch.input_ids, r.batch.attention_mask)[:, r.batch.prompt_len - 1:-1]
            return (clipped_policy_loss(logps, r.logps, r.advantages, mask, cfg.cliprange)[0].item(),
                    clipped_value_loss(values, r.values, r.returns, mask, cfg.cliprange_value)[0].item())

    pg_before, vf_before = losses()
    assert pg_before == pytest.approx(0.0, abs=1e-4)  # ρ = 1 and whitened advantages have mean 0
    optimizer = torch.optim.AdamW(list(policy.parameters()) + list(value.parameters()), lr=cfg.lr)
    compute = Compute()
    stats = ppo_update(policy, value, optimizer, r, cfg, torch.Generator().manual_seed(0), compute)
    pg_after, vf_after = losses()
    assert pg_after < pg_before - 0.01, (pg_before, pg_after)
    assert vf_after < vf_before, (vf_before, vf_after)
    assert stats["policy/approxkl"] > 0
    # 2 epochs × 64 completions through π_θ and V, forward and backward
    assert compute.forward == compute.backward == 2 * 2 * 64


def test_train_ppo_raises_the_reward_logs_trl_names_and_is_reproducible(world):
    reference, tokenizer = world

    def run(steps=6):
        torch.manual_seed(0)
        policy, value = copy.deepcopy(reference), ScalarModel.from_causal_lm(reference, head_std=0.0)
        compute = Compute()
        cfg = PPOConfig(kl_coef=0.05, steps=steps, rollout_size=64, minibatch_size=32, ppo_epochs=2, lr=1e-3, seed=3)
        history = train_ppo(policy, reference, value, tokenizer, gt_reward, cfg, compute=compute)
        return history, compute, policy

    before = {k: v.clone() for k, v in reference.state_dict().items()}
    history, compute, policy = run()
    for name in TRL_NAMES:
        assert all(math.isfinite(h[name]) for h in history), name
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=0.05)  # the first rollout comes from π_ref itself
    scores = [h["objective/scores"] for h in history]
    assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.1, scores
    assert [h["episode"] for h in history] == [64 * (i + 1) for i in range(6)]
    assert compute.completions == 6 * 64 and compute.ground_truth_calls == 0  # gt_reward does not count itself
    assert compute.backward == 6 * 2 * 2 * 64  # steps × ppo_epochs × (π_θ and V) × completions
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())  # π_ref stays fixed
    again, _, _ = run(steps=2)  # same seed, same numbers (the schedule depends on steps, the first rollout not)
    assert again[0] == history[0]
