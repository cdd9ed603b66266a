"""Stage 1 of classic RLHF: a reward model r_φ(x, y) learned from preference pairs with the Bradley–Terry loss.

    L_R(r_φ) = −E_{(x, y_w, y_l)}[ log σ( r_φ(x, y_w) − r_φ(x, y_l) ) ]        (Eq. 2 in Rafailov et al. 2023)

The model is π_ref's GPT-2 body with a linear head that maps the hidden state of the last token (the EOS that
ends y) to one number, as in Ouyang et al. 2022 and TRL's ``RewardTrainer``. It trains on the very pairs DPO
uses. The same body-plus-head class, read at every position instead of the last, is PPO's value model.

Bradley–Terry only identifies r up to a shift per prompt, and our labels carry noise of temperature τ, so the
learned scores are on an arbitrary scale (about r/τ). :class:`LearnedReward` therefore standardises them to mean 0
and standard deviation 1 on π_ref's own completions (Ziegler et al. 2019) before PPO sees them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from dpo_teach.compute import Compute
from dpo_teach.logprobs import PreferenceCollator, encode_completion, pad_rows, position_ids, tokenize_pairs
from dpo_teach.losses import bradley_terry_loss
from dpo_teach.training import adamw, diverging, minibatches, n_steps, optimizer_step, set_lr
from dpo_teach.utils import lr_at, set_seed


class ScalarModel(torch.nn.Module):
    """A GPT-2 body with a linear head giving one scalar per position: a reward model or a value model."""

    def __init__(self, backbone: torch.nn.Module, head_std: float | None = None):
        """``head_std``: std of the head's initial weights; None gives 1/√(d+1) (OpenAI's lm-human-preferences;
        Huang et al. 2024, "The N+ implementation details of RLHF with PPO"), 0 starts at 0."""
        super().__init__()
        self.backbone = backbone
        d = backbone.config.n_embd
        self.head = torch.nn.Linear(d, 1)
        torch.nn.init.normal_(self.head.weight, std=1 / np.sqrt(d + 1) if head_std is None else head_std)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, lm: torch.nn.Module, head_std: float | None = None) -> ScalarModel:
        """A copy of ``lm``'s body (``lm.transformer``) with a fresh head; ``lm`` is left untouched."""
        return cls(copy.deepcopy(lm.transformer), head_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One scalar per position. Shape: (N, T) for inputs of Shape: (N, T)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1)  # (N, T)


def last_token_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The value at each row's last real token (right or left padding). Shape: (N,) from (N, T)."""
    T = attention_mask.shape[1]
    last = (attention_mask * torch.arange(T, device=attention_mask.device)).argmax(-1)  # (N,)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


@dataclass
class RewardConfig:
    lr: float = 1e-3  # peak learning rate (AdamW), 5 % warm-up then cosine decay
    batch_size: int = 32  # preference pairs per step
    epochs: int = 2  # passes over the training pairs
    max_length: int = 64  # prompt + completion tokens
    seed: int = 0  # head initialisation and batch-order seed


