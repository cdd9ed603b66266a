"""Online DPO: the reference changes only between rounds (and never with refresh off), both labellers, the costs,
the same numbers for the same seed."""

import copy
import hashlib

import pytest
import torch

from dpo_teach import online_dpo
from dpo_teach.compute import Compute
from dpo_teach.dpo import DPOConfig
from dpo_teach.online_dpo import OnlineDPOConfig, dpo_compute, train_online_dpo
from dpo_teach.reward import ground_truth_reward


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().numpy().tobytes())
    return h.hexdigest()


def small(**kw) -> OnlineDPOConfig:
    return OnlineDPOConfig(**{"rounds": 3, "prompts_per_round": 24, "dpo": DPOConfig(beta=0.3, lr=1e-3, batch_size=8),
                              "seed": 2, **kw})


def run_recording(world, monkeypatch, config):
    """Train, recording the digest of the reference that every DPO step of every round used."""
    reference, tokenizer = world
    seen: list[list[str]] = []
    real = online_dpo.train_dpo

    def recording_train_dpo(policy, round_reference, tokenizer, rows, cfg, **kw):
        seen.append([])

        def step(policy, reference, batch, optimizer, loss_fn):
            seen[-1].append(digest(reference))
            from dpo_teach.dpo import dpo_step

            return dpo_step(policy, reference, batch, optimizer, loss_fn)

        return real(policy, round_reference, tokenizer, rows, cfg, step_fn=step, **kw)

    monkeypatch.setattr(online_dpo, "train_dpo", recording_train_dpo)
    policy, compute = copy.deepcopy(reference), Compute()
    history = train_online_dpo(policy, reference, tokenizer, config, compute=compute)
    return seen, history, compute, policy


def test_reference_is_refreshed_only_between_rounds(world, monkeypatch):
    reference, _ = world
    pi_ref = digest(reference)
    seen, history, _, policy = run_recording(world, monkeypatch, small())
    assert len(seen) == 3 and all(len(steps) >= 2 for steps in seen)
    assert all(len(set(steps)) == 1 for steps in seen), "the reference moved inside a round"
    per_round = [steps[0] for steps in seen]
    assert per_round[0] == pi_ref and len(set(per_round)) == 3, "each round starts a new reference"
    assert [h["reference"] for h in history] == ["π_ref", "round 1", "round 2"]
    assert digest(reference) == pi_ref and digest(policy) != pi_ref  # π_ref itself is never trained


def test_reference_kept_fixed_when_asked(world, monkeypatch):
    reference, _ = world
    seen, history, _, _ = run_recording(world, monkeypatch, small(refresh_reference=False))
    assert {d for steps in seen for d in steps} == {digest(reference)}
    assert {h["reference"] for h in history} == {"π_ref"}


def test_costs_and_seed_reproducibility(world):
    reference, tokenizer = world

    def run():
        policy, compute = copy.deepcopy(reference), Compute()
        history = train_online_dpo(policy, reference, tokenizer, small(), compute=compute)
        return history, compute

    history, compute = run()
    pairs = sum(h["pairs"] for h in history)
    assert compute.completions == 3 * 2 * 24 and compute.ground_truth_calls == 3 * 24
    epochs = small().dpo.epochs
    assert small().dpo.precompute_ref  # π_ref scores each pair's two sequences once, π_θ every epoch with backward
    assert compute.backward == 2 * pairs * epochs and compute.forward == 3 * 2 * 24 + 2 * pairs * (1 + epochs)
    assert [h["completions"] for h in history] == [48, 96, 144]
    again, _ = run()
    assert again == history


@pytest.mark.parametrize("precompute_ref", [True, False])
def test_dpo_compute_counts_the_sequences_the_models_score(world, pairs, precompute_ref):
    """The cost the comparison reports for DPO is what training does: sequences through π_θ and π_ref (forward), and
    through π_θ with a gradient (backward), counted by hooks on the two models."""
    from dpo_teach.dpo import train_dpo

    reference, tokenizer = world
    policy, rows = copy.deepcopy(reference), pairs[:12]
    cfg = DPOConfig(batch_size=4, epochs=2, precompute_ref=precompute_ref)
    seen = {"forward": 0, "backward": 0}

    def count(body, args, kwargs, output):  # every scored sequence goes through the transformer body
        rows_in = (args[0] if args else kwargs["input_ids"]).shape[0]
        seen["forward"] += rows_in
        seen["backward"] += rows_in if body is policy.transformer and torch.is_grad_enabled() else 0

    hooks = [m.transformer.register_forward_hook(count, with_kwargs=True) for m in (policy, reference)]
    try:
        train_dpo(policy, reference, tokenizer, rows, cfg)
    finally:
        for h in hooks:
            h.remove()
    expected = dpo_compute(len(rows), cfg)
    last_batch = len(rows) % cfg.batch_size or cfg.batch_size  # pairs
    check = 2 * last_batch  # and one forward of the last batch after training, under no_grad (dpo.after_last_update:
    # an evaluation of the trained policy, not a cost of the method, like the evaluations after it)
    assert (seen["forward"], seen["backward"]) == (expected.forward + check, expected.backward)
    assert expected.backward == 2 * 12 * 2 and expected.forward == 2 * 12 * ((1 if precompute_ref else 2) + 2)


def test_reward_model_labeller_chooses_the_higher_score(world):
    reference, tokenizer = world
    cfg = small(labeller="rm")
    calls = []

    def reward_fn(prompts, completions):
        calls.append(len(completions))
        return ground_truth_reward(completions)

    rows = online_dpo.reward_model_pairs(reference, tokenizer, reward_fn, cfg, seed=5)
    assert rows and calls == [24, 24]
    chosen = ground_truth_reward([r["chosen"] for r in rows])
    assert (chosen > ground_truth_reward([r["rejected"] for r in rows])).all()
    calls.clear()
    compute = Compute()
    history = train_online_dpo(copy.deepcopy(reference), reference, tokenizer, small(labeller="rm", rounds=1),
                               reward_fn, compute=compute)
    assert calls == [24, 24] and compute.ground_truth_calls == 0  # the reward model labels: "the human" is not asked
    assert history[0]["pairs"] > 0 and compute.completions == 48
    with pytest.raises(ValueError, match="reward_fn"):
        train_online_dpo(copy.deepcopy(reference), reference, tokenizer, cfg)
    with pytest.raises(ValueError, match="labeller"):
        train_online_dpo(copy.deepcopy(reference), reference, tokenizer, small(labeller="human"))
