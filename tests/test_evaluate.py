import copy
import random

import numpy as np
import pytest

from dpo_teach import grammar
from dpo_teach.evaluate import evaluate_policy, fluency, logratios, preference_accuracy, win_rate
from dpo_teach.sampling import Samples, sample, samples_logprobs


@pytest.fixture(scope="module")
def prompts():
    return random.Random(0).choices(grammar.all_prompts(), k=200)


def test_reference_against_itself(world, prompts):
    reference, tok = world
    metrics, samples = evaluate_policy(reference, reference, tok, prompts, seed=1)
    assert metrics["kl"] == 0.0
    assert metrics["fluency"] > 0.7  # even the quickly trained test π_ref mostly speaks the grammar
    assert -0.3 < metrics["reward"] < 0.3
    assert win_rate(samples, samples) == 0.5


def test_sampling_is_seeded_and_uses_exact_token_ids(world, prompts):
    reference, tok = world
    a = sample(reference, tok, prompts[:50], seed=5)
    b = sample(reference, tok, prompts[:50], seed=5)
    c = sample(reference, tok, prompts[:50], seed=6)
    assert a.completions == b.completions and a.completions != c.completions
    for ids, ended, text in zip(a.completion_ids, a.ended, a.completions):
        assert ended == (ids[-1] == tok.eos_token_id)
        assert tok.decode(ids[:-1] if ended else ids) == text


def test_a_checkpoints_generation_config_does_not_change_what_is_sampled(world, prompts):
    """A checkpoint may save sampling settings in generation_config.json (a repetition penalty, no repeated n-grams,
    a minimum length); ``generate`` fills every setting it is not given from there, so they changed the demo's
    samples, its KL and its rewards without a word. Samples must come from π itself: the settings are set aside,
    and put back afterwards."""
    from transformers import GenerationConfig

    reference, tok = world
    plain = sample(reference, tok, prompts[:40], seed=3)
    model = copy.deepcopy(reference)
    saved = GenerationConfig(repetition_penalty=3.0, no_repeat_ngram_size=1, min_new_tokens=12, top_k=5)
    model.generation_config = saved
    assert sample(model, tok, prompts[:40], seed=3).completion_ids == plain.completion_ids
    assert model.generation_config is saved
    assert min(len(c) for c in plain.completion_ids) < 12  # the settings would have changed these samples


def test_kl_estimate_is_positive_for_a_changed_policy(world, prompts):
    reference, tok = world
    policy = copy.deepcopy(reference)
    with __import__("torch").no_grad():
        policy.lm_head.weight.mul_(1.5)  # sharper distribution: a different π
    metrics, _ = evaluate_policy(policy, reference, tok, prompts, seed=1)
    assert metrics["kl"] > 0.05


def test_fluency_requires_grammar_and_eos():
    s = Samples(["p"] * 3, [" great .", " great .", " great great ."], [[1]] * 3, [[2, 0], [2], [2, 2, 0]],
                [True, False, True])
    assert list(fluency(s)) == [1.0, 0.0, 0.0]


def test_win_rate_needs_matching_prompts(world, prompts):
    reference, tok = world
    a = sample(reference, tok, prompts[:5], seed=1)
    b = sample(reference, tok, prompts[1:6], seed=1)
    with pytest.raises(ValueError, match="same prompts"):
        win_rate(a, b)


def test_preference_accuracy_is_zero_at_the_reference(world, pairs):
    reference, tok = world
    assert preference_accuracy(reference, reference, tok, pairs[:50]) == 0.0


def test_logratios_are_zero_at_the_reference(world, pairs):
    reference, tok = world
    chosen, rejected = logratios(reference, reference, tok, pairs[:50])
    assert chosen.shape == rejected.shape == (50,)
    assert not chosen.any() and not rejected.any(), "log π_ref/π_ref = 0 exactly: every pair ties"


def test_logratios_of_a_trained_policy_match_the_accuracy(world, pairs, trained_policy):
    import torch

    from dpo_teach.logprobs import PreferenceCollator, concatenated_logprobs, tokenize_pairs

    reference, tok = world
    policy = copy.deepcopy(trained_policy)
    rows = pairs[:60]
    chosen, rejected = logratios(policy, reference, tok, rows)
    assert chosen.abs().max() > 0.1 and rejected.abs().max() > 0.1, "π_θ ≠ π_ref: the log-ratios moved"
    assert preference_accuracy(policy, reference, tok, rows) == int((chosen > rejected).sum()) / len(rows)
    small_batches = logratios(policy, reference, tok, rows, batch_size=7)
    for a, b in zip((chosen, rejected), small_batches, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    batch = PreferenceCollator(tok.pad_token_id)(tokenize_pairs(tok, rows[:5], 64))  # by hand, for five pairs
    with torch.no_grad():
        by_hand = [p - r for p, r in zip(concatenated_logprobs(policy, batch), concatenated_logprobs(reference, batch))]
    torch.testing.assert_close(chosen[:5], by_hand[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(rejected[:5], by_hand[1], atol=1e-4, rtol=0)
    # π_ref's log-probs computed once, for every policy compared on these pairs: the same numbers, bit for bit
    from dpo_teach.logprobs import reference_logprobs

    examples = reference_logprobs(reference, tokenize_pairs(tok, rows, 64), tok.pad_token_id)
    for a, b in zip((chosen, rejected), logratios(policy, reference, tok, rows, examples=examples), strict=True):
        assert torch.equal(a, b)
    assert preference_accuracy(policy, reference, tok, rows, examples=examples) == int((chosen > rejected).sum()) / 60
    for a, b in zip((chosen, rejected), logratios(policy, reference, tok, None, examples=examples), strict=True):
        assert torch.equal(a, b)
    # examples that are not these rows tokenized: an error that says so, never the wrong pairs' numbers
    with pytest.raises(ValueError, match="rows has 60 preference pairs but examples has 59"):
        logratios(policy, reference, tok, rows, examples=examples[1:])
    with pytest.raises(ValueError, match=r"examples\[59\] is not rows\[59\] tokenized"):
        logratios(policy, reference, tok, rows, examples=examples[:59] + examples[:1])


def test_samples_logprobs_are_batched_consistently(world, prompts):
    reference, tok = world
    s = sample(reference, tok, prompts[:30], seed=2)
    a = samples_logprobs(reference, s, tok.pad_token_id, batch_size=7)
    b = samples_logprobs(reference, s, tok.pad_token_id, batch_size=30)
    assert np.allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_left_padded_sampling_scores_equal_unpadded(world):
    import torch

    from dpo_teach.logprobs import pad_rows

    model, tok = world
    short, long = tok("the film was")["input_ids"], tok("honestly , i think the acting seemed")["input_ids"]
    batch = pad_rows([short, long], [[], []], tok.pad_token_id, "left")
    kw = dict(do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id, output_scores=True,
              return_dict_in_generate=True)
    padded = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw)
    alone = model.generate(input_ids=torch.tensor([short]), attention_mask=torch.ones(1, len(short), dtype=torch.long),
                           **kw)
    for a, b in zip(padded.scores, alone.scores):
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)
