"""The toy world's reference model π_ref: corpus → tokenizer → tiny GPT-2 → SFT, built once and cached on disk.

The cache is keyed by the full ``WorldConfig`` (a hash of its fields), so a changed setting builds a new π_ref and
an unchanged one is reused by the notebooks, the CLI and the tests. Its location is ``$DPO_TEACH_CACHE``
(default ``~/.cache/dpo-teach``). A cache entry that cannot be loaded is rebuilt with a warning that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dpo_teach import grammar
from dpo_teach.logprobs import encode_completion
from dpo_teach.model import CheckpointError, build_model, load_checkpoint, save_checkpoint, unscaled_init
from dpo_teach.sft import SFTConfig, train_sft
from dpo_teach.tokenizer import train_tokenizer
from dpo_teach.utils import leads_through_loop, nearest_existing, torch_threads

CACHE_ENV = "DPO_TEACH_CACHE"
BUILD_THREADS = 1  # torch threads of π_ref's SFT, whoever builds it (the notebooks run on one thread anyway)
_FORMAT = 3  # bump when the build procedure changes, so old cache entries are not reused (3: SFT on one thread)


class CacheWarning(UserWarning):
    """π_ref's cache entry could not be used or written: the run goes on (with a rebuild), the message says why."""


class CacheError(ValueError):
    """``$DPO_TEACH_CACHE`` names no folder that every process can agree on; the message says what to set."""


@dataclass
class WorldConfig:
    preset: str = "small"  # model size, a key of model.PRESETS
    corpus_size: int = 20_000  # review sentences in the SFT corpus
    vocab_size: int = 512  # upper bound of the BPE vocabulary
    sft_steps: int = 600  # SFT optimizer steps
    sft_batch_size: int = 64  # SFT sequences per step
    sft_lr: float = 3e-3  # SFT peak learning rate
    seed: int = 0  # corpus, initialisation and batch-order seed

    def key(self) -> str:
        """A short hash of every field: the cache entry's name."""
        blob = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where built reference models live: ``$DPO_TEACH_CACHE`` or ``~/.cache/dpo-teach``."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dpo-teach").expanduser()  # "~/x", quoted
    value = os.environ.get(CACHE_ENV) or ""
    if value != value.strip() or "$" in value:  # " ", "/data/cache " or '$HOME/cache' from a .env file: another folder
        raise CacheError(f"{CACHE_ENV}={value!r} " + ("holds a $ that no shell expanded" if "$" in value else
                                                      "begins or ends with a space") + "; set it to a folder's "
                         f"absolute path, e.g. export {CACHE_ENV}=\"$HOME/.cache/dpo-teach\"")
    if not path.is_absolute():  # the notebooks run in notebooks/, the CLI where it is started, the grader elsewhere
        raise CacheError(f"{CACHE_ENV}={os.environ[CACHE_ENV]} is a relative path, which names another folder from "
                         f"each working directory (each would build π_ref again); set an absolute one, e.g. "
                         f"export {CACHE_ENV}=\"$PWD/{os.environ[CACHE_ENV]}\"")
    return path


def corpus_examples(config: WorldConfig) -> list[tuple[str, str]]:
    """The SFT corpus as (prompt, completion) pairs, reproducible from ``config.seed``."""
    rng = random.Random(config.seed)
    return [grammar.sample_review(rng) for _ in range(config.corpus_size)]


def build_reference(config: WorldConfig, progress: bool = False) -> tuple[torch.nn.Module, object]:
    """Train the tokenizer and SFT a fresh tiny GPT-2 on the grammar corpus. Returns ``(model, tokenizer)``.

    The SFT runs on :data:`BUILD_THREADS` torch threads whatever the caller's count (restored after): another count
    sums in another order, and the cache keeps whichever π_ref was built first for every later run."""
    pairs = corpus_examples(config)
    tokenizer = train_tokenizer([p + c for p, c in pairs], vocab_size=config.vocab_size)
    examples = [encode_completion(tokenizer, p, c) for p, c in pairs]
    torch.manual_seed(config.seed)
    model = build_model(config.preset, len(tokenizer), tokenizer.eos_token_id)
    sft = SFTConfig(steps=config.sft_steps, batch_size=config.sft_batch_size, lr=config.sft_lr, seed=config.seed)
    with torch_threads(BUILD_THREADS):
        train_sft(model, examples, tokenizer.pad_token_id, sft, progress=progress)
    model.zero_grad(set_to_none=True)  # as loaded from the cache: the last SFT step's gradients are not π_ref's
    return model, tokenizer


