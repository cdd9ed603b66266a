"""Peer parity: our DPO loss, metrics and gradients equal TRL's ``DPOTrainer`` on the same model, batch and β.

Same weights for π_θ and π_ref, same rows, same β and ``max_length``; TRL tokenizes ``prompt + completion + EOS``
and splits where the token lists diverge, we tokenize prompt and completion apart and append the EOS id. With
space-prefixed completions (as the toy world's are) both give the same token ids, which is checked first.
The policy is perturbed away from the reference, so the loss is not ln 2 and every term of it matters.
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")  # the `peers` extra; CI installs it
pytest.importorskip("datasets")

from dpo_teach import trl_bridge  # noqa: E402
from dpo_teach.logprobs import PreferenceCollator, concatenated_logprobs, tokenize_pairs  # noqa: E402
from dpo_teach.losses import dpo_loss, step_metrics  # noqa: E402

N_ROWS = 24  # one batch
BETA = 0.3
TOL = 1e-5


def _rows(pairs, n: int = N_ROWS) -> list[dict]:
    """TRL's three columns of the first ``n`` pairs."""
    return [{k: r[k] for k in trl_bridge.COLUMNS} for r in pairs[:n]]


def _ours(policy, reference, tokenizer, rows, max_length):
    """Our batch, per-example losses and TRL-named metrics; the loss mean keeps its graph for a gradient check."""
    examples = tokenize_pairs(tokenizer, rows, max_length)
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples)
    chosen, rejected = concatenated_logprobs(policy, batch)
    with torch.no_grad():
        ref_chosen, ref_rejected = concatenated_logprobs(reference, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=BETA)
    metrics = step_metrics(losses, chosen_rewards, rejected_rewards, chosen, rejected)
    return examples, batch, losses.mean(), metrics


@pytest.mark.parametrize("max_length", [64, 8], ids=["no-truncation", "truncated"])
def test_dpo_matches_trl_dpotrainer(world, pairs, trained_policy, tmp_path, max_length):
    reference, tokenizer = world
    rows = _rows(pairs)
    policy = copy.deepcopy(trained_policy)  # this test accumulates gradients in it
    # TRL on copies, configured by the course's bridge for a CPU comparison (bf16 and checkpointing off)
    trainer = trl_bridge.trl_trainer(policy, reference, tokenizer, rows, beta=BETA, max_length=max_length,
                                     output_dir=str(tmp_path / "trl"))
    examples, batch, loss, ours = _ours(policy, reference, tokenizer, rows, max_length)

    # Same tokens: TRL's split of prompt+completion+EOS equals our separate tokenization.
    trl_rows = trainer.eval_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
    assert len(trl_rows) == len(examples)
    for i, (a, b) in enumerate(zip(examples, trl_rows)):
        trl_cut = {"prompt_ids": b["prompt_ids"],
                   "chosen_ids": b["chosen_ids"][:max_length - len(b["prompt_ids"])],
                   "rejected_ids": b["rejected_ids"][:max_length - len(b["prompt_ids"])]}
        assert a == trl_cut, f"row {i} ({rows[i]['prompt']!r}) tokenizes differently from TRL"
    trl_batch = trainer.data_collator(trainer.eval_dataset.select_columns(["prompt_ids", "chosen_ids",
                                                                           "rejected_ids"]).to_list())
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(batch[key], trl_batch[key]), f"padded {key} differs from TRL's collator"

    # Same loss and metrics: one eval batch, so TRL's averages are the batch means.
    theirs = trainer.evaluate()
    assert ours["loss"] == pytest.approx(theirs["eval_loss"], abs=TOL, rel=0)
    assert abs(ours["loss"] - 0.6931) > 0.01, "policy equals reference; the comparison would be trivial"
    for key, value in ours.items():
        assert value == pytest.approx(theirs[f"eval_{key}"], abs=TOL, rel=0), key

    # Same gradient: TRL's training loss (fused LM head) backpropagates to the same parameter gradients.
    loss.backward()
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, trainer._prepare_inputs(trl_batch))
    trl_loss.backward()
    assert trl_loss.item() == pytest.approx(ours["loss"], abs=TOL, rel=0)
    for (name, p), q in zip(policy.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_parity_check_can_fail(world, pairs, trained_policy):
    """Near-misses of the convention (length-normalized log-probs, EOS not scored) move the loss by far more than
    the tolerance, so the parity test above would catch them."""
    reference, tokenizer = world
    policy = trained_policy
    _, batch, loss, _ = _ours(policy, reference, tokenizer, _rows(pairs), 64)
    no_eos = dict(batch, completion_mask=batch["completion_mask"] * (batch["input_ids"] != tokenizer.eos_token_id))
    with torch.no_grad():
        for variant, average in ((batch, True), (no_eos, False)):
            logps = concatenated_logprobs(policy, variant, average) + concatenated_logprobs(reference, variant, average)
            other = dpo_loss(*logps, beta=BETA)[0].mean()
            assert abs(other.item() - loss.item()) > 100 * TOL
