"""Sampling completions from a policy, keeping the token ids so that log-probs are scored on exactly what was drawn.

Evaluation samples at temperature 1 with no top-k or top-p truncation: a KL estimate from samples is only unbiased
for samples drawn from π itself (``generate`` would otherwise apply top_k=50 by default). For the same reason a
checkpoint's own ``generation_config.json`` (a repetition penalty, ``no_repeat_ngram_size``, ``min_new_tokens``, ...)
is set aside while sampling: ``generate`` would fill every setting not passed to it from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from dpo_teach.logprobs import check_batch_size, pad_rows, sequence_logprobs
from dpo_teach.model import ContextLengthError, context_length


@dataclass
class Samples:
    """Completions drawn for a list of prompts, with their token ids."""

    prompts: list[str]  # x, one per sample
    completions: list[str]  # y as text, up to (not including) the first EOS
    prompt_ids: list[list[int]]  # tokens of x
    completion_ids: list[list[int]]  # tokens of y, EOS included when the model produced it
    ended: list[bool]  # True when the model produced EOS within max_new_tokens


@contextmanager
def plain_generation(model: torch.nn.Module) -> Iterator[None]:
    """``model.generation_config`` set to transformers' defaults while ``generate`` runs, then put back: the settings
    a checkpoint saved there (a repetition penalty, say) would change what is drawn, and the draws must come from π."""
    if not hasattr(model, "generation_config"):  # not a transformers model: nothing to set aside
        yield
        return
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 512,
) -> Samples:
    """Draw one completion per prompt (repeat a prompt to draw several). Global RNG state is left untouched."""
    if isinstance(prompts, str):  # else each of its characters would be a prompt
        raise TypeError("prompts must be a list of strings, got a str: wrap it, [prompt]")
    check_batch_size(batch_size)
    if not prompts:  # else no samples, and their scoring fails on nothing to score
        raise ValueError("prompts is empty: pass at least one prompt to sample from")
    eos = tokenizer.eos_token_id
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    empty = [i for i, ids in enumerate(prompt_ids) if not ids]
    if empty:  # nothing to condition the first token on, and scoring it would need a token before it
        raise ValueError(f"prompt {empty[0] + 1} of {len(prompts)} is empty ({len(empty)} in all); every prompt "
                         "needs at least one token")
    context = context_length(model)
    longest = max((len(p) for p in prompt_ids), default=0)
    if context is not None and longest + max_new_tokens > context:  # else an IndexError deep inside generate
        raise ContextLengthError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} does not fit the "
                                 f"model's context of {context} tokens; shorten the prompts or lower "
                                 "max_new_tokens")
    completion_ids: list[list[int]] = []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(), plain_generation(model):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = prompt_ids[start:start + batch_size]
            batch = pad_rows(chunk, [[] for _ in chunk], eos, padding_side="left")
            out = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, pad_token_id=eos, eos_token_id=eos,
            )
            for row in out[:, batch["input_ids"].shape[1]:].tolist():  # generated part, (b, ≤max_new_tokens)
                completion_ids.append(row[:row.index(eos) + 1] if eos in row else row)
    model.train(was_training)
    ended = [bool(c) and c[-1] == eos for c in completion_ids]
    texts = [tokenizer.decode(c[:-1] if e else c) for c, e in zip(completion_ids, ended, strict=True)]
    return Samples(list(prompts), texts, prompt_ids, completion_ids, ended)


@torch.no_grad()
def samples_logprobs(model: torch.nn.Module, samples: Samples, pad_token_id: int,
                     batch_size: int = 512) -> torch.Tensor:
    """log π(y|x) of each sampled completion under ``model``, summed over its tokens. Shape: (N,)."""
    check_batch_size(batch_size)
    if not samples.prompts:
        raise ValueError("samples holds no completions to score: sample at least one prompt")
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(samples.prompts), batch_size):
        sl = slice(start, start + batch_size)
        batch = pad_rows(samples.prompt_ids[sl], samples.completion_ids[sl], pad_token_id)
        out.append(sequence_logprobs(model, **batch))
    model.train(was_training)
    return torch.cat(out)
