"""One training run of each method of the comparison, evaluated and recorded as ``results.json`` stores it.

:mod:`dpo_teach.compare` decides what runs (the methods, their sweeps, the seeds, the processes); this module runs
one setting of one method: it trains (saving the policy's weights at the evaluation steps), measures the training's
wall and CPU time and peak memory, evaluates the saved weights afterwards on fixed prompts (:class:`Evaluator`) and
returns a :class:`RunRecord`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from dpo_teach.compute import Compute
from dpo_teach.dpo import train_dpo
from dpo_teach.evaluate import evaluate_policy, evaluation_prompts
from dpo_teach.frontier import PARAM_NAMES, USES_REWARD_MODEL
from dpo_teach.grpo import train_grpo
from dpo_teach.measure import PeakMemory, n_params, stopwatch
from dpo_teach.online_dpo import dpo_compute, train_online_dpo
from dpo_teach.ppo import train_ppo
from dpo_teach.reward import ground_truth_reward
from dpo_teach.reward_model import LearnedReward, ScalarModel
from dpo_teach.rloo import train_rloo
from dpo_teach.training import n_steps

if TYPE_CHECKING:
    from dpo_teach.compare import CompareConfig


class Evaluator:
    """Evaluates policies on fixed prompts with a fixed sampling seed (sampling forks the RNG, so evaluating never
    changes a training run)."""

    def __init__(self, reference, tokenizer, n_prompts: int, seed: int):
        self.reference, self.tokenizer = reference, tokenizer
        self.prompts, self.seed = evaluation_prompts(n_prompts, seed)
        metrics, samples = evaluate_policy(reference, reference, tokenizer, self.prompts, self.seed)
        self.reference_point = {"step": 0, "completions": 0, **_rounded(metrics)}
        self.reference_samples = samples.completions[:4]

    def __call__(self, policy, step: int, completions: int) -> dict:
        metrics, samples = evaluate_policy(policy, self.reference, self.tokenizer, self.prompts, self.seed)
        self.last_samples = samples.completions[:4]
        return {"step": step, "completions": completions, **_rounded(metrics)}

    def snapshots(self, snapshots: list[tuple[int, int, dict]]) -> list[dict]:
        """π_ref's evaluation, then one per ``(step, completions, state_dict)`` saved during a run.

        Runs save weights while they train and are evaluated afterwards, so that a run's wall time, CPU time and
        peak memory are its training's alone.
        """
        scratch = copy.deepcopy(self.reference)
        evals = [self.reference_point]
        for step, completions, state in snapshots:
            scratch.load_state_dict(state)
            evals.append(self(scratch, step, completions))
        return evals


def _state(model) -> dict:
    """A copy of ``model``'s weights (a few hundred kB for the toy presets)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def eval_steps(total: int, n_evals: int) -> set[int]:
    """Steps (1-based) after which to evaluate: ``n_evals`` evenly spaced, the last one at ``total``."""
    return {max(1, math.ceil(k * total / n_evals)) for k in range(1, n_evals + 1)}


@dataclass
class RunRecord:
    """One training run of the comparison, as ``results.json`` stores it (the results schema, written once)."""

    method: str  # one of METHODS
    param: float  # the swept setting: β for DPO, online DPO and GRPO; the KL coefficient for PPO and RLOO
    param_name: str  # "beta" or "kl_coef"
    seed: int  # the seed of the pairs, the run and the evaluation prompts
    evals: list[dict]  # π_ref's evaluation, then one per evaluation point: step, completions, reward, kl, fluency, …
    train_s: float  # wall seconds of training alone (evaluation excluded)
    cpu_s: float  # CPU seconds of training alone
    peak_mb: float | None  # peak resident memory above the level at the start, MB (None where not measurable)
    compute: dict[str, int]  # :class:`dpo_teach.compute.Compute` counts
    models_held: list[str]  # the networks the method keeps in memory while it trains
    params_held: int  # their parameters together
    samples: list[str]  # a few completions of the final policy
    history: list[dict] | None = None  # per-iteration (PPO, GRPO, RLOO) or per-round (online DPO) metrics

    @classmethod
    def of(cls, method: str, param: float, seed: int, evals: list[dict], evaluator: Evaluator, times: dict,
           memory: PeakMemory, compute: Compute, models: dict) -> RunRecord:
        """A record from what a run measured; ``models`` maps names to the networks held."""
        return cls(method, param, PARAM_NAMES[method], seed, evals, round(times["wall_s"], 2),
                   round(times["cpu_s"], 2), memory.peak_mb, compute.as_dict(), sorted(models),
                   n_params(*models.values()), evaluator.last_samples)

    def as_dict(self) -> dict:
        """The JSON form, with ``final`` (the last evaluation) added for readers; ``history`` only when present."""
        out = {**asdict(self), "final": self.evals[-1]}
        if out["history"] is None:
            del out["history"]
        return out


def checkpoints(policy, total: int, n_evals: int, step_key: str = "step", completions_key: str | None = "episode"):
    """A training callback that saves ``policy``'s weights at the evaluation steps, and the list it saves into.

    ``metrics[step_key]`` counts from 0 ("step") or from 1 ("round"); ``completions_key`` names the completions
    sampled so far (None: the method samples none while training).
    """
    offset = 1 if step_key == "step" else 0
    due, saved = eval_steps(total, n_evals), []

    def callback(metrics: dict) -> None:
        done = metrics[step_key] + offset
        if done in due:
            saved.append((done, metrics[completions_key] if completions_key else 0, _state(policy)))

    return callback, saved


