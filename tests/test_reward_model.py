"""The reward model: the Bradley–Terry loss on known values, scores at the last token, training on the pairs."""

import math

import pytest
import torch

from dpo_teach.compute import Compute
from dpo_teach.data import split_pairs
from dpo_teach.losses import bradley_terry_loss
from dpo_teach.reward import bt_probability
from dpo_teach.reward_model import (
    LearnedReward,
    RewardConfig,
    ScalarModel,
    last_token_scores,
    pairwise_accuracy,
    score_completions,
    train_reward_model,
)


def test_bradley_terry_loss_on_known_values():
    chosen = torch.tensor([0.0, 2.0, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 1.0])
    losses = bradley_terry_loss(chosen, rejected)
    assert losses.shape == (3,)  # per pair; the caller takes the mean
    assert losses[0].item() == pytest.approx(math.log(2))  # no preference learned yet: ln 2
    assert losses[1].item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert losses[2].item() == pytest.approx(-math.log(bt_probability(-1.0, 1.0, 1.0)))  # −log P(y_w ≻ y_l), τ = 1
    losses.sum().backward()
    assert chosen.grad.tolist() == pytest.approx([-0.5, -(1 - 1 / (1 + math.exp(-2))), -(1 - 1 / (1 + math.exp(2)))])


def test_loss_depends_only_on_the_reward_difference():
    # Bradley–Terry identifies r only up to a shift: adding a constant to both rewards changes nothing
    chosen, rejected = torch.randn(5), torch.randn(5)
    assert torch.allclose(bradley_terry_loss(chosen, rejected), bradley_terry_loss(chosen + 3.0, rejected + 3.0))


def test_last_token_scores_with_either_padding():
    values = torch.arange(12.0).reshape(2, 6)
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    left = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    assert last_token_scores(values, right).tolist() == [2.0, 10.0]
    assert last_token_scores(values, left).tolist() == [5.0, 11.0]


def test_scalar_model_copies_the_body_and_leaves_the_lm_alone(world):
    reference, _ = world
    rm = ScalarModel.from_causal_lm(reference)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(rm.backbone.parameters(), reference.parameters()))
    body = reference.transformer.state_dict()  # a copy of π_ref's body (its weights), not a fresh network
    copied = rm.backbone.state_dict()
    assert copied.keys() == body.keys() and all(torch.equal(copied[k], body[k]) for k in body)
    zero = ScalarModel.from_causal_lm(reference, head_std=0.0)
    ids = torch.tensor([[5, 6, 7]])
    assert zero(ids, torch.ones_like(ids)).abs().max().item() == 0.0  # a value model that starts at 0


@pytest.fixture(scope="module")
def trained(world, pairs):
    reference, tokenizer = world
    train, heldout = split_pairs(pairs, 0.2, seed=0)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    rm, history = train_reward_model(reference, tokenizer, train, RewardConfig(epochs=4, batch_size=16, lr=2e-3))
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())  # π_ref untouched
    return rm, history, train, heldout


def test_training_lowers_the_bt_loss_and_orders_held_out_pairs(world, trained):
    _, tokenizer = world
    rm, history, train, heldout = trained
    n = len(history) // 4  # steps per epoch
    first = sum(h["loss"] for h in history[:n]) / n
    last = sum(h["loss"] for h in history[-n:]) / n
    assert first == pytest.approx(math.log(2), abs=0.1)  # an untrained head is nearly indifferent: ln 2
    assert last < first - 0.2, (first, last)
    accuracy = pairwise_accuracy(rm, tokenizer, heldout)
    assert accuracy >= 0.65, accuracy  # held out: the RM generalises beyond its training pairs
    assert pairwise_accuracy(rm, tokenizer, train) >= accuracy - 0.1


def test_learned_reward_is_standardised_counts_calls_and_prefers_positive_text(world, trained):
    _, tokenizer = world
    rm, _, train, _ = trained
    compute = Compute()
    reward = LearnedReward(rm, tokenizer, train, compute)
    assert compute.as_dict() == {**Compute().as_dict(), "forward": 2 * len(train)}  # the standardisation pass
    prompts = [r["prompt"] for r in train] * 2
    completions = [r["chosen"] for r in train] + [r["rejected"] for r in train]
    scores = reward(prompts, completions)
    assert scores.mean() == pytest.approx(0.0, abs=1e-4) and scores.std(ddof=1) == pytest.approx(1.0, abs=1e-3)
    assert reward.calls == len(completions)
    good, bad = reward(["the film was"] * 2, [" wonderful and i loved it .", " awful and i hated it ."])
    assert good > bad
    raw = score_completions(rm, tokenizer, ["the film was"], [" great ."])
    assert raw.shape == (1,)
