"""From this course's preference rows to TRL's ``DPOTrainer``: the same data, the same loss (notebook 07).

TRL (Hugging Face's ``trl``) is what people use to run DPO on real models. Our rows already use its column names
(``prompt``, ``chosen``, ``rejected``), so a preference file becomes a ``datasets.Dataset`` in one call, and a
trainer built here computes the same loss and metrics as ``dpo_teach`` on the same batch (``tests/test_trl_parity.py``
checks the tokens exactly, the loss and metrics to 1e-5, the gradients to a relative 1e-4).

TRL and ``datasets`` are optional (the ``peers`` extra: ``pip install 'dpo-teach[peers]'``); without them every
function here raises an ``ImportError`` that says so. The CPU settings that matter for a comparison: bf16 and
gradient checkpointing default to on in TRL, so both are switched off; the reference model is passed as a copy
(TRL 1.16 cannot rebuild an in-memory model from its config name).
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import warnings

import torch

from dpo_teach.logprobs import PreferenceCollator, concatenated_logprobs, tokenize_pairs
from dpo_teach.losses import LOSSES, step_metrics

COLUMNS = ("prompt", "chosen", "rejected")
INSTALL_HINT = "pip install 'dpo-teach[peers]' (or: pip install trl datasets)"


def trl_available() -> bool:
    """Whether ``trl`` and ``datasets`` can be imported (checked without importing them)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("trl", "datasets"))
    except (ImportError, ValueError):  # e.g. a module blocked with ``sys.modules[name] = None``
        return False


def require_trl():
    """Import and return ``(trl, datasets)``, or raise an ``ImportError`` that says how to install them."""
    try:
        import datasets
        import trl
    except ImportError as e:
        raise ImportError(f"TRL and datasets are needed for this ({e}); install them with {INSTALL_HINT}") from e
    return trl, datasets


def to_dataset(rows: list[dict]):
    """Preference rows → ``datasets.Dataset`` with TRL's three string columns (extra fields are dropped)."""
    _, datasets = require_trl()
    return datasets.Dataset.from_list([{k: row[k] for k in COLUMNS} for row in rows])


def cpu_config(output_dir: str, beta: float, max_length: int, batch_size: int, loss_type: str = "sigmoid", **kwargs):
    """A ``trl.DPOConfig`` for a CPU comparison: bf16, fp16 and gradient (activation) checkpointing off, no logging
    services, no progress bars.

    ``kwargs`` override or add any other ``trl.DPOConfig`` field (e.g. ``learning_rate``, ``num_train_epochs``).
    """
    trl, _ = require_trl()
    settings = dict(
        output_dir=output_dir, beta=beta, max_length=max_length, loss_type=loss_type,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        bf16=False, fp16=False, activation_checkpointing=False, use_cpu=True, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, precompute_ref_log_probs=False,
    )
    return trl.DPOConfig(**{**settings, **kwargs})


def quiet(trainer=None) -> None:
    """No progress bars (``datasets``, ``transformers``) and, given a trainer, no printing of its logs: the numbers
    stay in ``trainer.state.log_history``. Also drops transformers 5's notice that TRL still uses the old name of
    gradient checkpointing."""
    _, datasets = require_trl()
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    if trainer is not None:
        trainer.remove_callback(PrinterCallback)


def trl_trainer(policy, reference, tokenizer, rows: list[dict], beta: float, max_length: int = 64,
                loss_type: str = "sigmoid", output_dir: str | None = None, **kwargs):
    """A ``trl.DPOTrainer`` on *copies* of ``policy`` and ``reference`` (ours stay untouched), with ``rows`` as
    both its training and its evaluation set, evaluated in one batch. ``kwargs`` go to :func:`cpu_config`.
    Quiet (:func:`quiet`): its logs stay in ``trainer.state.log_history``."""
    trl, _ = require_trl()
    from transformers import PrinterCallback

    quiet()  # before the trainer tokenizes the dataset (its progress bars)
    output_dir = output_dir or tempfile.mkdtemp(prefix="dpo-teach-trl-")
    args = cpu_config(output_dir, beta, max_length, len(rows), loss_type, **kwargs)
    data = to_dataset(rows)
    trainer = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                             train_dataset=data, eval_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    return trainer


def trl_batch_metrics(trainer) -> dict[str, float]:
    """``trainer.evaluate()`` on its evaluation set, with TRL's ``eval_`` prefix removed (loss and the
    ``rewards/…``, ``logps/…`` metrics; run-time entries dropped)."""
    out = trainer.evaluate()
    return {k.removeprefix("eval_"): v for k, v in out.items()
            if k == "eval_loss" or k.startswith(("eval_rewards/", "eval_logps/"))}


@torch.no_grad()
def our_batch_metrics(policy, reference, tokenizer, rows: list[dict], beta: float, max_length: int = 64,
                      loss_type: str = "sigmoid", average: bool = False) -> dict[str, float]:
    """Our loss and TRL-named metrics on ``rows`` as one batch (``average``: length-normalised log-probs)."""
    batch = PreferenceCollator(tokenizer.pad_token_id)(tokenize_pairs(tokenizer, rows, max_length))
    training = policy.training
    chosen, rejected = concatenated_logprobs(policy.eval(), batch, average)  # (B,), (B,)
    ref_chosen, ref_rejected = concatenated_logprobs(reference.eval(), batch, average)
    policy.train(training)
    losses, chosen_rewards, rejected_rewards = LOSSES[loss_type](chosen, rejected, ref_chosen, ref_rejected,
                                                                 beta=beta)
    return step_metrics(losses, chosen_rewards, rejected_rewards, chosen, rejected)