def _reward_fn(learned: LearnedReward | None, compute: Compute):
    """r(x, y) for the RL methods, counting its calls: the learned reward model, or the ground truth (``None``)."""
    def reward_fn(prompts: list[str], completions: list[str]):
        if learned is not None:
            compute.add(reward_model_calls=len(completions), forward=len(completions))
            return learned(prompts, completions)
        compute.add(ground_truth_calls=len(completions))
        return ground_truth_reward(completions)

    return reward_fn


def run_dpo(reference, tokenizer, train_rows, beta: float, config: CompareConfig, seed: int,
            evaluator: Evaluator, progress: bool = False) -> dict:
    """One DPO run at ``beta``, evaluated ``config.n_evals`` times. Returns its record for results.json."""
    policy = copy.deepcopy(reference)
    cfg = replace(config.dpo, beta=beta, seed=seed)
    callback, saved = checkpoints(policy, n_steps(len(train_rows), cfg.batch_size, cfg.epochs), config.n_evals,
                                  completions_key=None)
    with stopwatch() as times, PeakMemory() as memory:
        train_dpo(policy, reference, tokenizer, train_rows, cfg, callback=callback, progress=progress)
    evals = evaluator.snapshots(saved)
    return RunRecord.of("DPO", beta, seed, evals, evaluator, times, memory, dpo_compute(len(train_rows), cfg),
                        {"policy": policy, "reference": reference}).as_dict()


def run_online_dpo(reference, tokenizer, method: str, beta: float, config: CompareConfig, seed: int,
                   evaluator: Evaluator, learned: LearnedReward | None = None, progress: bool = False) -> dict:
    """One online-DPO run: ``"online-DPO"`` (Bradley–Terry labels, reference refreshed between rounds),
    ``"online-DPO-fixed"`` (reference kept at π_ref) or ``"online-DPO-RM"`` (pairs ordered by the reward model)."""
    policy = copy.deepcopy(reference)
    cfg = replace(config.online, dpo=replace(config.online.dpo, beta=beta), seed=seed,
                  refresh_reference=method != "online-DPO-fixed", labeller="rm" if method == "online-DPO-RM" else "bt")
    callback, saved = checkpoints(policy, cfg.rounds, config.n_evals, "round", "completions")
    compute = Compute()
    reward_fn = _reward_fn(learned, compute) if method in USES_REWARD_MODEL else None
    with stopwatch() as times, PeakMemory() as memory:
        history = train_online_dpo(policy, reference, tokenizer, cfg, reward_fn, compute=compute, callback=callback,
                                   progress=progress)
    evals = evaluator.snapshots(saved)
    models = {"policy": policy, "reference": reference}  # a refreshed reference replaces π_ref: still two networks
    if method in USES_REWARD_MODEL:
        models["reward_model"] = learned.rm
    record = RunRecord.of(method, beta, seed, evals, evaluator, times, memory, compute, models)
    record.history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in history]
    return record.as_dict()


def run_group(reference, tokenizer, method: str, beta: float, config: CompareConfig, seed: int,
              evaluator: Evaluator, learned: LearnedReward | None = None, progress: bool = False) -> dict:
    """One GRPO, GRPO-GT, GRPO-GT/token or RLOO run at ``beta`` (RLOO: the KL coefficient in its reward)."""
    policy = copy.deepcopy(reference)
    cfg = replace(config.grpo, beta=beta, seed=seed, **({"loss_norm": "token"} if method == "GRPO-GT/token" else {}))
    if method == "RLOO":
        cfg = replace(cfg, scale_rewards=False)  # TRL's RLOO default: the leave-one-out advantage as it is
    compute = Compute()
    reward_fn = _reward_fn(learned if method in USES_REWARD_MODEL else None, compute)
    callback, saved = checkpoints(policy, cfg.steps, config.n_evals)
    train = train_rloo if method == "RLOO" else train_grpo
    with stopwatch() as times, PeakMemory() as memory:
        history = train(policy, reference, tokenizer, reward_fn, cfg, compute=compute, callback=callback,
                        progress=progress)
    evals = evaluator.snapshots(saved)
    models = {"policy": policy, **({"reference": reference} if beta != 0.0 else {})}
    if method in USES_REWARD_MODEL:
        models["reward_model"] = learned.rm
    keys = ("objective/kl", "objective/scores", "policy/clipfrac", "completion_length")
    record = RunRecord.of(method, beta, seed, evals, evaluator, times, memory, compute, models)
    record.history = [{k: round(h[k], 4) for k in ("step", *keys)} for h in history]
    return record.as_dict()


def run_ppo(reference, tokenizer, method: str, kl_coef: float, config: CompareConfig, seed: int,
            evaluator: Evaluator, learned: LearnedReward | None = None, progress: bool = False) -> dict:
    """One PPO run on the learned reward (``method="PPO"``) or the ground truth (``"PPO-GT"``)."""
    policy = copy.deepcopy(reference)
    value = ScalarModel.from_causal_lm(reference, head_std=0.0)
    cfg = replace(config.ppo, kl_coef=kl_coef, seed=seed)
    compute = Compute()
    reward_fn = _reward_fn(learned if method == "PPO" else None, compute)
    callback, saved = checkpoints(policy, cfg.steps, config.n_evals)
    with stopwatch() as times, PeakMemory() as memory:
        history = train_ppo(policy, reference, value, tokenizer, reward_fn, cfg, compute=compute, callback=callback,
                            progress=progress)
    evals = evaluator.snapshots(saved)
    models = {"policy": policy, "reference": reference, "value": value}
    if method == "PPO":
        models["reward_model"] = learned.rm
    keys = ("objective/kl", "objective/scores", "objective/entropy", "policy/clipfrac", "loss/value")
    record = RunRecord.of(method, kl_coef, seed, evals, evaluator, times, memory, compute, models)
    record.history = [{k: round(h[k], 4) for k in ("step", *keys)} for h in history]
    return record.as_dict()
