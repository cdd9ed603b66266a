"""DPO training throughput, ours vs TRL's ``DPOTrainer``, side by side on the same weights, rows and batch size.

Both sides precompute the reference log-probs once (TRL: ``precompute_ref_log_probs=True``) and that one-off pass is
*excluded*: each side stamps the clock at the end of every optimizer step, the first ``WARMUP`` steps are dropped, and
pairs/s is measured over windows of whole steps. Runs alternate ours/TRL (and which goes first) to spread the noise of
a shared machine evenly, and the median window is reported.

Run alone: ``python benchmarks/bench_throughput.py [--preset tiny]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

from common import quiet_offline, set_threads, window_rates, world_and_pairs

BATCH = 32  # preference pairs per step (both sides)
MAX_LENGTH = 64  # prompt + completion tokens (both sides)
BETA = 1.0  # the demo's β
LR = 5e-4  # the demo's learning rate
WARMUP = 3  # steps dropped at the start of each run
WINDOW = 15  # steps per timed window
WINDOWS_PER_RUN = 2  # timed windows per run
STEPS = WARMUP + WINDOW * WINDOWS_PER_RUN  # steps per run (= rows / BATCH: one epoch, no partial batch)


def ours_stamps(reference, tokenizer, rows: list[dict]) -> list[float]:
    """Clock at the end of each step of ``dpo_teach.dpo.train_dpo`` (precomputed reference) on a copy of π_ref."""
    from dpo_teach.dpo import DPOConfig, train_dpo

    stamps: list[float] = []
    config = DPOConfig(beta=BETA, lr=LR, batch_size=BATCH, max_length=MAX_LENGTH, precompute_ref=True)
    train_dpo(copy.deepcopy(reference), reference, tokenizer, rows, config,
              callback=lambda _: stamps.append(time.perf_counter()))
    return stamps


def trl_stamps(reference, tokenizer, rows: list[dict]) -> list[float]:
    """Clock at the end of each step of TRL's ``DPOTrainer.train`` in its fastest CPU configuration.

    No bf16, no gradient checkpointing, no evaluation or checkpoint saving, no progress bar, default logging, data
    loading in the main process, reference log-probs precomputed (the policy's initial weights serve as π_ref, so no
    second model is kept).
    """
    import trl
    from transformers import PrinterCallback, TrainerCallback

    from dpo_teach import trl_bridge

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = trl_bridge.cpu_config(  # bf16, fp16 and gradient checkpointing off, no progress bar, no workers
            out, BETA, MAX_LENGTH, BATCH, learning_rate=LR, num_train_epochs=1, precompute_ref_log_probs=True,
            eval_strategy="no", save_strategy="no", dataloader_pin_memory=False, seed=0,
        )
        trainer = trl.DPOTrainer(model=copy.deepcopy(reference), args=args, processing_class=tokenizer,
                                 train_dataset=trl_bridge.to_dataset(rows), callbacks=[Stamp()])
        trainer.remove_callback(PrinterCallback)  # logs are still computed every 10 steps, just not printed
        trainer.train()
    return stamps


def compare(preset: str = "tiny", repeats: int = 3, verbose: bool = True) -> dict:
    """Alternate ``repeats`` runs of each side on ``preset``; return medians of pairs/s and the speed-up."""
    quiet_offline()
    reference, tokenizer, rows = world_and_pairs(preset, STEPS * BATCH)
    sides = {"ours": ours_stamps, "trl": trl_stamps}
    rates: dict[str, list[float]] = {"ours": [], "trl": []}
    for rep in range(repeats + 1):  # run 0 warms up both sides (imports, allocator, thread pools) and is dropped
        order = ["ours", "trl"] if rep % 2 == 0 else ["trl", "ours"]
        for name in order:
            stamps = sides[name](reference, tokenizer, rows)
            assert len(stamps) == STEPS, f"{name}: {len(stamps)} steps, expected {STEPS}"
            if rep > 0:
                rates[name] += window_rates(stamps, WARMUP, WINDOW, BATCH)
        if verbose and rep > 0:
            print(f"  [{preset}] run {rep}: ours {statistics.median(rates['ours']):.0f} pairs/s, "
                  f"TRL {statistics.median(rates['trl']):.0f} pairs/s (running medians)", flush=True)
    ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["trl"])
    return {"preset": preset, "ours_pairs_per_s": ours, "trl_pairs_per_s": theirs, "speedup": ours / theirs,
            "ours_windows": rates["ours"], "trl_windows": rates["trl"], "batch_size": BATCH,
            "max_length": MAX_LENGTH, "beta": BETA, "steps_per_window": WINDOW}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (%(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (%(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args()
    set_threads(args.threads)
    r = compare(args.preset, args.repeats)
    print(f"{args.preset}: ours {r['ours_pairs_per_s']:.0f} pairs/s, TRL {r['trl_pairs_per_s']:.0f} pairs/s, "
          f"speed-up {r['speedup']:.2f}x")


if __name__ == "__main__":
    main()
