"""Sequence log-probabilities: log π(y | x) = Σ_t log π(y_t | x, y_<t), summed over completion tokens only.

The prompt x and the padding are masked out; the EOS that ends y is a completion token (the model must learn to
stop). This is the convention of the DPO paper, Mitchell's reference code and TRL. Chosen and rejected
completions go through the model in one concatenated forward: rows ``[:B]`` chosen, rows ``[B:]`` rejected.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpo_teach.model import ContextLengthError, context_length


class _UnmaskedPaddingWarning(logging.Filter):
    """Drop transformers' "pass an attention_mask" warning where leaving the mask out is deliberate.

    :func:`sequence_logprobs` feeds right-padded batches without a mask (the causal mask already keeps padding out
    of every real token's context), and GPT-2's padding id is its EOS id, so transformers suspects a mistake.
    tests/test_logprobs.py checks the padded scores against unpadded ones.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


_WARNING_FILTER = _UnmaskedPaddingWarning()


def _quiet_unmasked_padding_warning() -> None:
    """Install the filter above (once) when the first unmasked batch is scored, not at import time."""
    logger = logging.getLogger("transformers.modeling_utils")
    if _WARNING_FILTER not in logger.filters:
        logger.addFilter(_WARNING_FILTER)


def check_batch_size(batch_size: int) -> None:
    """Raise ValueError unless ``batch_size`` is a positive integer (``range`` would skip every example, or fail)."""
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so left padding does not shift them. Shape: (N, T)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def encode_completion(tokenizer, prompt: str, completion: str, append_eos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``completion`` + EOS, tokenized separately.

    Tokenizing the two apart means the model is trained on exactly the context it sees when it samples a
    completion after the prompt. Start completions with a space so that BPE would not merge across the boundary
    anyway (then this equals tokenizing ``prompt + completion`` whole, as TRL does).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if append_eos:  # False: the text alone decides whether the completion ends (notebook 07's EOS pitfall)
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def pad_rows(
    prompts: list[list[int]], completions: list[list[int]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Concatenate each prompt with its completion and pad the rows to one length.

    Returns:
        ``input_ids``, ``attention_mask`` (1 on real tokens) and ``completion_mask`` (1 on completion tokens),
        each of shape (N, T) where N = ``len(prompts)`` and T the longest row.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    T = max(len(r) for r in rows)
    pads = [[pad_token_id] * (T - len(r)) for r in rows]
    input_ids = torch.tensor([r + q if padding_side == "right" else q + r for r, q in zip(rows, pads)],
                             dtype=torch.long).view(len(rows), T)  # (N, T)
    length = torch.tensor([len(r) for r in rows]).unsqueeze(1)  # (N, 1)
    prompt_length = torch.tensor([len(p) for p in prompts]).unsqueeze(1)  # (N, 1)
    start = torch.zeros_like(length) if padding_side == "right" else T - length  # (N, 1) first real token
    end = start + length  # (N, 1) one past the last real token
    position = torch.arange(T).unsqueeze(0)  # (1, T)
    attention_mask = ((position >= start) & (position < end)).long()  # (N, T)
    completion_mask = ((position >= start + prompt_length) & (position < end)).long()  # (N, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


@dataclass
class PreferenceCollator:
    """Pads tokenized preference pairs into one batch: chosen rows first, then rejected rows.

    Example::

        >>> collate = PreferenceCollator(pad_token_id=0)
        >>> batch = collate([
        ...     {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
        ...     {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11]},
        ... ])
        >>> batch["input_ids"]
        tensor([[ 1,  2,  3,  4,  5],
                [ 7,  8,  9,  0,  0],
                [ 1,  2,  3,  6,  0],
                [ 7,  8, 10, 11,  0]])
        >>> batch["completion_mask"]
        tensor([[0, 0, 0, 1, 1],
                [0, 0, 1, 0, 0],
                [0, 0, 0, 1, 0],
                [0, 0, 1, 1, 0]])

    Extra per-example float fields named in ``extra_keys`` (e.g. precomputed ``ref_chosen_logps``) are stacked
    into tensors of shape (B,).
    """

    pad_token_id: int
    padding_side: str = "right"
    extra_keys: tuple[str, ...] = ()

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [e["prompt_ids"] for e in examples] * 2
        completions = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        batch = pad_rows(prompts, completions, self.pad_token_id, self.padding_side)
        for key in self.extra_keys:
            batch[key] = torch.tensor([float(e[key]) for e in examples])
        return batch


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    average: bool = False,
) -> torch.Tensor:
    """Summed log-probability of the completion tokens of each row.

    Only positions whose *next* token is a completion token go through the LM head, so prompt and padding
    cost nothing there. Position ids follow the attention mask, so left and right padding give the same numbers.
    With right padding the mask is not needed at all (causal attention never looks ahead, and padding only follows
    the real tokens), which lets attention take its faster unmasked causal path.

    Args:
        model: a causal LM with ``.transformer`` and ``.lm_head`` (GPT-2 layout), or any model returning ``logits``.
        input_ids: Shape: (N, T).
        attention_mask: Shape: (N, T), 1 on real tokens.
        completion_mask: Shape: (N, T), 1 on the tokens whose log-probs are summed.
        average: divide by the number of completion tokens (length-normalized variant; not the paper's default).

    Returns:
        Shape: (N,). log π(y | x) per row.
    """
    T = input_ids.shape[1]
    context = context_length(model)
    if context is not None and T - 1 > context:  # past it GPT-2 has no position embedding: an IndexError in torch
        raise ContextLengthError(f"sequences of {T} tokens do not fit the model's context of {context} tokens "
                                 f"(n_positions); use max_length (--max-length) {context} or less")
    targets = completion_mask[:, 1:].bool()  # (N, T-1): token t+1 is scored from position t
    labels = input_ids[:, 1:][targets]  # (M,) M = completion tokens in the batch
    # The last position predicts no token, so it is not fed in (causal attention leaves the others unchanged).
    fed = max(T - 1, 1)
    inputs = {"input_ids": input_ids[:, :fed], "use_cache": False}  # (N, T-1)
    right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())  # every row is 1…1 0…0
    if not right_padded:  # left padding: mask it and start each row's positions at its first real token
        inputs["attention_mask"] = attention_mask[:, :fed]
        inputs["position_ids"] = position_ids(attention_mask)[:, :fed]  # (N, T-1)
    else:
        _quiet_unmasked_padding_warning()
    if hasattr(model, "transformer") and hasattr(model, "lm_head"):
        hidden = model.transformer(**inputs).last_hidden_state  # (N, T-1, d)
        logits = model.lm_head(hidden[:, :T - 1][targets])  # (M, V)
    else:
        logits = model(**inputs).logits[:, :T - 1][targets]  # (M, V)
    token_logps = -F.cross_entropy(logits.float(), labels, reduction="none")  # (M,)
    row = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(targets)[targets]  # (M,)
    logps = torch.zeros(input_ids.shape[0], device=input_ids.device, dtype=token_logps.dtype)
    logps = logps.index_add(0, row, token_logps)  # (N,)
    if average:
        logps = logps / targets.sum(-1).clamp(min=1)
    return logps


def concatenated_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs from one forward over the 2B rows of a ``PreferenceCollator`` batch.

    Returns:
        ``(chosen_logps, rejected_logps)``, each Shape: (B,).
    """
    N = batch["input_ids"].shape[0]
    if N % 2:  # halves of unequal size would pair each chosen row with another pair's rejected one
        raise ValueError(f"batch has {N} rows; concatenated_logprobs needs 2B: B chosen rows, then their B rejected "
                         "rows (a PreferenceCollator batch)")
    logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], average)
    B = N // 2
    return logps[:B], logps[B:]


def tokenize_pairs(tokenizer, rows: list[dict], max_length: int, append_eos: bool = True) -> list[dict]:
    """Tokenize preference rows into ``prompt_ids``/``chosen_ids``/``rejected_ids`` (completions end with EOS,
    unless cut at ``max_length``).

    A completion that would run past ``max_length`` together with its prompt is cut at the end (TRL's
    ``keep_start``); the loader has already rejected prompts that leave no room at all.
    """
    out = []
    for i, row in enumerate(rows):
        prompt_ids, chosen_ids = encode_completion(tokenizer, row["prompt"], row["chosen"], append_eos)
        _, rejected_ids = encode_completion(tokenizer, row["prompt"], row["rejected"], append_eos)
        if not prompt_ids:  # the first completion token is scored from the last prompt token: there would be none
            raise ValueError(f"row {i}: the prompt {row['prompt']!r} has no tokens; every prompt needs at least one "
                             "token (the completion's first token is scored from it)")
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ContextLengthError(f"prompt {row['prompt'][:40]!r}... is {len(prompt_ids)} tokens, which leaves no "
                                     f"room for a completion within max_length={max_length}; raise --max-length")
        out.append({"prompt_ids": prompt_ids, "chosen_ids": chosen_ids[:room], "rejected_ids": rejected_ids[:room]})
    return out


REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")  # what reference_logprobs adds to each example
SPOT_CHECKED = 4  # examples whose carried log-probs are scored again by the reference they are used with (spread
# over the list, first and last included: a list whose end was joined on from another source is caught)


@torch.no_grad()
def reference_logprobs(reference: torch.nn.Module, examples: list[dict], pad_token_id: int,
                       batch_size: int = 256) -> list[dict]:
    """Return copies of tokenized ``examples`` with ``ref_chosen_logps`` and ``ref_rejected_logps`` added.

    One pass of π_ref over the data, under ``no_grad``: legal because π_ref is fixed (its log-probs do not depend
    on θ), so they can be computed once before training and cached with the pairs, and once for every run that
    trains or evaluates on the same pairs (:func:`with_reference_logprobs`).
    """
    check_batch_size(batch_size)
    collate = PreferenceCollator(pad_token_id)
    reference.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        chosen, rejected = concatenated_logprobs(reference, collate(chunk))
        for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            out.append({**e, "ref_chosen_logps": c, "ref_rejected_logps": r})
    return out


def with_reference_logprobs(reference: torch.nn.Module, examples: list[dict], pad_token_id: int,
                            batch_size: int = 256) -> list[dict]:
    """``examples`` with π_ref's log-probs: as they are when every one carries them already (computed once, by
    :func:`reference_logprobs`, for several runs on the same pairs), else :func:`reference_logprobs` of them.

    Carried log-probs must be ``reference``'s: all finite, and a few examples, spread from the first to the last, are
    scored again; a mismatch (log-probs of another model, or of other pairs) raises ``ValueError`` instead of training
    against the wrong reference.
    """
    if not examples or not all(key in e for e in examples for key in REF_KEYS):
        return reference_logprobs(reference, examples, pad_token_id, batch_size)
    nonfinite = [(i, key) for i, e in enumerate(examples) for key in REF_KEYS if not math.isfinite(e[key])]
    if nonfinite:  # nan would pass the comparison below (nan > tolerance is False)
        i, key = nonfinite[0]
        raise ValueError(f"example {i} carries {key} = {examples[i][key]}, not a log-probability ({len(nonfinite)} "
                         "such values in all): pass examples without ref_chosen_logps/ref_rejected_logps, or compute "
                         "them with reference_logprobs(reference, ...)")
    picked = sorted({round(k * (len(examples) - 1) / max(1, SPOT_CHECKED - 1)) for k in range(SPOT_CHECKED)})
    again = reference_logprobs(reference, [examples[i] for i in picked], pad_token_id)  # copies, scored anew
    for i, scored in zip(picked, again, strict=True):
        carried = examples[i]
        for key in REF_KEYS:
            if abs(carried[key] - scored[key]) > 1e-3 + 1e-4 * abs(scored[key]):
                raise ValueError(f"example {i} carries {key} = {carried[key]:.4f}, but the reference model gives "
                                 f"{scored[key]:.4f} for it: the examples' log-probs come from another model (or "
                                 "other pairs). Pass examples without ref_chosen_logps/ref_rejected_logps, or "
                                 "compute them with reference_logprobs(reference, ...) for this reference.")
    return examples
