"""The preference-optimisation family on the toy world: the DPO paper's §6.1 experiment (Fig. 2, left) in minutes,
extended to GRPO, RLOO and online DPO.

For each seed: sample a preference set from π_ref; train DPO on it for every β of a sweep; train a reward model on
the same pairs and run PPO, GRPO and RLOO on it ("PPO", "GRPO", "RLOO") for every KL coefficient / β of their
sweeps; run PPO and GRPO on the ground-truth reward itself ("PPO-GT", "GRPO-GT", which need no pairs but ask "the
human" about every completion they sample; "GRPO-GT/token" is GRPO-GT with per-token loss averaging); run online DPO
("online-DPO": rounds of fresh pairs from the current policy, labelled like the preference set, reference refreshed
between rounds; "online-DPO-fixed": reference kept at π_ref; "online-DPO-RM": pairs labelled by the reward model).
Every run is
evaluated at regular intervals on the same prompts: mean ground-truth reward, sequence KL(π‖π_ref) and fluency.
Each run's wall and CPU time (evaluation excluded), completions sampled, reward calls, forward/backward passes,
models held and peak memory are recorded (one run: :mod:`dpo_teach.runs`). Seeds run in parallel processes, one
torch thread each. :mod:`dpo_teach.frontier` turns the results into the frontier, :mod:`dpo_teach.conclusions` into
the table and the sentences; :mod:`dpo_teach.measure` measures time and memory. ``dpo-teach compare`` runs it all
and writes ``results/compare/``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dpo_teach.compute import Compute
from dpo_teach.data import PreferenceConfig, bt_ceiling, make_preference_pairs, split_pairs
from dpo_teach.dpo import DPOConfig
from dpo_teach.frontier import METHODS, USES_REWARD_MODEL
from dpo_teach.grpo import GRPOConfig
from dpo_teach.measure import PeakMemory, load_average, stopwatch
from dpo_teach.online_dpo import OnlineDPOConfig
from dpo_teach.ppo import PPOConfig
from dpo_teach.reward_model import LearnedReward, RewardConfig, pairwise_accuracy, train_reward_model
from dpo_teach.runs import Evaluator, run_dpo, run_group, run_online_dpo, run_ppo
from dpo_teach.utils import environment, torch_threads
from dpo_teach.world import WorldConfig, load_reference

FORMAT = 1  # bump when the layout of results.json changes


@dataclass
class CompareConfig:
    world: WorldConfig = field(default_factory=lambda: WorldConfig(preset="tiny"))  # π_ref, shared by all seeds
    n_prompts: int = 2400  # prompts of the preference set (two samples each); DPO and the RM train on it
    seeds: tuple[int, ...] = (0, 1)  # one full repetition per seed: pairs, RM, every run, evaluation prompts
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)  # DPO's β sweep
    kl_coefs: tuple[float, ...] = (0.02, 0.05, 0.1, 0.3)  # PPO's and PPO-GT's KL-coefficient sweep
    grpo_betas: tuple[float, ...] = (0.0, 0.1, 0.5)  # GRPO's, GRPO-GT's and GRPO-GT/token's β sweep (k3 in the loss)
    rloo_kl_coefs: tuple[float, ...] = (0.02, 0.1, 0.3)  # RLOO's KL-coefficient sweep (sequence KL in the reward)
    online_betas: tuple[float, ...] = (1.0, 3.0, 10.0)  # the β sweep of online-DPO, -fixed and -RM
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(lr=5e-4, epochs=3))  # the demo's DPO settings
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(steps=20))  # PPO settings (kl_coef is swept)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # GRPO and RLOO settings (β is swept); 128 samples a step
    online: OnlineDPOConfig = field(default_factory=OnlineDPOConfig)  # online DPO settings (dpo.beta is swept)
    reward: RewardConfig = field(default_factory=RewardConfig)  # reward-model training
    n_evals: int = 5  # evaluations per run, evenly spaced (π_ref itself is the point at step 0)
    n_eval_prompts: int = 500  # prompts per evaluation, one sample each at T = 1
    methods: tuple[str, ...] = METHODS  # which methods to run
    threads: int = 1  # torch CPU threads per process (tiny models gain little from more; one never oversubscribes)
    workers: int = 2  # processes running seeds in parallel (one per core: 2 on a 2-core machine)
    out_dir: str = "results/compare"  # where results.json, table.md and frontier.png go

    @classmethod
    def fast(cls, **kwargs) -> CompareConfig:
        """The ``--fast`` comparison (about a minute on 2 free cores): one setting per method, shorter runs; DPO has
        two β, so that its KL range meets PPO's on every seed (with β = 1 alone, seed 1's DPO stops at KL 0.5, below
        PPO's first evaluation, and DPO vs PPO rests on one seed)."""
        cfg = cls(n_prompts=1200, betas=(0.3, 1.0), kl_coefs=(0.1,), grpo_betas=(0.1,), rloo_kl_coefs=(0.1,),
                  online_betas=(3.0,), ppo=PPOConfig(steps=10), grpo=GRPOConfig(steps=10),
                  online=OnlineDPOConfig(rounds=3, prompts_per_round=300), n_evals=3, n_eval_prompts=300,
                  methods=FAST_METHODS, out_dir="results/compare/fast")
        return replace(cfg, **kwargs)


