"""Shared fixtures: a small, quickly built toy world in a private cache directory (never the user's cache)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A world that builds in a few seconds: enough SFT for the grammar's shape, not for the demo's numbers.
SMALL_WORLD = dict(preset="tiny", corpus_size=4000, sft_steps=150, sft_batch_size=32)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """A private reference cache for the whole session, set as $DPO_TEACH_CACHE."""
    root = tmp_path_factory.mktemp("dpo-teach-cache")
    old = os.environ.get("DPO_TEACH_CACHE")
    os.environ["DPO_TEACH_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DPO_TEACH_CACHE", None)
    else:
        os.environ["DPO_TEACH_CACHE"] = old


@pytest.fixture(scope="session")
def world(cache_root):
    """``(reference, tokenizer)`` of a small toy world, built once per session."""
    from dpo_teach.world import WorldConfig, load_reference

    return load_reference(WorldConfig(**SMALL_WORLD))


@pytest.fixture(scope="session")
def pairs(world):
    """About 300 labelled preference pairs sampled from the small world's π_ref."""
    from dpo_teach.data import PreferenceConfig, make_preference_pairs

    reference, tokenizer = world
    return make_preference_pairs(reference, tokenizer, PreferenceConfig(n_prompts=300, seed=0))


@pytest.fixture(scope="session")
def notebook_reference(cache_root):
    """The notebooks' π_ref (the "tiny" preset at full size), built once in the session's private cache before any
    kernel needs it."""
    from dpo_teach.world import WorldConfig, load_reference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the notebooks; on a busy 2-core machine 2 threads build many times slower
    try:
        return load_reference(WorldConfig(preset="tiny"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_policy(world, pairs):
    """π_θ ≠ π_ref: a copy of the small world's reference after a few DPO steps on pairs[32:160], which tests
    comparing a batch of at most the first 32 pairs never see. Tests must not modify it (deep-copy first)."""
    import copy

    from dpo_teach.dpo import DPOConfig, train_dpo

    reference, tokenizer = world
    policy = copy.deepcopy(reference)
    train_dpo(policy, reference, tokenizer, pairs[32:160], DPOConfig(beta=0.5, lr=1e-2, batch_size=32, seed=0))
    policy.zero_grad(set_to_none=True)
    return policy


@pytest.fixture(scope="session")
def assigned(tmp_path_factory):
    """`make assign` into a temporary tree: student notebooks, bundles, manifests and solution notebooks."""
    from dpo_teach import grading

    root = tmp_path_factory.mktemp("assign")
    grading.assign(notebooks=root / "notebooks", autograder=root / "autograder", solutions=root / "solutions")
    return root
