"""What DPO costs over plain SFT: one DPO step with cached reference log-probs / one SFT step, same tokens.

Both steps see the same padded batch of 2B rows (B chosen + B rejected completions after their prompts) and run the
same AdamW update with gradient clipping; each does what its training loop does per step (DPO: ``dpo_loss`` and its
TRL-named metrics; SFT: ``sft_loss`` and its scalar). With π_ref's log-probs cached, DPO's extra work is a handful of
(B,)-sized tensor operations, so the ratio should be close to 1. The two steps are timed back to back, many times,
alternating which goes first; the median ratio is reported.

Run alone: ``python benchmarks/bench_steps.py [--preset tiny]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import quiet_offline, set_threads, world_and_pairs

BATCH = 32  # preference pairs per step, i.e. 64 sequences
MAX_LENGTH = 64
BETA = 1.0


def fixed_batch(reference, tokenizer, rows: list[dict]) -> dict[str, torch.Tensor]:
    """One padded preference batch with ``ref_chosen_logps``/``ref_rejected_logps`` precomputed."""
    from dpo_teach.logprobs import PreferenceCollator, reference_logprobs, tokenize_pairs

    pad = tokenizer.pad_token_id
    examples = reference_logprobs(reference, tokenize_pairs(tokenizer, rows, MAX_LENGTH), pad)
    return PreferenceCollator(pad, extra_keys=("ref_chosen_logps", "ref_rejected_logps"))(examples)


def make_steps(reference, batch):
    """``(dpo_step, sft_step)``: closures that each train their own copy of π_ref by one step on ``batch``."""
    from dpo_teach.logprobs import concatenated_logprobs
    from dpo_teach.losses import dpo_loss, step_metrics
    from dpo_teach.sft import sft_loss

    def update(model, optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    dpo_model, sft_model = copy.deepcopy(reference).train(), copy.deepcopy(reference).train()
    dpo_opt = torch.optim.AdamW(dpo_model.parameters(), lr=5e-4, weight_decay=0.0)
    sft_opt = torch.optim.AdamW(sft_model.parameters(), lr=5e-4, weight_decay=0.0)

    def dpo_step():
        chosen, rejected = concatenated_logprobs(dpo_model, batch)  # (B,), (B,)
        out = dpo_loss(chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=BETA)
        update(dpo_model, dpo_opt, out[0].mean())
        step_metrics(*out, chosen, rejected)

    def sft_step():
        loss = sft_loss(sft_model, batch)
        update(sft_model, sft_opt, loss)
        loss.item()

    return dpo_step, sft_step


def _timed(step, n: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def step_ratio(preset: str = "tiny", pairs: int = 40, verbose: bool = True) -> dict:
    """Median over ``pairs`` back-to-back (DPO step, SFT step) pairs of their time ratio, alternating who goes first.

    Timing the two steps right after each other means both see the same load from anything else on the machine.
    """
    quiet_offline()
    reference, tokenizer, rows = world_and_pairs(preset, BATCH)
    dpo_step, sft_step = make_steps(reference, fixed_batch(reference, tokenizer, rows))
    for step in (dpo_step, sft_step):  # warm-up
        _timed(step, 3)
    dpo_s, sft_s = [], []
    for i in range(pairs):
        if i % 2 == 0:
            dpo_s.append(_timed(dpo_step))
            sft_s.append(_timed(sft_step))
        else:
            sft_s.append(_timed(sft_step))
            dpo_s.append(_timed(dpo_step))
    ratios = [d / s for d, s in zip(dpo_s, sft_s)]
    result = {"preset": preset, "ratio": statistics.median(ratios), "pairs": pairs,
              "dpo_step_ms": 1000 * statistics.median(dpo_s), "sft_step_ms": 1000 * statistics.median(sft_s),
              "batch_pairs": BATCH}
    if verbose:
        print(f"  [{preset}] DPO step {result['dpo_step_ms']:.1f} ms, SFT step {result['sft_step_ms']:.1f} ms "
              f"(medians), median ratio {result['ratio']:.3f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (%(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args()
    set_threads(args.threads)
    step_ratio(args.preset)


if __name__ == "__main__":
    main()
