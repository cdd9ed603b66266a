"""Tiny GPT-2 presets, and loading/saving any ``from_pretrained``-style checkpoint with errors that say what to do.

The course's models are ordinary ``transformers.GPT2LMHeadModel``s built from a small ``GPT2Config``; a real GPT-2
checkpoint directory (``save_pretrained`` output: ``config.json``, weights and tokenizer files) works in their place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from dpo_teach.utils import atomic_dir, json_text, readable_by_all

# Sizes measured on 2 CPU cores in DESIGN.md §7: "tiny" trains in seconds, "small" in about a minute.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2},
    "small": {"n_layer": 4, "n_embd": 128, "n_head": 4},
    "base": {"n_layer": 6, "n_embd": 256, "n_head": 8},
}


TOY_CONTEXT = 64  # n_positions of the toy models: the longest prompt + completion they can read, in tokens
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")


class CheckpointError(ValueError):
    """A model directory that cannot be used; the message names the path and the fix."""


class InstallError(RuntimeError):
    """An installed library that would build another model than the course's (so every number would differ); the
    message names the library, its version and the fix."""


class ContextLengthError(ValueError):
    """A ``max_length`` that does not fit: longer than the model's context (``n_positions``) or too short for a
    prompt; the message names both numbers and the fix."""


def context_length(model: PreTrainedModel) -> int | None:
    """The most positions ``model`` can read (GPT-2's ``n_positions``), or None when its config does not say."""
    config = getattr(model, "config", None)
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


def check_max_length(max_length: int, context: int | None, what: str = "the model") -> None:
    """Refuse a ``max_length`` (prompt + completion tokens) above a ``context`` of positions, before any work.

    Past its context a GPT-2 has no position embedding to look up, so training would die deep inside torch.
    """
    if context is not None and max_length > context:
        raise ContextLengthError(f"--max-length {max_length} is longer than {what}'s context of {context} tokens "
                                 f"(the positions it can read); pass --max-length {context} or less, or use a model "
                                 "with a longer context")


def build_model(preset: str, vocab_size: int, eos_token_id: int, n_positions: int = TOY_CONTEXT) -> GPT2LMHeadModel:
    """A freshly initialised tiny GPT-2. Dropout is off, so a policy equals its reference bit for bit; its config
    says so as a loaded checkpoint's does (:func:`disable_dropout`), so the first run writes the files later ones do."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        activation_function="gelu_pytorch_tanh",  # GPT-2's tanh-approximate GELU, in one fused op (~25 % faster)
        **PRESETS[preset],
    )
    model = GPT2LMHeadModel(config)
    check_scaled_init(model)
    disable_dropout(model)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether ``a`` and ``b`` hold the same parameters, value for value (a policy that starts as π_ref, a π_ref
    loaded back from the cache)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    return a is b or (len(pa) == len(pb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(pa, pb)))


SCALED_INIT_SINCE = (5, 15)  # the first transformers 5 whose GPT-2 draws c_proj at GPT-2's scale (pyproject's bound)


def unscaled_init(version: str | None) -> bool:
    """Whether a model saved by transformers ``version`` (a checkpoint's ``config.json`` says which) was initialised
    without GPT-2's residual scale (:func:`check_scaled_init`); an unknown version is trusted."""
    try:
        major, minor = (int(part) for part in (version or "").split(".")[:2])
    except ValueError:
        return False
    return (5, 0) <= (major, minor) < SCALED_INIT_SINCE


def check_scaled_init(model: GPT2LMHeadModel) -> None:
    """Refuse a freshly built GPT-2 whose residual projections were not initialised at GPT-2's scale.

    GPT-2 draws each block's output projections (``c_proj``) with standard deviation initializer_range / √(2·n_layer)
    (Radford et al. 2019, section 2.3). transformers 5.0 to 5.14 drew them at initializer_range
    (huggingface/transformers#47458, fixed in 5.15): a π_ref built there is another model, and the course's numbers
    change with it (the demo's KL 1.95 instead of 1.08, fluency 80 % instead of 94 %), with nothing to say why.
    """
    config = model.config
    expected = config.initializer_range / math.sqrt(2 * config.n_layer)
    drawn = float(torch.cat([block.attn.c_proj.weight.detach().flatten() for block in model.transformer.h]).std())
    # unscaled is √(2·n_layer) times the scaled value (1.41× at one layer): refused past the midpoint on a log scale
    if drawn > expected * (2 * config.n_layer) ** 0.25:
        since = ".".join(map(str, SCALED_INIT_SINCE))
        raise InstallError(
            f"transformers {transformers.__version__} initialises GPT-2's residual projections without GPT-2's "
            f"1/√(2·n_layer) scale (standard deviation {drawn:.4f}, expected {expected:.4f}; a bug of transformers 5 "
            f"before {since}), so π_ref would be another model than the course's and every number would differ. "
            f"Upgrade: pip install 'transformers>={since}' (or `make lab`, which installs what the course needs)")


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a bar for writing and one for loading the weights: noise for a file this size, printed in
    the middle of a student's output. Off for the block, then as the caller had them."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(model: PreTrainedModel, tokenizer, path: str | Path, extra: dict | None = None) -> None:
    """Save model and tokenizer with ``save_pretrained``, atomically (a crash leaves the old directory intact).

    ``extra`` maps file names to JSON-serialisable objects written beside them (e.g. the config that built it).
    """

    with atomic_dir(path) as tmp, _no_progress_bars():
        try:
            model.save_pretrained(tmp)
        except Exception as e:
            if type(e).__name__ == "SafetensorError" and "os error" in str(e):  # its I/O errors: a full disk ...
                raise OSError(_first_line(e).removeprefix("SafetensorError: ")) from e
            raise
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json_text(obj), encoding="utf-8")
        readable_by_all(tmp)  # safetensors writes its file 0600: a shared cache, another user could not read it


def _first_line(error: Exception) -> str:
    """``Type: first line of the message``, its first 200 characters or so (cut between words, with " …"): library
    errors can run over many lines."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if len(text) > 200:  # cut between words, and say so
        text = text[:200].rsplit(" ", 1)[0] + " …"
    return f"{type(error).__name__}: {text}"


def load_checkpoint(path: str | Path) -> tuple[PreTrainedModel, object]:
    """Load ``(model, tokenizer)`` from a ``save_pretrained`` directory, e.g. a real GPT-2 you downloaded yourself.

    Nothing is fetched from a hub: ``path`` must be a local directory. The model is put in eval mode, with its
    dropout off (:func:`disable_dropout`).

    Raises:
        CheckpointError: the directory is missing, incomplete or corrupt; the message names the path and the fix.
    """
    path = Path(path)
    fix = "point it at a directory written by `save_pretrained` (config.json, weights, tokenizer files)"
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "no such directory"
        raise CheckpointError(f"checkpoint {path}: {what}; {fix}")
    if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
        raise CheckpointError(f"checkpoint {path}: a PEFT adapter (adapter_config.json), not a whole model; merge it "
                              "into its base model (`PeftModel.from_pretrained(base, path).merge_and_unload()`) and "
                              "`save_pretrained` the result with its tokenizer")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint {path}: config.json is missing; {fix}")
    if _custom_code(path):  # transformers would ask on the terminal whether to run the folder's own Python code
        raise CheckpointError(f"checkpoint {path}: its config names model code of its own (auto_map), which dpo-teach "
                              "does not run; use a checkpoint of an architecture that transformers ships (GPT-2, "
                              "Llama, GPT-NeoX, ...)")
    weights = [p for p in (*path.glob("*.safetensors"), *path.glob("*.bin")) if p.is_file()]
    if not [p for p in weights if p.name != "training_args.bin"]:  # a Trainer's arguments, not weights
        raise CheckpointError(f"checkpoint {path}: no weights file (*.safetensors or *.bin); {fix}")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):  # else transformers makes an empty one
        raise CheckpointError(f"checkpoint {path}: no tokenizer files ({' or '.join(_TOKENIZER_FILES)}); save the "
                              "tokenizer beside the model with `tokenizer.save_pretrained(path)`")
    if (path / "vocab.json").is_file() and not (path / "tokenizer.json").is_file() \
            and not (path / "merges.txt").is_file():  # a GPT-2 BPE needs both; transformers' words name neither
        raise CheckpointError(f"checkpoint {path}: vocab.json is there but merges.txt is missing (a GPT-2 tokenizer "
                              "needs both, or tokenizer.json); download merges.txt into the folder too")
    try:  # first: the tokenizer reads config.json too, and its error named the tokenizer for a broken config.json
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: config.json cannot be loaded ({_first_line(e)}); {fix}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable tokenizer
        raise CheckpointError(f"checkpoint {path}: the tokenizer cannot be loaded ({_first_line(e)}); {fix}") from e
    for how in ("is_local", "local_files_only"):  # how it was loaded, not what it is: else every tokenizer saved
        tokenizer.init_kwargs.pop(how, None)  # from a loaded one would write them, and one from a new one would not
    _check_special_tokens(path, tokenizer)
    _check_causal(path, config)
    _check_size(path, config, weights)
    try:  # mismatched shapes are reported in the loading info below, with an example, instead of raised
        with _no_progress_bars():
            model, info = AutoModelForCausalLM.from_pretrained(path, config=config, local_files_only=True,
                                                               trust_remote_code=False,
                                                               dtype=torch.float32, ignore_mismatched_sizes=True,
                                                               output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: the model cannot be loaded ({_first_line(e)}); "
                              f"the files may be truncated or corrupt — re-save or re-download them") from e
    _check_weights(path, config, info)
    _check_finite(path, model)
    disable_dropout(model)
    model.eval()
    _check_left_to_right(path, model)
    n_embedded = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embedded:  # a token id past the embedding table would fail deep inside torch
        raise CheckpointError(f"checkpoint {path}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                              f"{n_embedded}; the tokenizer files belong to another model — save both together")
    return model, tokenizer


def _custom_code(path: Path) -> bool:
    """Whether the checkpoint's config.json or tokenizer_config.json maps a class to the folder's own code
    (``auto_map``) for a model type that transformers does not ship (for one it ships, its own class is used)."""
    from transformers import CONFIG_MAPPING

    read = {}
    for name in ("config.json", "tokenizer_config.json"):
        try:
            read[name] = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # missing or unreadable: transformers' own loading says so
    config = read.get("config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return any(isinstance(f, dict) and "auto_map" in f for f in read.values()) and model_type not in CONFIG_MAPPING


def _check_finite(path: Path, model: PreTrainedModel) -> None:
    """Refuse weights that hold nan or inf (a policy saved after its training diverged): every log-prob would be nan,
    and the run would stop later blaming the learning rate, or sampling would fail inside torch."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"checkpoint {path}: weight {name} holds nan or inf (saved after training "
                                  "diverged?); use a checkpoint saved before that, or train again with a lower "
                                  "learning rate")


def _check_special_tokens(path: Path, tokenizer) -> None:
    """Every completion ends with EOS (the trainer appends it) and padding needs a token id: refuse a tokenizer
    without an EOS token. A missing pad token is fine: padding is always masked out, so EOS serves (as for GPT-2)."""
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        what = ("no EOS token" if tokenizer.eos_token is None
                else f"an EOS token {tokenizer.eos_token!r} that is not in its vocabulary")
        raise CheckpointError(f"checkpoint {path}: the tokenizer has {what}, which ends every completion and pads "
                              "batches; set \"eos_token\" in tokenizer_config.json to the model's end-of-text token "
                              "(GPT-2's is \"<|endoftext|>\")")
    if tokenizer.pad_token is None:  # real GPT-2 has no pad token; padding is always masked out, so EOS serves
        tokenizer.pad_token = tokenizer.eos_token


def _check_causal(path: Path, config) -> None:
    """DPO scores y token by token given x and the tokens before: only a causal (left-to-right) LM can do that."""
    kind = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise CheckpointError(f"checkpoint {path}: config.json describes a {kind} encoder-decoder model, not a causal "
                              "language model; use a decoder-only checkpoint such as GPT-2")


def _check_left_to_right(path: Path, model: PreTrainedModel) -> None:
    """Refuse a model whose prediction at a position changes with a token after it (BERT's "LM head" sees the whole
    text): tried on the model itself, with 8 tokens and then the last one changed, since configs do not say it
    alike (``is_decoder`` is false by default in GPT-NeoX's config, whose model is causal, and in BERT's, whose is
    not)."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(1, min(8, context_length(model) or 8) + 1).remainder(vocab).unsqueeze(0)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % vocab
    with torch.no_grad():
        before, after = (model(x).logits[0, :-1] for x in (ids, changed))
    if not torch.allclose(before, after, rtol=1e-4, atol=1e-5):
        kind = getattr(model.config, "model_type", "?")
        raise CheckpointError(f"checkpoint {path}: a {kind} model whose prediction at a position changes with the "
                              "tokens after it (a bidirectional encoder such as BERT), not a causal language model; "
                              "use a decoder-only checkpoint such as GPT-2")


def _check_size(path: Path, config, weights: list[Path]) -> None:
    """Refuse a config.json that describes a model far larger than the weights files hold (a config from another
    model, or a ``model_type`` edited: transformers would build that model at its default size, gigabytes, before any
    weight is compared). About 12·layers·d² + vocab·d parameters; the files may hold them in 8 bits or more."""
    layers, d = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    vocab = getattr(config, "vocab_size", None)
    if not all(isinstance(x, int) and x > 0 for x in (layers, d, vocab)):
        return
    params = 12 * layers * d * d + vocab * d
    stored = sum(p.stat().st_size for p in weights if p.name != "training_args.bin")
    if params > 2 * stored + 2**24:  # fewer than half a byte per parameter: not these weights
        raise CheckpointError(f"checkpoint {path}: config.json describes a {getattr(config, 'model_type', '?')} model "
                              f"of about {params / 1e6:,.0f} M parameters ({layers} layers of width {d}), but its "
                              f"weights files hold {stored / 1e6:,.1f} MB; the config belongs to another model — save "
                              "the config and the weights together (save_pretrained)")


def _check_weights(path: Path, config, info: dict) -> None:
    """Refuse weights that do not fill the model config.json builds: transformers would start the missing ones from
    random numbers and only log a warning. (Keys a model may lack legitimately, such as GPT-2's ``lm_head.weight``
    tied to its embedding or its causal-mask buffers, are not reported as missing or unexpected by transformers.)"""
    missing, unexpected = list(info.get("missing_keys", ())), list(info.get("unexpected_keys", ()))
    mismatched = list(info.get("mismatched_keys", ()))
    if not (missing or unexpected or mismatched):
        return
    found = []
    if missing:
        found.append(f"{len(missing)} weights the config needs are missing (e.g. {sorted(missing)[0]})")
    if unexpected:
        found.append(f"{len(unexpected)} weights in the files are not used (e.g. {sorted(unexpected)[0]})")
    if mismatched:
        name, *shapes = sorted(mismatched, key=str)[0]
        shape = f": {tuple(shapes[0])} in the files, {tuple(shapes[1])} in the model" if len(shapes) == 2 else ""
        found.append(f"{len(mismatched)} weights have another shape (e.g. {name}{shape})")
    raise CheckpointError(f"checkpoint {path}: the weights do not match config.json (a {config.model_type} model): "
                          f"{'; '.join(found)}; transformers would start such weights from random numbers. config.json "
                          "and the weights come from different models — re-save model and config together "
                          "(`model.save_pretrained(path)`)")


def disable_dropout(model: torch.nn.Module) -> None:
    """Set the probability of every ``nn.Dropout`` module of ``model`` to 0, and the config's dropout fields, as the
    course's own models are built (and as TRL's ``disable_dropout=True`` does; GPT-2's dropouts are all modules).

    A real GPT-2 comes with dropout 0.1: left on, the policy (in train mode) and its reference (in eval mode) would
    disagree before any step, so DPO's first loss would not be ln 2 and PPO's ratios would not start at 1."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "dropout", "attention_dropout",
                 "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)  # saved checkpoints then say what ran
