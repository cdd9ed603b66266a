"""Evaluating a policy against π_ref with the ground-truth reward.

- mean reward of sampled completions, E_{y∼π}[r(x, y)];
- sequence-level KL(π‖π_ref) = E_{y∼π}[log π(y|x) − log π_ref(y|x)], estimated from the same samples;
- fluency: the share of completions that are well-formed (the grammar could produce them, and they end with EOS).
  Reward bought with garbage text is reward hacking, so it is reported beside the reward;
- win rate: how often a policy sample beats a π_ref sample on the same prompt (ties count one half);
- implicit-reward accuracy on held-out pairs: how often r̂(x, y_w) > r̂(x, y_l), from the log-ratios
  log π_θ/π_ref of both completions (:func:`logratios`).

Every evaluation in the course (demo, comparison, notebooks) draws its prompts and its sampling seed the same way,
:func:`evaluation_prompts`, and shows samples in the same ✓/✗ table, :func:`samples_table`.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from dpo_teach import grammar
from dpo_teach.logprobs import (
    REF_KEYS,
    PreferenceCollator,
    check_batch_size,
    concatenated_logprobs,
    encode_completion,
    tokenize_pairs,
    with_reference_logprobs,
)
from dpo_teach.reward import ground_truth_reward
from dpo_teach.sampling import Samples, sample, samples_logprobs


def evaluation_prompts(n: int, seed: int = 0) -> tuple[list[str], int]:
    """The course's evaluation set for ``seed``: ``n`` grammar prompts drawn with replacement from
    ``random.Random(seed + 1)``, and the sampling seed ``seed + 2`` to draw one completion per prompt with.

    Both stay apart from the seeds that make the preference pairs (``seed``), so evaluation never reuses them.

    Returns:
        ``(prompts, sample_seed)``.
    """
    return random.Random(seed + 1).choices(grammar.all_prompts(), k=n), seed + 2


def fluency(samples: Samples) -> np.ndarray:
    """1.0 for each completion that is a grammatical sentence ended by EOS, else 0.0. Shape: (N,)."""
    pairs = zip(samples.completions, samples.ended, strict=True)
    return np.array([float(e and grammar.is_well_formed(c)) for c, e in pairs])


def sample_metrics(samples: Samples, policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> dict[str, float]:
    """Reward, KL, fluency and length of a set of samples drawn from the policy."""
    rewards = ground_truth_reward(samples.completions)
    kl = (policy_logps - ref_logps).double()
    return {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "kl": float(kl.mean()),
        "kl_sem": float(kl.std() / np.sqrt(len(kl))) if len(kl) > 1 else 0.0,
        "fluency": float(fluency(samples).mean()),
        "ended": float(np.mean(samples.ended)),
        "length": float(np.mean([len(c) for c in samples.completion_ids])),
    }


def evaluate_policy(policy, reference, tokenizer, prompts: list[str], seed: int = 0,
                    max_new_tokens: int = 16) -> tuple[dict[str, float], Samples]:
    """Sample one completion per prompt from ``policy`` and score it. Returns ``(metrics, samples)``."""
    samples = sample(policy, tokenizer, prompts, max_new_tokens, seed=seed)
    pad = tokenizer.pad_token_id
    policy_logps = samples_logprobs(policy, samples, pad)
    ref_logps = policy_logps if policy is reference else samples_logprobs(reference, samples, pad)
    return sample_metrics(samples, policy_logps, ref_logps), samples


def win_rate(policy_samples: Samples, ref_samples: Samples) -> float:
    """P(r(policy sample) > r(π_ref sample)) on the same prompts, ties counted as one half."""
    if policy_samples.prompts != ref_samples.prompts:
        raise ValueError("win_rate needs samples drawn for the same prompts in the same order")
    a = ground_truth_reward(policy_samples.completions)
    b = ground_truth_reward(ref_samples.completions)
    return float(np.mean((a > b) + 0.5 * (a == b)))


@torch.no_grad()
def logratios(policy, reference, tokenizer, rows: list[dict] | None, max_length: int = 64, batch_size: int = 256,
              examples: list[dict] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_θ/π_ref of each pair's chosen and rejected completion: ``(chosen, rejected)``, each Shape: (pairs,).

    π_ref's log-probs are computed once (one pass, as ``train_dpo`` precomputes them), then π_θ's, batch by batch.
    β·``chosen`` and β·``rejected`` are the implicit rewards r̂(x, y_w), r̂(x, y_l); at π_θ = π_ref both are 0.
    ``examples``: ``rows`` already tokenized, usually with π_ref's log-probs computed once for every policy that
    is compared on them (``logprobs.reference_logprobs``); ``rows`` (or None) is then only checked against them:
    as many, the first and last the same pairs.
    """
    check_batch_size(batch_size)
    pad = tokenizer.pad_token_id
    if examples is None:
        examples = tokenize_pairs(tokenizer, rows, max_length)
    elif rows is not None:
        _check_tokenized_from(rows, examples, tokenizer)
    if not examples:
        raise ValueError("no preference pairs to score: rows (or examples) is empty")
    examples = with_reference_logprobs(reference, examples, pad, batch_size)
    collate = PreferenceCollator(pad, extra_keys=REF_KEYS)
    policy.eval()
    chosen, rejected = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        policy_chosen, policy_rejected = concatenated_logprobs(policy, batch)
        chosen.append(policy_chosen - batch["ref_chosen_logps"])
        rejected.append(policy_rejected - batch["ref_rejected_logps"])
    return torch.cat(chosen), torch.cat(rejected)


