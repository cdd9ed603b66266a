"""The DPO loop: ln 2 at the start, precomputed = on-the-fly reference, reproducible, and it learns."""

import contextlib
import copy
import math

import pytest
import torch

from dpo_teach.dpo import DPOConfig, train_dpo
from dpo_teach.evaluate import preference_accuracy
from dpo_teach.logprobs import PreferenceCollator, concatenated_logprobs, reference_logprobs, tokenize_pairs
from dpo_teach.losses import dpo_loss

METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected"]


@contextlib.contextmanager
def reference_forwards(reference):
    """The rows of each forward pass of ``reference`` itself while the block runs (a policy deep-copied from it
    inherits the hook and is not counted)."""
    rows, body = [], reference.transformer
    hook = body.register_forward_hook(lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0])
                                      if module is body else None, with_kwargs=True)
    try:
        yield rows
    finally:
        hook.remove()


def run(world, rows, **kw):
    reference, tok = world
    policy = copy.deepcopy(reference)
    cfg = DPOConfig(**{"beta": 0.5, "lr": 1e-3, "batch_size": 16, **kw})
    return policy, train_dpo(policy, reference, tok, rows, cfg)


def test_loss_is_ln2_when_policy_equals_reference(world, pairs):
    reference, tok = world
    policy = copy.deepcopy(reference)
    history = train_dpo(policy, reference, tok, pairs[:16], DPOConfig(lr=0.0, batch_size=16))
    assert abs(history[0]["loss"] - math.log(2)) < 1e-6
    assert history[0]["rewards/margins"] == 0.0 and history[0]["rewards/accuracies"] == 0.0


def test_history_has_trl_metric_names(world, pairs):
    _, history = run(world, pairs[:32])
    assert len(history) == 2
    assert set(METRICS) | {"step", "epoch", "lr"} == set(history[0])


def test_precomputed_and_on_the_fly_reference_give_the_same_history(world, pairs):
    p1, h1 = run(world, pairs[:96], precompute_ref=True, epochs=2)
    p2, h2 = run(world, pairs[:96], precompute_ref=False, epochs=2)
    assert len(h1) == len(h2) == 12
    for a, b in zip(h1, h2):
        for key in METRICS:
            assert a[key] == pytest.approx(b[key], abs=1e-4), (a["step"], key)
    # the trained policies agree too (weights can differ in the last bits where Adam divides by a tiny gradient)
    _, tok = world
    batch = PreferenceCollator(tok.pad_token_id)(tokenize_pairs(tok, pairs[96:128], 64))
    with torch.no_grad():
        torch.testing.assert_close(concatenated_logprobs(p1, batch), concatenated_logprobs(p2, batch),
                                   atol=1e-3, rtol=1e-4)


def test_same_seed_same_numbers_different_seed_different(world, pairs):
    _, h1 = run(world, pairs[:64], seed=3)
    _, h2 = run(world, pairs[:64], seed=3)
    _, h3 = run(world, pairs[:64], seed=4)
    assert h1 == h2
    assert h1 != h3


def test_reference_is_never_updated(world, pairs):
    reference, _ = world
    before = copy.deepcopy(reference.state_dict())
    run(world, pairs[:32], precompute_ref=False)
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())


def test_training_raises_margins_and_held_out_accuracy(world, pairs):
    reference, tok = world
    train, held = pairs[:240], pairs[240:]
    policy, history = run(world, train, epochs=3)
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] and last["rewards/margins"] > 0.5
    assert preference_accuracy(policy, reference, tok, held) > 0.65


def test_a_student_loss_plugs_in_and_a_callback_sees_every_step(world, pairs):
    calls = []

    def student_loss(pc, pr, rc, rr):
        return dpo_loss(pc, pr, rc, rr, beta=0.5)

    reference, tok = world
    p1, h1 = run(world, pairs[:48])
    p2 = copy.deepcopy(reference)
    h2 = train_dpo(p2, reference, tok, pairs[:48], DPOConfig(beta=123.0, lr=1e-3, batch_size=16),
                   loss_fn=student_loss, callback=calls.append)
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h2])
    assert calls == h2


def test_unknown_loss_type_is_named(world, pairs):
    reference, tok = world
    with pytest.raises(ValueError, match="unknown loss_type 'dpo'.*sigmoid"):
        train_dpo(copy.deepcopy(reference), reference, tok, pairs[:4], DPOConfig(loss_type="dpo"))


def test_reference_logprobs_are_computed_once_per_pair(world, pairs):
    reference, tok = world
    examples = tokenize_pairs(tok, pairs[:10], 64)
    ex = reference_logprobs(reference, examples, tok.pad_token_id, batch_size=4)  # 3 chunks
    assert len(ex) == 10 and all(e["ref_chosen_logps"] < 0 and e["ref_rejected_logps"] < 0 for e in ex)
    with torch.no_grad():
        chosen, rejected = concatenated_logprobs(reference, PreferenceCollator(tok.pad_token_id)(examples))
    assert torch.allclose(torch.tensor([e["ref_chosen_logps"] for e in ex]), chosen, atol=1e-5)
    assert torch.allclose(torch.tensor([e["ref_rejected_logps"] for e in ex]), rejected, atol=1e-5)

    # In training: one pass of π_ref over the 40 pairs before the 2 × 5 steps, or one forward per step.
    for precompute, expected in [(True, 1), (False, 10)]:
        with reference_forwards(reference) as calls:
            _, history = run(world, pairs[:40], batch_size=8, epochs=2, precompute_ref=precompute)
        assert len(history) == 10 and len(calls) == expected, (precompute, len(calls))


