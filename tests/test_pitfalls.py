"""The length-biased relabelling, the length-balanced subset and the sample report (pitfalls); DPOP (losses)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from dpo_teach import pitfalls
from dpo_teach.evaluate import sample_metrics
from dpo_teach.losses import dpo_loss, dpop_loss
from dpo_teach.reward import ground_truth_reward
from dpo_teach.sampling import Samples


def test_length_bonus_makes_the_chosen_completion_the_longer_one(pairs):
    biased = pitfalls.relabel_with_length_bonus(pairs, bonus=5.0, seed=0)
    assert len(biased) == len(pairs)
    for old, new in zip(pairs, biased):
        assert new["prompt"] == old["prompt"]
        assert {new["chosen"], new["rejected"]} == {old["chosen"], old["rejected"]}, "same completions, new labels"
        rewards = ground_truth_reward([new["chosen"], new["rejected"]])
        assert (new["chosen_reward"], new["rejected_reward"]) == pytest.approx(tuple(rewards)), "true rewards kept"
    unequal = [r for r in biased if pitfalls.n_words(r["chosen"]) != pitfalls.n_words(r["rejected"])]
    longer = sum(pitfalls.n_words(r["chosen"]) > pitfalls.n_words(r["rejected"]) for r in unequal)
    assert longer / len(unequal) > 0.95, "a bonus of 5 per word outweighs any reward difference (at most 2)"
    assert pitfalls.relabel_with_length_bonus(pairs, bonus=5.0, seed=0) == biased, "seeded"


def test_length_stats_by_hand():
    rows = [{"chosen": " a b c .", "rejected": " a ."}, {"chosen": " a .", "rejected": " a b ."},
            {"chosen": " a .", "rejected": " b ."}, {"chosen": " a b .", "rejected": " a ."}]
    stats = pitfalls.length_stats(rows)
    assert stats == {"chosen_longer": 0.5, "chosen_shorter": 0.25, "mean_gap_words": 0.5, "chosen_words": 2.75,
                     "rejected_words": 2.25}


def test_length_balanced_subset_is_symmetric_in_the_word_gap(pairs):
    biased = pitfalls.relabel_with_length_bonus(pairs, bonus=0.3, seed=0)
    balanced = pitfalls.length_balanced(biased, seed=0)
    gaps = Counter(pitfalls.n_words(r["chosen"]) - pitfalls.n_words(r["rejected"]) for r in balanced)
    assert all(gaps[d] == gaps[-d] for d in gaps), gaps
    assert pitfalls.length_stats(balanced)["mean_gap_words"] == 0
    assert all(r in biased for r in balanced) and len(balanced) < len(biased)
    assert sum(gap == 0 for gap in gaps.elements()) == sum(
        pitfalls.n_words(r["chosen"]) == pitfalls.n_words(r["rejected"]) for r in biased), "equal lengths are all kept"
    assert pitfalls.length_balanced(biased, seed=0) == balanced


def test_dpop_is_dpo_until_the_chosen_log_prob_falls_below_the_reference():
    g = torch.Generator().manual_seed(0)
    ref_chosen, ref_rejected = -10 * torch.rand(8, generator=g), -10 * torch.rand(8, generator=g)
    rejected = ref_rejected - 1.0
    above = ref_chosen + torch.rand(8, generator=g)  # y_w gained probability: no penalty
    for ours, theirs in zip(dpop_loss(above, rejected, ref_chosen, ref_rejected, beta=0.5, lam=5.0),
                            dpo_loss(above, rejected, ref_chosen, ref_rejected, beta=0.5)):
        torch.testing.assert_close(ours, theirs)
    below = (ref_chosen - 2.0).requires_grad_(True)  # y_w lost 2 nats
    losses, chosen_rewards, _ = dpop_loss(below, rejected, ref_chosen, ref_rejected, beta=0.5, lam=1.0)
    # margin h = −2 − (−1) = −1, penalty λ·2 = 2: the logit is β·(h − 2) = −1.5
    torch.testing.assert_close(losses, torch.full((8,), math.log1p(math.exp(1.5))))
    assert not chosen_rewards.requires_grad
    losses.sum().backward()
    plain = below.detach().clone().requires_grad_(True)
    dpo_loss(plain, rejected, ref_chosen, ref_rejected, beta=0.5)[0].sum().backward()
    assert bool((below.grad < plain.grad).all()), "DPOP pulls a fallen chosen log-prob up harder than DPO"
    torch.testing.assert_close(dpop_loss(below, rejected, ref_chosen, ref_rejected, beta=0.5, lam=0.0)[0],
                               dpo_loss(below, rejected, ref_chosen, ref_rejected, beta=0.5)[0])


def test_sample_report_by_hand():
    samples = Samples(prompts=["the film was"] * 3,
                      completions=[" great .", " great great great it it it", " dull , but the music was lovely ."],
                      prompt_ids=[[1]] * 3, completion_ids=[[2, 0], [3, 3, 3], [4, 0]], ended=[True, False, True])
    report = pitfalls.sample_report(samples)
    # reward, fluency and EOS are evaluate's metrics, which the notebook already has; the report adds the rest
    metrics = sample_metrics(samples, torch.zeros(3), torch.zeros(3))
    assert metrics["fluency"] == pytest.approx(2 / 3) and metrics["ended"] == pytest.approx(2 / 3)
    assert set(report) == {"words", "sentiment_words", "repeats", "reward_ill_formed"}
    assert report["repeats"] == pytest.approx(1 / 3) and report["words"] == pytest.approx((2 + 6 + 8) / 3)
    assert report["sentiment_words"] == pytest.approx((1 + 3 + 2) / 3)
    assert report["reward_ill_formed"] == pytest.approx(float(ground_truth_reward([" great great great it it it"])[0]))
    all_fluent = Samples(["x"], [" great ."], [[1]], [[2, 0]], [True])
    assert math.isnan(pitfalls.sample_report(all_fluent)["reward_ill_formed"])
