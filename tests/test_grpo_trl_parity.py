"""Peer parity: our GRPO and RLOO losses equal TRL's ``GRPOTrainer`` / ``RLOOTrainer`` losses on the same batch.

Same weights, same completions, same π_old and π_ref per-token log-probs, same advantages; TRL's own ``_compute_loss``
(a private method: the loss is not a public function in TRL 1.16) recomputes π_θ's log-probs and returns the loss.

What is **not** compared, and why:

- the advantages and RLOO's KL-in-the-reward: TRL computes them inside ``_generate_and_score_completions``, together
  with its own sampling, so they cannot be fed the same completions; ours are checked against hand values
  (``tests/test_grpo.py``) and passed to TRL as inputs here;
- TRL's default ``use_bias_correction_kl=True`` multiplies each token's k3 by the ratio π_θ/π_old (an
  importance-sampling correction for samples drawn by π_old); ours is the GRPO paper's k3 without it, so the
  comparison switches the correction off (with it on and β > 0 the losses differ by β·E[(ρ − 1)·k3]);
- left-padded prompts: TRL recomputes log-probs without ``position_ids``, so with GPT-2's absolute positions a prompt
  shorter than the longest in the batch is read at shifted positions (its log-probs differ by up to ~0.1 nats);
  ours derive positions from the attention mask, as generation does. The parity batch therefore uses prompts of one
  token length, and :func:`test_left_padding_is_where_trl_reads_other_positions` pins the difference down.
"""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
import torch

trl = pytest.importorskip("trl")  # the `peers` extra; CI installs it
datasets = pytest.importorskip("datasets")

from dpo_teach import grammar  # noqa: E402
from dpo_teach.grpo import group_advantages, grpo_loss  # noqa: E402
from dpo_teach.rloo import rloo_advantages, rloo_loss  # noqa: E402
from dpo_teach.rollout import collate_rollout, token_logprobs  # noqa: E402
from dpo_teach.sampling import sample  # noqa: E402

K, N_PROMPTS, TOL = 4, 4, 1e-5


def zero_reward(prompts, completions, **kwargs):
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def batch(world):
    """A perturbed policy, π_ref, and K completions for each of N_PROMPTS prompts of one token length."""
    reference, tokenizer = world
    torch.manual_seed(0)
    policy, old = copy.deepcopy(reference), copy.deepcopy(reference)
    with torch.no_grad():
        for p, q in zip(policy.parameters(), old.parameters()):
            p.add_(0.02 * torch.randn_like(p))
            q.add_(0.01 * torch.randn_like(q))
    lengths = {p: len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in grammar.all_prompts()}
    common = Counter(lengths.values()).most_common(1)[0][0]
    prompts = random.Random(0).sample(sorted(p for p, n in lengths.items() if n == common), N_PROMPTS)
    s = sample(policy, tokenizer, [p for p in prompts for _ in range(K)], 16, seed=0)
    b = collate_rollout(s.prompt_ids, s.completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        old_logps, ref_logps = token_logprobs(old, b)[0], token_logprobs(reference, b)[0]
    return policy, prompts, b, old_logps, ref_logps


def trl_inputs(b, **extra) -> dict:
    P = b.prompt_len
    return {"prompt_ids": b.input_ids[:, :P], "prompt_mask": b.attention_mask[:, :P],
            "completion_ids": b.input_ids[:, P:], "completion_mask": b.response_mask.long(), **extra}


def trainer(kind, policy, tokenizer, prompts, tmp_path, **config):
    cls, cfg = (trl.GRPOTrainer, trl.GRPOConfig) if kind == "grpo" else (trl.RLOOTrainer, trl.RLOOConfig)
    args = cfg(output_dir=str(tmp_path / kind), use_cpu=True, bf16=False, num_generations=K,
               per_device_train_batch_size=K * N_PROMPTS, report_to="none", max_completion_length=16,
               disable_tqdm=True, **config)
    t = cls(model=copy.deepcopy(policy), reward_funcs=zero_reward, args=args, processing_class=tokenizer,
            train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]))
    t.model.eval()  # TRL's eval mode: no division by gradient-accumulation steps
    return t


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("ours_norm,theirs_norm", [("sequence", "grpo"), ("token", "bnpo")])
def test_grpo_loss_matches_trl(world, batch, tmp_path, beta, ours_norm, theirs_norm):
    reference, tokenizer = world
    policy, prompts, b, old_logps, ref_logps = batch
    advantages = group_advantages(torch.randn(K * N_PROMPTS, generator=torch.Generator().manual_seed(1)), K)
    t = trainer("grpo", policy, tokenizer, prompts, tmp_path, beta=beta, loss_type=theirs_norm, epsilon=0.2,
                use_bias_correction_kl=False)
    theirs = t._compute_loss(t.model, trl_inputs(b, advantages=advantages, old_per_token_logps=old_logps,
                                                  ref_per_token_logps=ref_logps))
    logps, _ = token_logprobs(policy, b)
    ours, stats = grpo_loss(logps, old_logps, ref_logps, advantages, b.response_mask, beta, 0.2, ours_norm)
    assert abs(ours.item() - theirs.item()) <= TOL, (ours.item(), theirs.item())
    assert stats["clipfrac"] > 0, "no ratio left the clip range: the clip would not be compared"


def test_rloo_loss_matches_trl(world, batch, tmp_path):
    reference, tokenizer = world
    policy, prompts, b, old_logps, _ = batch
    mask = b.response_mask
    advantages = rloo_advantages(torch.randn(K * N_PROMPTS, generator=torch.Generator().manual_seed(2)), K)
    old_seq = (old_logps * mask).sum(-1)
    t = trainer("rloo", policy, tokenizer, prompts, tmp_path, epsilon=0.2)
    theirs = t._compute_loss(t.model, trl_inputs(b, advantages=advantages, old_logps=old_seq))
    logps, _ = token_logprobs(policy, b)
    ours, stats = rloo_loss((logps * mask).sum(-1), old_seq, advantages, 0.2)
    assert abs(ours.item() - theirs.item()) <= TOL, (ours.item(), theirs.item())
    assert stats["clipfrac"] > 0


def test_left_padding_is_where_trl_reads_other_positions(world, tmp_path):
    """The one difference found: TRL passes no position_ids, so left-padded rows are read at shifted positions."""
    reference, tokenizer = world
    prompts = ["the film was", "honestly , the acting in this film was"]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    b = collate_rollout(ids, [tokenizer(" great .", add_special_tokens=False)["input_ids"]] * 2, tokenizer.pad_token_id)
    t = trainer("grpo", reference, tokenizer, prompts, tmp_path)
    with torch.no_grad():
        theirs = t._get_per_token_logps_and_entropies(t.model, b.input_ids, b.attention_mask, b.input_ids.shape[1]
                                                      - b.prompt_len)[0]
        ours, _ = token_logprobs(reference, b)
    diff = ((theirs - ours).abs() * b.response_mask).amax(-1)  # (2,)
    assert diff[1] < 1e-5, "the longest prompt (no padding) must agree"
    assert diff[0] > 1e-3, "TRL now reads left-padded rows at the right positions: widen the parity batch"
