"""π_ref cache and checkpoints: reuse, corrupt entries, unusable directories."""

import pytest
import torch

from dpo_teach.model import CheckpointError, build_model, load_checkpoint, same_weights, save_checkpoint
from dpo_teach.world import WorldConfig, cache_dir, load_reference

FAST = WorldConfig(preset="tiny", corpus_size=500, sft_steps=5, sft_batch_size=8, seed=11)


def test_cache_is_keyed_by_config_and_reused(cache_root, count_builds):
    assert cache_dir() == cache_root
    m1, _ = load_reference(FAST)
    entries = list(cache_root.glob("reference-tiny-*"))
    builds = count_builds()
    m2, _ = load_reference(FAST)  # second call loads, does not rebuild
    assert builds == [], "π_ref was rebuilt although its cache entry is there"
    assert list(cache_root.glob("reference-tiny-*")) == entries
    assert same_weights(m1, m2)
    assert WorldConfig(seed=1).key() != WorldConfig(seed=2).key()


def test_build_is_reproducible_whatever_the_callers_thread_count(cache_root):
    """The same config builds the same π_ref. The cache keeps whichever was built first (by a notebook on one thread,
    or the CLI on all cores) for every later run: the build must not depend on the caller's torch threads, and must
    leave them as it found them."""
    before = torch.get_num_threads()
    try:
        built = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            built.append(load_reference(FAST, rebuild=True)[0])
            assert torch.get_num_threads() == threads, "the caller's thread count must be restored"
    finally:
        torch.set_num_threads(before)
    assert same_weights(*built), "π_ref's weights depend on the thread count of the process that built it"


def test_a_freshly_built_reference_is_the_cached_one_without_gradients(cache_root, count_builds, tmp_path):
    """π_ref built now and π_ref loaded from the cache are the same model, with the same config: no gradient left
    over from its SFT (a stale one would add into the gradients notebook 04 computes through π_ref, and count as
    "π_ref has a gradient" there, on a student's first run only), and a policy saved from either writes the same
    files (the first run wrote another dropout field into config.json, later runs how the tokenizer was loaded into
    tokenizer_config.json)."""
    built, built_tok = load_reference(FAST, rebuild=True)
    builds = count_builds()
    loaded, loaded_tok = load_reference(FAST)
    assert builds == [], "the second π_ref must come from the cache"
    assert all(p.grad is None for p in built.parameters())
    assert all(p.grad is None for p in loaded.parameters())
    assert not built.training and not loaded.training
    assert built.config.to_diff_dict() == loaded.config.to_diff_dict()
    for name, (model, tokenizer) in {"built": (built, built_tok), "loaded": (loaded, loaded_tok)}.items():
        save_checkpoint(model, tokenizer, tmp_path / name)  # as a run saves its policy
    for file in ("config.json", "tokenizer_config.json"):
        assert (tmp_path / "built" / file).read_text() == (tmp_path / "loaded" / file).read_text(), file


def test_saving_and_loading_draw_no_progress_bar_and_leave_the_callers_setting(tmp_path, world, capfd):
    """transformers drew "Writing model shards" and "Loading weights" bars in the middle of a student's output, each
    time π_ref was built or a policy saved or loaded."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (True, False):  # as in a fresh kernel, and as after `dpo-teach` or a notebook turned them off
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            save_checkpoint(*world, tmp_path / f"ck-{enabled}")
            load_checkpoint(tmp_path / f"ck-{enabled}")
            assert hf_logging.is_progress_bar_enabled() == enabled, "the caller's setting is theirs"
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err, err


def test_corrupt_cache_is_rebuilt_with_a_warning(cache_root):
    load_reference(FAST)
    path = cache_root / f"reference-tiny-{FAST.key()}"
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match=f"reference cache {path} is unusable.*rebuilding"):
        model, tok = load_reference(FAST)
    reloaded, _ = load_checkpoint(path)
    assert same_weights(model, reloaded)


@pytest.mark.parametrize("built_with, rebuilt", [("5.3.0", True), ("5.14.1", True), ("5.15.0", False),
                                                 ("5.25.0", False), (None, False)])
def test_a_reference_cached_by_a_transformers_that_skipped_gpt2s_init_scale_is_built_again(cache_root, count_builds,
                                                                                          built_with, rebuilt):
    """transformers 5.0 to 5.14 built another π_ref (model.check_scaled_init, which now refuses to build there): an
    entry they cached before that check existed is built again, with the reason, not loaded as the course's."""
    import json

    load_reference(FAST)
    path = cache_root / f"reference-tiny-{FAST.key()}"
    config = json.loads((path / "config.json").read_text())
    if built_with is None:
        config.pop("transformers_version")
    else:
        config["transformers_version"] = built_with
    (path / "config.json").write_text(json.dumps(config))
    builds = count_builds()
    if rebuilt:
        with pytest.warns(UserWarning, match=f"reference cache {path} is unusable \\(it was built with transformers "
                                             f"{built_with}, whose GPT-2 skips the residual init scale"):
            load_reference(FAST)
    else:
        load_reference(FAST)
    assert len(builds) == rebuilt