def _check_tokenized_from(rows: list[dict], examples: list[dict], tokenizer) -> None:
    """Raise ValueError unless ``examples`` could be ``rows`` tokenized: as many, and the first and last example are
    the first and last row's tokens (completions possibly cut at the end, as ``tokenize_pairs`` cuts them)."""
    if len(rows) != len(examples):
        raise ValueError(f"rows has {len(rows)} preference pairs but examples has {len(examples)}: pass the examples "
                         "tokenized from these rows (logprobs.tokenize_pairs), or rows=None")
    for i in sorted({0, len(rows) - 1}) if rows else []:
        row, example = rows[i], examples[i]
        prompt_ids, chosen_ids = encode_completion(tokenizer, row["prompt"], row["chosen"])
        _, rejected_ids = encode_completion(tokenizer, row["prompt"], row["rejected"])
        whole = {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
        if any(list(example[k]) != ids[:len(example[k])] for k, ids in whole.items()):
            raise ValueError(f"examples[{i}] is not rows[{i}] tokenized (prompt {rows[i]['prompt'][:40]!r}): pass "
                             "the examples tokenized from these rows, in the same order, or rows=None")


def preference_accuracy(policy, reference, tokenizer, rows: list[dict] | None, max_length: int = 64,
                        batch_size: int = 256, examples: list[dict] | None = None) -> float:
    """Implicit-reward accuracy: the share of pairs with log π/π_ref(y_w) > log π/π_ref(y_l) (β > 0 drops out).

    Ties count as wrong, as in TRL's ``rewards/accuracies``; at π = π_ref every pair ties, so accuracy is 0.
    ``examples`` as in :func:`logratios`.
    """
    chosen, rejected = logratios(policy, reference, tokenizer, rows, max_length, batch_size, examples)
    return int((chosen > rejected).sum()) / len(chosen)


def samples_table(columns: dict[str, Samples], n: int = 12, markdown_math: bool = False) -> str:
    """Samples side by side as a Markdown table: the prompt, then per policy its completion marked ✓ (well-formed
    sentence ended by EOS) or ✗, and its ground-truth reward. Every ``Samples`` must be for the same prompts.

    Args:
        columns: column title (e.g. ``"π_ref"``, ``"DPO"``) → that policy's samples.
        n: rows (the first ``n`` prompts).
        markdown_math: write the header's π_ref/π_θ in LaTeX for a notebook.
    """
    if not columns:  # else a bare StopIteration
        raise ValueError("samples_table needs at least one column: {title: samples}, e.g. {'π_ref': samples}")
    first = next(iter(columns.values()))
    if any(s.prompts[:n] != first.prompts[:n] for s in columns.values()):
        raise ValueError("samples_table needs samples drawn for the same prompts in the same order")
    rewards = {name: ground_truth_reward(s.completions[:n]) for name, s in columns.items()}
    head = ["prompt $x$" if markdown_math else "prompt"]
    for name in columns:
        head += [f"{name}: $y$" if markdown_math else name, "$r$" if markdown_math else "r"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in range(min(n, len(first.prompts))):
        cells = [first.prompts[i]]
        for name, s in columns.items():
            mark = "✓" if s.ended[i] and grammar.is_well_formed(s.completions[i]) else "✗"
            text = s.completions[i].strip().replace("|", "\\|") or "(empty)"
            cells += [f"{mark} {text}", f"{rewards[name][i]:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
