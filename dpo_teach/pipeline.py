"""The end-to-end demo: π_ref (cached) → preference pairs → DPO → evaluation → results on disk.

``run_demo`` is what ``dpo-teach demo`` and ``make demo`` run. Everything in ``metrics.json`` is a function of the
config and its seed (timings go to ``run.json``), so the same seed writes the same ``metrics.json`` on a CPU with
the same number of torch threads (another count sums in another order, which may change the last digits).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dpo_teach.data import PreferenceConfig, bt_ceiling, make_preference_pairs, split_heldout, write_preferences
from dpo_teach.dpo import FLAGS, DPOConfig, train_dpo
from dpo_teach.evaluate import evaluate_policy, evaluation_prompts, preference_accuracy, samples_table, win_rate
from dpo_teach.frontier import MIN_FLUENCY
from dpo_teach.logprobs import tokenize_pairs
from dpo_teach.losses import LABELS
from dpo_teach.model import context_length, load_checkpoint, save_checkpoint
from dpo_teach.plots import course_figures, plot_dpo_history, plot_reward_before_after, save_figure
from dpo_teach.preference_file import warn_cut
from dpo_teach.reward import ground_truth_reward
from dpo_teach.utils import atomic_dir, atomic_write_json, atomic_write_text, check_replaceable
from dpo_teach.world import WorldConfig, load_reference

# What a run writes in its output directory (the demo's files, and `dpo-teach train`'s): a directory that holds
# nothing else is a previous run, which a new run may replace as a whole.
RUN_OUTPUTS = frozenset({"metrics.json", "run.json", "history.json", "samples.md", "train.jsonl", "heldout.jsonl",
                         "training_curves.png", "reward_before_after.png", "policy"})
# What `dpo-teach train --out` may replace: an earlier train or demo run's outputs, but no preference file (the demo
# writes train.jsonl and heldout.jsonl; in a folder given to `train` they are as likely the user's own data)
TRAIN_OUTPUTS = RUN_OUTPUTS - {"train.jsonl", "heldout.jsonl"}


@dataclass
class DemoConfig:
    world: WorldConfig = field(default_factory=lambda: WorldConfig(preset="tiny"))  # π_ref to build or load
    prefs: PreferenceConfig = field(default_factory=lambda: PreferenceConfig(n_prompts=2400))  # pair generation
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(beta=1.0, lr=5e-4, epochs=3))  # DPO training
    eval_fraction: float = 1 / 6  # share of pairs held out for implicit-reward accuracy
    n_eval_prompts: int = 1000  # prompts sampled once each from π_ref and from π_θ for evaluation
    model_path: str | None = None  # a save_pretrained directory to use as π_ref instead of the toy model
    out_dir: str = "results/demo"  # where metrics, figures, samples and the policy go

    @classmethod
    def with_seed(cls, seed: int, **kwargs) -> DemoConfig:
        """Defaults with every seed (π_ref, pairs, batch order, evaluation) set to ``seed``."""
        cfg = cls(**kwargs)
        cfg.world.seed = cfg.prefs.seed = cfg.dpo.seed = seed
        return cfg


def results_table(metrics: dict) -> str:
    """The demo's summary as a plain-text table; the trained policy's column is named after its loss ("DPO")."""
    ref, pol = metrics["reference"], metrics["policy"]
    trained = LABELS[metrics["config"]["dpo"]["loss_type"]]
    rows = [
        ("mean ground-truth reward", f"{ref['reward']:+.3f}", f"{pol['reward']:+.3f}",
         f"gain {metrics['reward_gain']:+.3f}"),
        ("fluency (well-formed)", f"{ref['fluency']:.1%}", f"{pol['fluency']:.1%}",
         f"target ≥ {MIN_FLUENCY * 100:.0f} %"),
        ("KL(π‖π_ref), nats", f"{ref['kl']:.2f}", f"{pol['kl']:.2f}", f"± {pol['kl_sem']:.2f} (s.e.)"),
        ("mean completion tokens", f"{ref['length']:.1f}", f"{pol['length']:.1f}", ""),
        ("win rate vs π_ref", "0.500", f"{metrics['win_rate']:.3f}", "ties count ½"),
        ("held-out implicit-reward acc.", "—", f"{metrics['heldout_accuracy']:.3f}",
         f"BT-noise ceiling {metrics['bt_ceiling']:.3f}"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    w[2] = max(w[2], len(trained))
    head = f"{'':{w[0]}}  {'π_ref':>{w[1]}}  {trained:>{w[2]}}"
    return "\n".join([head] + [f"{a:{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows])


def drift_hint(metrics: dict) -> str | None:
    """What to try when the trained policy's text fell below the course's fluency target while π_ref's met it, else
    None.

    Reward bought with garbage text is drift from π_ref. Its two knobs are the learning rate (how far each step goes)
    and β (the pull back to π_ref, notebook 07's Exercise 7.5). On the toy task (seed 0), ten times the demo's learning
    rate (``--lr 5e-3``) left 0.2 % of completions well-formed at a KL of 24.7 nats; ``--beta 5`` on top brought 10 %
    back, ``--lr 1.5e-3`` 76 %. With a π_ref that is not fluent itself (a real checkpoint, which the toy grammar does
    not describe) there is nothing to say."""
    pol, ref = metrics["policy"], metrics["reference"]
    if pol["fluency"] >= MIN_FLUENCY or ref["fluency"] < MIN_FLUENCY:
        return None
    lr, default = metrics["config"]["dpo"]["lr"], DemoConfig().dpo.lr
    return (f"⚠ π_θ's text fell below the {MIN_FLUENCY * 100:.0f} % fluency target ({pol['fluency']:.1%} "
            f"well-formed, π_ref {ref['fluency']:.1%}) as it drifted {pol['kl']:.1f} nats from π_ref: its reward "
            f"gain is bought with garbage. Try a lower --lr (this run: {lr:g}; the demo's default: {default:g}) or a "
            "larger --beta, the pull back to π_ref (notebook 07, Exercise 7.5).")


def run_demo(config: DemoConfig, progress: bool = True, verbose: bool = True, reference: tuple | None = None) -> dict:
    """Run the whole job and write ``config.out_dir``. Returns the metrics dict (also in ``metrics.json``).

    The run is written into a temporary folder beside ``out_dir`` that replaces it at the end (``utils.atomic_dir``):
    an interrupted run leaves a previous run in ``out_dir`` intact, a finished one leaves only the new run.
    ``reference`` is π_ref already in hand, ``(model, tokenizer)``: the checkpoint of ``config.model_path`` (the CLI
    loads it to check its context first) or the toy π_ref of ``config.world`` that ``--rebuild`` has just built, so
    that it is not loaded twice.

    Raises:
        FileExistsError: ``out_dir`` is a file, holds files a run does not write (``RUN_OUTPUTS``: they stay), or
            holds ``config.model_path`` (π_ref, which the run would delete).
    """
    out = Path(config.out_dir)
    check_replaceable(out, RUN_OUTPUTS, "a demo run", inputs={"model_path": config.model_path})
    log = print if verbose else (lambda *a, **k: None)
    with atomic_dir(out) as work:
        metrics, times = _write_demo(config, work, out, progress, verbose, log, reference)
    log(f"\nwrote {out}/metrics.json, training_curves.png, reward_before_after.png, samples.md, policy/")
    log("timings: " + json.dumps({k: round(v, 1) for k, v in times.items()}))
    return metrics


def _write_demo(config: DemoConfig, out: Path, shown: Path, progress: bool, verbose: bool, log,
                in_hand: tuple | None) -> tuple[dict, dict[str, float]]:
    """The demo's steps, writing into ``out`` (a temporary folder); messages name ``shown``, where it ends up."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    if config.model_path:
        reference, tokenizer = in_hand or load_checkpoint(config.model_path)
        log(f"π_ref: loaded checkpoint {config.model_path}")
    else:
        reference, tokenizer = in_hand or load_reference(config.world, progress=progress, verbose=verbose)
    times["reference_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rows = make_preference_pairs(reference, tokenizer, config.prefs)
    train_rows, heldout_rows = split_heldout(rows, config.eval_fraction, config.prefs.seed, "the demo's sampled pairs",
                                             "eval_fraction", "sample more pairs (--pairs)")
    write_preferences(out / "train.jsonl", train_rows)
    write_preferences(out / "heldout.jsonl", heldout_rows)
    times["pairs_s"] = time.perf_counter() - t
    log(f"preference pairs: {len(train_rows)} train, {len(heldout_rows)} held out → {shown}/train.jsonl")

    t = time.perf_counter()
    examples = tokenize_pairs(tokenizer, train_rows, config.dpo.max_length)  # once: checked here, trained on
    warn_cut("the demo's sampled pairs", examples, tokenizer.eos_token_id, config.dpo.max_length,
             context_length(reference), stacklevel=1)
    policy = copy.deepcopy(reference)
    history = train_dpo(policy, reference, tokenizer, train_rows, config.dpo, progress=progress, flags=FLAGS,
                        examples=examples)
    times["dpo_s"] = time.perf_counter() - t
    save_checkpoint(policy, tokenizer, out / "policy")
    atomic_write_json(out / "history.json", history)

    t = time.perf_counter()
    prompts, eval_seed = evaluation_prompts(config.n_eval_prompts, config.prefs.seed)
    ref_metrics, ref_samples = evaluate_policy(reference, reference, tokenizer, prompts, eval_seed)
    pol_metrics, pol_samples = evaluate_policy(policy, reference, tokenizer, prompts, eval_seed)
    metrics = {
        "reference": ref_metrics,
        "policy": pol_metrics,
        "reward_gain": pol_metrics["reward"] - ref_metrics["reward"],
        "win_rate": win_rate(pol_samples, ref_samples),
        "heldout_accuracy": preference_accuracy(policy, reference, tokenizer, heldout_rows, config.dpo.max_length),
        "bt_ceiling": bt_ceiling(heldout_rows, config.prefs.bt_temperature)
        if all("chosen_reward" in r for r in heldout_rows) else None,
        "n_train_pairs": len(train_rows),
        "n_heldout_pairs": len(heldout_rows),
        "dpo_steps": len(history),
        "final_train_loss": history[-1]["loss"],
        "config": asdict(config),
    }
    times["eval_s"] = time.perf_counter() - t
    metrics["config"].pop("out_dir")
    if config.model_path:  # π_ref came from the checkpoint: the toy world's settings were not used
        metrics["config"]["world"] = None

    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "run.json", {"timings_s": times, "torch": torch.__version__})
    trained = LABELS[config.dpo.loss_type]
    atomic_write_text(out / "samples.md", f"# Sample completions before (π_ref) and after {trained}\n\nSame prompts, "
                      "one sample each at temperature 1. ✓ = well-formed sentence ended by EOS; ✗ = not "
                      "(ungrammatical, or cut at the length limit).\n\n"
                      + samples_table({"π_ref": ref_samples, trained: pol_samples}, n=40))
    with course_figures():
        save_figure(plot_dpo_history(history, title=f"{trained} training"), out / "training_curves.png")
        save_figure(plot_reward_before_after(ground_truth_reward(ref_samples.completions),
                                             ground_truth_reward(pol_samples.completions), ref_metrics, pol_metrics,
                                             trained=trained),
                    out / "reward_before_after.png")
    log("\n" + results_table(metrics))
    hint = drift_hint(metrics)
    if hint:
        log(hint)
    return metrics, times
