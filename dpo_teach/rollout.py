"""Rollouts for on-policy RL: sampled completions laid out as a batch, and their per-token log-probs.

PPO scores every completion token separately (a KL penalty per token, a value per token), so the batch layout
differs from :mod:`dpo_teach.logprobs`, which sums. Prompts are padded on the left and completions on the right,
so every completion starts in the same column ``P`` (TRL's query/response layout)::

    input_ids   [pad pad  x1  x2 | y1  y2  EOS pad]      P = 4 prompt columns, L = 4 completion columns
    response    [               |  1   1   1   0 ]      response_mask, Shape: (N, L)

Column ``P - 1 + t`` of the model's output predicts completion token ``t``; that is where per-token log-probs
and values are read. Shape letters: N completions, P prompt columns, L completion columns, T = P + L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpo_teach.logprobs import position_ids


@dataclass
class RolloutBatch:
    """Prompt + completion token ids of N sampled completions, prompts left-padded, completions right-padded."""

    input_ids: torch.Tensor  # (N, T) token ids, T = P + L
    attention_mask: torch.Tensor  # (N, T) 1 on real tokens
    response_mask: torch.Tensor  # (N, L) float, 1 on completion tokens (EOS included)
    prompt_len: int  # P, the column where every completion starts

    def __getitem__(self, idx) -> RolloutBatch:
        """Rows ``idx`` (a slice or an index tensor), e.g. a PPO minibatch."""
        return RolloutBatch(self.input_ids[idx], self.attention_mask[idx], self.response_mask[idx], self.prompt_len)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate_rollout(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int) -> RolloutBatch:
    """Lay out prompts and completions as a :class:`RolloutBatch`.

    Example::

        >>> b = collate_rollout([[1, 2], [3]], [[4, 0], [5, 6, 0]], pad_token_id=0)
        >>> b.input_ids
        tensor([[1, 2, 4, 0, 0],
                [0, 3, 5, 6, 0]])
        >>> b.response_mask
        tensor([[1., 1., 0.],
                [1., 1., 1.]])
    """
    P = max(len(p) for p in prompt_ids)
    L = max(1, max(len(c) for c in completion_ids))
    N = len(prompt_ids)
    input_ids = torch.full((N, P + L), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((N, P + L), dtype=torch.long)
    response_mask = torch.zeros((N, L))
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[i, P - len(p):P + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, P - len(p):P + len(c)] = 1
        response_mask[i, :len(c)] = 1.0
    return RolloutBatch(input_ids, attention_mask, response_mask, P)


def token_logprobs(model: torch.nn.Module, batch: RolloutBatch, with_entropy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) of every completion token, and optionally the entropy of π at that position.

    Args:
        model: a causal LM in GPT-2 layout (``.transformer`` and ``.lm_head``).
        batch: the rollout.
        with_entropy: also return H(π(· | x, y_<t)) per position (for the ``objective/entropy`` metric).

    Returns:
        ``(logps, entropy)``, each Shape: (N, L); zero where ``response_mask`` is 0. ``entropy`` is None unless
        asked for.
    """
    P, mask = batch.prompt_len, batch.response_mask
    hidden = model.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
    logits = model.lm_head(hidden[:, P - 1:-1]).float()  # (N, L, V): column P-1+t predicts completion token t
    logp_all = F.log_softmax(logits, dim=-1)  # (N, L, V)
    targets = batch.input_ids[:, P:]  # (N, L)
    logps = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask  # (N, L)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1) * mask  # (N, L)
    return logps, entropy