def test_missing_and_corrupt_checkpoints_say_what_to_do(tmp_path, world):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing.*save_pretrained"):
        load_checkpoint(tmp_path / "empty")
    model, tok = world
    save_checkpoint(model, tok, tmp_path / "ok")
    loaded, loaded_tok = load_checkpoint(tmp_path / "ok")
    assert same_weights(model, loaded) and loaded_tok.eos_token_id == tok.eos_token_id
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        load_checkpoint(tmp_path / "ok")


def test_a_loaded_checkpoint_trains_without_dropout(tmp_path, world):
    """A real GPT-2 comes with dropout 0.1. Loaded, its dropout is off: in train mode (a policy) it gives the same
    log-probs as in eval mode (its reference), so DPO starts at ln 2 and PPO's ratios at 1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = world
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_layer=1, n_embd=32, n_head=2,  # dropout 0.1 each
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    save_checkpoint(GPT2LMHeadModel(config), tok, tmp_path / "gpt2-like")
    model, _ = load_checkpoint(tmp_path / "gpt2-like")
    ids = torch.tensor([tok("the film was great .")["input_ids"]])
    model.train()
    first, second = model(ids).logits, model(ids).logits
    model.eval()
    assert torch.equal(first, second) and torch.allclose(first, model(ids).logits, atol=1e-6)
    assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0.0


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, world):
    model, tok = world
    save_checkpoint(model, tok, tmp_path / "ckpt")

    class Broken:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(model, Broken(), tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert same_weights(model, loaded)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_model("huge", 100, 0)


def test_atomic_writes_keep_the_old_file_on_failure_and_use_normal_permissions(tmp_path):
    import os

    from dpo_teach.utils import atomic_file, atomic_write_json

    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == '{\n  "a": 1\n}\n' and os.listdir(tmp_path) == ["m.json"]


def _current_umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_set(paths, texts):
    from dpo_teach.utils import atomic_files

    with atomic_files(paths) as tmps:
        for tmp, text in zip(tmps, texts, strict=True):
            tmp.write_text(text)


@pytest.mark.parametrize("stop", [None, 1, 2, 3, "after"])
def test_files_written_as_a_set_are_the_earlier_set_or_the_new_one_after_a_ctrl_c(tmp_path, ctrl_c_at_rename, stop):
    """A comparison's results.json, table.md and frontier.png (and grading's grades.csv and grades.json) replace
    the earlier ones together: a Ctrl-C at any rename of the swap (``stop``: before the 1st, 2nd or 3rd, or right
    after the last) leaves the earlier set, a file the earlier run did not have included, and no temporary file."""
    import os

    paths = [tmp_path / "results.json", tmp_path / "table.md", tmp_path / "frontier.png"]
    _write_set(paths[:2], ["old results", "old table"])  # the earlier run had no figure
    ctrl_c_at_rename(before=None if stop == "after" else stop, after=3 if stop == "after" else None)
    if stop is None:
        _write_set(paths, ["new results", "new table", "new figure"])
        assert [p.read_text() for p in paths] == ["new results", "new table", "new figure"]
    else:
        with pytest.raises(KeyboardInterrupt):
            _write_set(paths, ["new results", "new table", "new figure"])
        assert [p.read_text() for p in paths[:2]] == ["old results", "old table"] and not paths[2].exists()
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths if p.exists())


def test_files_of_a_set_are_untouched_when_the_block_fails_and_a_killed_runs_temporary_files_go(tmp_path):
    import subprocess
    import sys

    from dpo_teach.utils import atomic_files

    path = tmp_path / "table.md"
    path.write_text("earlier")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".table.md.{int(ended.stdout)}.abc123.tmp"  # a SIGKILLed run's
    abandoned.write_text("half")
    with pytest.raises(RuntimeError):
        with atomic_files([path]) as (tmp,):
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["table.md"]