FAST_METHODS = tuple(m for m in METHODS if m not in ("online-DPO-fixed", "online-DPO-RM", "GRPO-GT/token"))  # no twins


def prepare_seed(reference, tokenizer, config: CompareConfig, seed: int, progress: bool = False) -> dict:
    """The preference set and, if PPO runs, the reward model trained on it, for one seed, with their costs."""
    start = time.perf_counter()
    prefs = PreferenceConfig(n_prompts=config.n_prompts, seed=seed)
    rows = make_preference_pairs(reference, tokenizer, prefs)
    train_rows, heldout = split_pairs(rows, 1 / 6, seed)
    stage = {"train_rows": train_rows, "pairs": {
        "seconds": round(time.perf_counter() - start, 2), "completions": 2 * config.n_prompts,
        "ground_truth_calls": len(rows), "n_train": len(train_rows), "n_heldout": len(heldout),
        "bt_temperature": prefs.bt_temperature, "bt_ceiling": round(bt_ceiling(heldout, prefs.bt_temperature), 4)}}
    if USES_REWARD_MODEL & set(config.methods):
        compute = Compute()
        with stopwatch() as times, PeakMemory() as memory:
            rm, history = train_reward_model(reference, tokenizer, train_rows, replace(config.reward, seed=seed),
                                             compute, progress=progress)
            learned = LearnedReward(rm, tokenizer, train_rows, compute)
        stage["learned"] = learned
        stage["reward_model"] = {
            "seconds": round(times["wall_s"], 2), "cpu_s": round(times["cpu_s"], 2),
            "compute": compute.as_dict(), "peak_mb": memory.peak_mb,
            "steps": len(history), "final_loss": round(history[-1]["loss"], 4),
            "train_accuracy": round(pairwise_accuracy(rm, tokenizer, train_rows), 4),
            "heldout_accuracy": round(pairwise_accuracy(rm, tokenizer, heldout), 4)}
    return stage


def sweep(config: CompareConfig, method: str) -> tuple[float, ...]:
    """The settings ``config`` sweeps for ``method``."""
    if method.startswith("online-DPO"):
        return config.online_betas
    return {"DPO": config.betas, "PPO": config.kl_coefs, "PPO-GT": config.kl_coefs,
            "RLOO": config.rloo_kl_coefs}.get(method, config.grpo_betas)


def jobs(config: CompareConfig) -> list[tuple[str, float]]:
    """Every (method, setting) of one seed, in the order of METHODS."""
    return [(m, p) for m in METHODS if m in config.methods for p in sweep(config, m)]


