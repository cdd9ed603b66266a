"""Supervised fine-tuning (SFT): maximum likelihood on (prompt, completion) pairs. Its result is π_ref.

The loss is the mean negative log-likelihood of completion tokens (EOS included), the same tokens DPO scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dpo_teach.logprobs import pad_rows, sequence_logprobs
from dpo_teach.training import adamw, diverging, optimizer_step, set_lr
from dpo_teach.utils import lr_at, set_seed


@dataclass
class SFTConfig:
    steps: int = 600  # optimizer steps
    batch_size: int = 64  # sequences per step
    lr: float = 3e-3  # peak learning rate (AdamW), cosine decay to 10 % after a 5 % warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    seed: int = 0  # batch order and initialisation seed


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL per completion token of a padded batch (``pad_rows`` output)."""
    logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return -logps.sum() / batch["completion_mask"].sum()


def train_sft(
    model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], pad_token_id: int, config: SFTConfig,
    progress: bool = False,
) -> list[dict]:
    """Train ``model`` in place on tokenized ``(prompt_ids, completion_ids)`` examples.

    Each step draws ``batch_size`` examples with replacement (the corpus is generated, so epochs mean little here).

    Returns:
        The history: one dict per step with ``step``, ``loss`` and ``lr``.
    """
    set_seed(config.seed)
    optimizer = adamw(model.parameters(), config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    history = []
    for step in tqdm(range(config.steps), desc="SFT", disable=not progress):
        idx = torch.randint(len(examples), (config.batch_size,), generator=generator).tolist()
        batch = pad_rows([examples[i][0] for i in idx], [examples[i][1] for i in idx], pad_token_id)
        lr = lr_at(step, config.steps, config.lr)
        set_lr(optimizer, lr)
        loss = sft_loss(model, batch)
        with diverging("SFT", step, config.steps, lr, config):
            optimizer_step(optimizer, loss)
        history.append({"step": step, "loss": loss.item(), "lr": lr})
    model.eval()
    return history