def cache_entry(config: WorldConfig) -> Path:
    """The folder that caches π_ref of ``config`` (a ``save_pretrained`` directory plus ``world.json``, so
    ``--model`` takes it too)."""
    return cache_dir() / f"reference-{config.preset}-{config.key()}"


def reference_cached(config: WorldConfig | None = None) -> bool:
    """Whether π_ref for ``config`` (the notebooks' "tiny" preset) is in the cache, so no notebook builds it (not
    when a folder above it cannot be searched: ``os.path.isfile`` says False where ``Path.is_file`` raises)."""
    return os.path.isfile(cache_entry(config or WorldConfig(preset="tiny")) / "world.json")


def _warn_not_cached(path: Path, why: str) -> None:
    warnings.warn(f"π_ref could not be cached at {path} ({why}); it will be rebuilt next time. Point ${CACHE_ENV} at "
                  "a writable directory to keep it", CacheWarning, stacklevel=3)  # names load_reference's caller


def _broken_link(path: Path) -> str:
    """What is wrong with ``path``, a symbolic link that leads nowhere: π_ref is then saved through it (where it
    points) or, for a loop, in its place."""
    if leads_through_loop(path):
        return "a loop of symbolic links: the π_ref built now takes its place"
    return f"a symbolic link to {os.readlink(path)}, which does not exist: the π_ref built now is saved there"


def cache_problem(folder: Path) -> str | None:
    """Why π_ref could not be saved under ``folder``, or None: a folder is made and removed where it would go (on
    the nearest part of the path that exists), so the answer is the file system's own; nothing is left behind."""
    existing = Path(os.path.realpath(folder))  # where a save goes, through a link too
    if leads_through_loop(folder):  # $DPO_TEACH_CACHE -> itself, or under such a link: else found after the build
        return f"{folder} leads through a loop of symbolic links"
    try:
        existing = nearest_existing(existing)
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".dpo-teach-probe-"))
    except OSError as e:  # a folder above it that cannot be searched, or written
        return f"{existing} is not writable ({e.strerror or e})"
    return None


def load_reference(
    config: WorldConfig | None = None, rebuild: bool = False, progress: bool = False, verbose: bool = False
) -> tuple[torch.nn.Module, object]:
    """π_ref and its tokenizer for ``config``: from the disk cache when present, else built and cached.

    The model is in eval mode; treat it as frozen (the fixed-reference assumption).
    """
    config = config or WorldConfig()
    path = cache_entry(config)
    if os.path.islink(path) and not os.path.exists(path) and not rebuild:  # else built every run, saved nowhere
        warnings.warn(f"reference cache {path} is unusable ({_broken_link(path)}); rebuilding it", CacheWarning,
                      stacklevel=2)
    if os.path.exists(path) and not rebuild:  # False under a folder that cannot be searched: built, not saved, said
        try:
            model, tokenizer = load_checkpoint(path)
            saved = json.loads((path / "world.json").read_text(encoding="utf-8"))
            if saved != asdict(config):
                raise CheckpointError(f"world.json describes {saved}, not {asdict(config)}")
            if unscaled_init(getattr(model.config, "transformers_version", None)):
                raise CheckpointError(f"it was built with transformers {model.config.transformers_version}, whose "
                                      "GPT-2 skips the residual init scale (model.check_scaled_init): another π_ref")
            if verbose:
                print(f"π_ref: loaded from cache {path}")
            return model, tokenizer
        except (CheckpointError, OSError, ValueError, RecursionError) as e:  # e.g. a truncated or edited entry
            warnings.warn(f"reference cache {path} is unusable ({e}); rebuilding it", CacheWarning, stacklevel=2)
    # A full disk or an unwritable $DPO_TEACH_CACHE costs a rebuild next time, not this run; said before the build's
    # minutes when the folder shows it already (a file in its place), else when the save fails.
    if problem := cache_problem(path.parent):
        _warn_not_cached(path, problem)
    start = time.perf_counter()
    model, tokenizer = build_reference(config, progress=progress)
    if not problem:
        try:
            save_checkpoint(model, tokenizer, path, extra={"world.json": asdict(config)})
        except OSError as e:
            problem = str(e)
            _warn_not_cached(path, problem)
    if verbose:
        where = "not cached" if problem else f"cached at {path}"
        print(f"π_ref: built in {time.perf_counter() - start:.1f} s, {where}")
    model.eval()
    return model, tokenizer