def pair_scores(rm: ScalarModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """r_φ on the chosen and rejected rows of a ``PreferenceCollator`` batch. Returns two of Shape: (B,)."""
    scores = last_token_scores(rm(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])  # (2B,)
    B = scores.shape[0] // 2
    return scores[:B], scores[B:]


def train_reward_model(reference: torch.nn.Module, tokenizer, rows: list[dict], config: RewardConfig,
                       compute: Compute | None = None, progress: bool = False) -> tuple[ScalarModel, list[dict]]:
    """Fit r_φ (initialised from ``reference``'s body) to preference ``rows`` with the Bradley–Terry loss.

    Returns:
        ``(reward_model, history)``; one history dict per step with ``step``, ``epoch``, ``lr``, ``loss``,
        ``accuracy`` (share of pairs with r(y_w) > r(y_l)) and ``margin`` (mean r(y_w) − r(y_l)).
    """
    set_seed(config.seed)
    rm = ScalarModel.from_causal_lm(reference)
    examples = tokenize_pairs(tokenizer, rows, config.max_length)
    collate = PreferenceCollator(tokenizer.pad_token_id)
    optimizer = adamw(rm.parameters(), config.lr)
    total = n_steps(len(examples), config.batch_size, config.epochs)
    batches = minibatches(len(examples), config.batch_size, config.epochs, torch.Generator().manual_seed(config.seed))
    history: list[dict] = []
    rm.train()
    for step, (epoch, idx) in enumerate(tqdm(batches, total=total, desc="reward model", disable=not progress)):
        batch = collate([examples[i] for i in idx.tolist()])
        lr = lr_at(step, total, config.lr)
        set_lr(optimizer, lr)
        chosen, rejected = pair_scores(rm, batch)  # r_φ(x, y_w), r_φ(x, y_l), (B,) each
        loss = bradley_terry_loss(chosen, rejected).mean()  # Eq. 2
        with diverging("The reward model", step, total, lr, config):
            optimizer_step(optimizer, loss)
        if compute is not None:
            compute.add(forward=2 * len(chosen), backward=2 * len(chosen))
        history.append({"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(),
                        "accuracy": (chosen > rejected).float().mean().item(),
                        "margin": (chosen - rejected).mean().item()})
    rm.eval()
    return rm, history


@torch.no_grad()
def pairwise_accuracy(rm: ScalarModel, tokenizer, rows: list[dict], max_length: int = 64,
                      batch_size: int = 256) -> float:
    """Share of pairs the reward model orders like the label, r_φ(x, y_w) > r_φ(x, y_l) (ties count as wrong)."""
    examples = tokenize_pairs(tokenizer, rows, max_length)
    collate = PreferenceCollator(tokenizer.pad_token_id)
    rm.eval()
    correct = 0
    for start in range(0, len(examples), batch_size):
        chosen, rejected = pair_scores(rm, collate(examples[start:start + batch_size]))
        correct += int((chosen > rejected).sum())
    return correct / len(examples)


@torch.no_grad()
def score_completions(rm: ScalarModel, tokenizer, prompts: list[str], completions: list[str],
                      batch_size: int = 256) -> torch.Tensor:
    """Raw r_φ(x, y) of completion texts, encoded exactly like the training pairs (y + EOS). Shape: (N,).

    A completion cut at the length limit before its EOS is scored as if it had ended there (TRL's
    ``missing_eos_penalty`` is one way to charge for running on; π_ref's samples end well within the limit)."""
    rm.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = [encode_completion(tokenizer, p, c)
               for p, c in zip(prompts[start:start + batch_size], completions[start:start + batch_size], strict=True)]
        batch = pad_rows([e[0] for e in enc], [e[1] for e in enc], tokenizer.pad_token_id)
        values = rm(batch["input_ids"], batch["attention_mask"])
        out.append(last_token_scores(values, batch["attention_mask"]))
    return torch.cat(out)


class LearnedReward:
    """The reward PPO optimises in classic RLHF: r_φ standardised on π_ref's completions, with a call counter.

    Call it like the ground truth: ``reward(prompts, completions) -> np.ndarray`` of Shape: (N,).
    """

    def __init__(self, rm: ScalarModel, tokenizer, rows: list[dict], compute: Compute | None = None):
        """Standardise with the mean and std of r_φ over the chosen and rejected completions of ``rows``; that pass
        (2 × len(rows) sequences through r_φ) is part of building the reward, so it adds to ``compute``."""
        self.rm, self.tokenizer = rm, tokenizer
        raw = score_completions(rm, tokenizer, [r["prompt"] for r in rows] * 2,
                                [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
        if compute is not None:
            compute.add(forward=2 * len(rows))
        self.mean, self.std = raw.mean().item(), raw.std().item() + 1e-8
        self.calls = 0  # completions scored so far (not counting the standardisation pass)

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        self.calls += len(completions)
        raw = score_completions(self.rm, self.tokenizer, prompts, completions)
        return ((raw - self.mean) / self.std).double().numpy()