def test_log_probs_computed_once_serve_every_run_on_the_same_pairs(world, pairs):
    """Examples that carry π_ref's log-probs (computed once for several runs, as notebooks 05 and 07 do) give the
    history of a run that computes them itself, and π_ref scores only a spot check of them again."""
    reference, tok = world
    rows = pairs[:40]
    examples = reference_logprobs(reference, tokenize_pairs(tok, rows, 64), tok.pad_token_id)
    config = DPOConfig(beta=0.5, lr=1e-3, batch_size=8, epochs=2)
    with reference_forwards(reference) as itself:
        computed = train_dpo(copy.deepcopy(reference), reference, tok, rows, config)
    with reference_forwards(reference) as carried:
        reused = train_dpo(copy.deepcopy(reference), reference, tok, rows, config, examples=examples)
    assert computed == reused and len(computed) == 10
    assert itself == [80], "one pass over the 40 pairs (2 × 40 rows)"
    assert carried == [8], "only the spot check: 4 pairs scored again"


def test_log_probs_of_another_reference_are_refused(world, pairs):
    reference, tok = world
    examples = reference_logprobs(reference, tokenize_pairs(tok, pairs[:8], 64), tok.pad_token_id)
    other = copy.deepcopy(reference)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)  # another model: other log-probs
    with pytest.raises(ValueError, match=r"example 0 carries ref_chosen_logps = .* the reference model gives .*"
                                         r"Pass examples without ref_chosen_logps"):
        train_dpo(copy.deepcopy(other), other, tok, pairs[:8], DPOConfig(batch_size=4), examples=examples)
    # the check is spread over the list: examples joined from this reference's and another's are refused too
    joined = examples[:6] + reference_logprobs(other, tokenize_pairs(tok, pairs[6:8], 64), tok.pad_token_id)
    with pytest.raises(ValueError, match=r"example 7 carries ref_chosen_logps"):
        train_dpo(copy.deepcopy(reference), reference, tok, pairs[:8], DPOConfig(batch_size=4), examples=joined)


def test_a_step_that_averages_the_policys_log_probs_against_summed_reference_ones_is_stopped(world, pairs):
    """The mean-vs-sum trap: a custom step that scores the policy with length-averaged log-probs while π_ref's were
    precomputed as sums trains on their gap, silently. At the first step the policy is π_ref, so the two must agree;
    a policy that starts elsewhere, or the package's own step, is not stopped."""
    from dpo_teach.dpo import dpo_step
    from dpo_teach.losses import step_metrics
    from dpo_teach.training import optimizer_step

    def averaging_step(policy, reference, batch, optimizer, loss_fn, max_grad_norm=1.0):
        policy.train()
        chosen, rejected = concatenated_logprobs(policy, batch, average=True)  # the trap: a mean per token
        losses, chosen_rewards, rejected_rewards = loss_fn(chosen, rejected, batch["ref_chosen_logps"],
                                                           batch["ref_rejected_logps"])
        optimizer_step(optimizer, losses.mean(), max_grad_norm)
        return step_metrics(losses, chosen_rewards, rejected_rewards, chosen, rejected)

    reference, tok = world
    config = DPOConfig(batch_size=8)
    with pytest.raises(ValueError, match=r"DPO step 1 of 2: at the first step the policy is still π_ref, yet its "
                                         r"chosen completions' log-probability is .* A mean over the completion "
                                         r"tokens on one side and a sum on the other"):
        train_dpo(copy.deepcopy(reference), reference, tok, pairs[:16], config, step_fn=averaging_step)
    assert len(train_dpo(copy.deepcopy(reference), reference, tok, pairs[:16], config, step_fn=dpo_step)) == 2
    elsewhere = copy.deepcopy(reference)
    with torch.no_grad():
        elsewhere.lm_head.weight.mul_(1.01)  # a policy that starts from another checkpoint: nothing to compare
    assert len(train_dpo(elsewhere, reference, tok, pairs[:16], config, step_fn=averaging_step)) == 2


def test_the_learning_rate_schedule_is_what_the_configs_say():
    """utils.lr_at: a linear warm-up over 5 % of the steps (DPO's 189 steps: 9), then cosine decay towards 10 % of
    the peak; a run under 40 steps (the comparison's 20 PPO iterations) has no ramp and starts at the peak."""
    from dpo_teach.utils import lr_at

    ramp = [lr_at(s, 189, 1.0) for s in range(10)]
    assert ramp[0] == pytest.approx(1 / 9) and ramp[8] == ramp[9] == 1.0
    assert all(a < b for a, b in zip(ramp[:9], ramp[1:9], strict=False))
    decay = [lr_at(s, 189, 1.0) for s in range(9, 189)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False)) and 0.1 < decay[-1] < 0.11
    assert lr_at(0, 20, 1.0) == 1.0 and lr_at(0, 39, 1.0) == 1.0 and lr_at(0, 40, 1.0) == 0.5