def run_seed(config: CompareConfig, seed: int, progress: bool = False, verbose: bool = True) -> dict:
    """Everything for one seed: π_ref's evaluation, the preference set, the reward model and every run.

    Returns:
        ``{"seed", "reference", "stage", "runs"}``, the pieces :func:`run_comparison` assembles.
    """
    torch.set_num_threads(config.threads)
    start, cpu = time.perf_counter(), time.process_time()
    reference, tokenizer = load_reference(config.world)
    evaluator = Evaluator(reference, tokenizer, config.n_eval_prompts, seed)
    stage = prepare_seed(reference, tokenizer, config, seed, progress)
    runs = []
    for method, param in jobs(config):
        if method == "DPO":
            run = run_dpo(reference, tokenizer, stage["train_rows"], param, config, seed, evaluator, progress)
        elif method.startswith("online-DPO"):
            run = run_online_dpo(reference, tokenizer, method, param, config, seed, evaluator, stage.get("learned"),
                                 progress)
        elif method.startswith("PPO"):
            run = run_ppo(reference, tokenizer, method, param, config, seed, evaluator, stage.get("learned"), progress)
        else:
            run = run_group(reference, tokenizer, method, param, config, seed, evaluator, stage.get("learned"),
                            progress)
        runs.append(run)
        if verbose:
            f = run["final"]
            print(f"seed {seed} {method:6s} {run['param_name']}={param:<5g} mean reward {f['reward']:.3f} "
                  f"KL {f['kl']:5.2f} fluency {f['fluency']:.0%}  ({run['train_s']:.1f} s)", flush=True)
    return {"seed": seed, "reference": {**evaluator.reference_point, "samples": evaluator.reference_samples},
            "stage": {k: v for k, v in stage.items() if k not in ("train_rows", "learned")}, "runs": runs,
            "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1)}


def _seed_pool(workers: int):
    """The seeds' processes, which ignore Ctrl-C: it reaches every process of the terminal, but only this one handles
    it (leaving the pool ends them); otherwise each printed its own traceback. They are started with SIGINT ignored,
    which they inherit, so that a Ctrl-C while they import torch is ignored too; the initializer covers a call from
    another thread, where the signal's handler cannot be changed."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        return multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_interrupt)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _ignore_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


UNGUARDED = ("run_comparison was called again while a seed process imported your script: Python starts each seed "
             "process by importing the script that started it, so the call must be under "
             "`if __name__ == \"__main__\":` (or run `dpo-teach compare`)")
_FLAG = "DPO_TEACH_UNGUARDED_FLAG"  # set while a pool runs: the file a seed process creates to say the above


class UnguardedScript(RuntimeError):
    """A script called :func:`run_comparison` at its top level, where every seed process calls it again."""


def _unguarded_script() -> None:
    """In a seed process that is importing the script (its pool's parent waits for the seeds, and would start a new
    process each time one failed, forever): leave the flag file the parent looks for and end quietly; the parent
    says why. Outside this package's pool (no flag set), raise."""
    flag = os.environ.get(_FLAG)
    if not flag:
        raise UnguardedScript(UNGUARDED)
    Path(flag).touch()
    raise SystemExit(1)


def _run_seeds(pool, config: CompareConfig, verbose: bool, flag: Path) -> list[dict]:
    """The seeds' results, waiting in short slices so that a seed process's flag (:func:`_unguarded_script`) or a
    Ctrl-C is seen at once."""
    running = pool.starmap_async(_seed_worker, [(config, seed, verbose) for seed in config.seeds])
    while not running.ready():
        if flag.exists():
            raise UnguardedScript(UNGUARDED)
        running.wait(0.5)
    return running.get()


def _seed_worker(config: CompareConfig, seed: int, verbose: bool) -> dict:
    """:func:`run_seed` in a spawned process: quiet Hugging Face progress bars, no tokenizer threads, and a
    thread lock for tqdm (its default inter-process lock would leak a semaphore when the pool shuts down)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    tqdm.set_lock(threading.RLock())

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return run_seed(config, seed, progress=False, verbose=verbose)


def run_comparison(config: CompareConfig, progress: bool = True, verbose: bool = True, table: bool = True) -> dict:
    """Run every method, setting and seed of ``config``; write ``results.json``, ``table.md`` and ``frontier.png``.

    ``verbose`` prints each stage as it runs, and with ``table`` (what ``dpo-teach compare`` prints) also the table
    and conclusions written to ``table.md``; notebook 06 renders its own from the results.

    With ``config.workers`` > 1 the seeds run in parallel processes (``config.threads`` torch threads each); every
    number except timings and memory is the same either way.

    Returns:
        The results dict (see ``results.json``): ``config``, ``reference`` (π_ref's evaluation per seed),
        ``stages`` (preference set and reward model per seed), ``runs`` (one record per method × setting × seed,
        with its evaluations), ``wall_s`` and ``environment``.
    """
    from dpo_teach import conclusions

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        _unguarded_script()
    unknown = set(config.methods) - set(METHODS)
    if unknown or not config.methods:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    log = print if verbose else (lambda *a, **k: None)
    start = time.perf_counter()
    load_reference(config.world, progress=progress, verbose=verbose)  # build it once, before any worker needs it
    workers = max(1, min(config.workers, len(config.seeds), os.cpu_count() or 1))
    with torch_threads(None):  # run_seed sets config.threads in this process when workers == 1
        if workers == 1:
            parts = [run_seed(config, seed, progress, verbose) for seed in config.seeds]
        else:
            log(f"running {len(config.seeds)} seeds in {workers} processes, {config.threads} torch thread(s) each")
            with tempfile.TemporaryDirectory() as scratch:
                flag = Path(scratch) / "unguarded"
                with environment({_FLAG: str(flag)}), _seed_pool(workers) as pool:  # its processes inherit it
                    parts = _run_seeds(pool, config, verbose, flag)
    results = {"format": FORMAT, "config": asdict(config),
               "reference": {str(p["seed"]): p["reference"] for p in parts},
               "stages": {str(p["seed"]): p["stage"] for p in parts},
               "runs": [run for p in parts for run in p["runs"]],
               "wall_s": round(time.perf_counter() - start, 1),
               "environment": {"torch": torch.__version__, "threads": config.threads, "workers": workers,
                               "cpus": os.cpu_count(), "load_average": load_average(),
                               "seed_wall_s": {str(p["seed"]): p["wall_s"] for p in parts},
                               "seed_cpu_s": {str(p["seed"]): p["cpu_s"] for p in parts}}}
    written = conclusions.write_outputs(results, Path(config.out_dir))
    if table:
        log("\n" + written)
    log(f"\nwrote {config.out_dir}/results.json, table.md, frontier.png ({results['wall_s']:.0f} s in all)")
    return results
