"""Sequence log-probs against a naive per-token loop, two separate forwards, and both padding sides."""

import pytest
import torch

from dpo_teach.logprobs import (
    PreferenceCollator,
    concatenated_logprobs,
    encode_completion,
    pad_rows,
    sequence_logprobs,
    tokenize_pairs,
)

ROWS = [
    {"prompt": "the film was", "chosen": " very dull .", "rejected": " great , but the music was weak ."},
    {"prompt": "honestly , the acting is", "chosen": " lovely and i loved it .", "rejected": " bad ."},
    {"prompt": "i think the plot felt", "chosen": " so simple .", "rejected": " quite long and boring ."},
]


def naive_logprob(model, prompt_ids, completion_ids):
    """log π(y|x) by running the model on each prefix and reading one token at a time."""
    total = 0.0
    for t, token in enumerate(completion_ids):
        prefix = torch.tensor([prompt_ids + completion_ids[:t]])
        with torch.no_grad():
            logits = model(input_ids=prefix).logits[0, -1]
        total += torch.log_softmax(logits.double(), -1)[token].item()
    return total


def test_completion_ends_with_eos_and_prompt_is_not_scored(world):
    model, tok = world
    p, c = encode_completion(tok, "the film was", " very dull .")
    assert c[-1] == tok.eos_token_id and tok.decode(c[:-1]) == " very dull ."
    batch = pad_rows([p], [c], tok.pad_token_id)
    assert batch["completion_mask"].sum() == len(c)
    assert batch["completion_mask"][0, : len(p)].sum() == 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_logprobs_match_a_naive_per_token_loop(world, side):
    model, tok = world
    enc = [encode_completion(tok, r["prompt"], r["chosen"]) for r in ROWS]
    batch = pad_rows([p for p, _ in enc], [c for _, c in enc], tok.pad_token_id, side)
    with torch.no_grad():
        fast = sequence_logprobs(model, **batch)
    naive = torch.tensor([naive_logprob(model, p, c) for p, c in enc], dtype=fast.dtype)
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=1e-5)


def test_left_and_right_padding_agree(world):
    model, tok = world
    enc = [encode_completion(tok, r["prompt"], r["rejected"]) for r in ROWS]
    P, C = [p for p, _ in enc], [c for _, c in enc]
    with torch.no_grad():
        right = sequence_logprobs(model, **pad_rows(P, C, tok.pad_token_id, "right"))
        left = sequence_logprobs(model, **pad_rows(P, C, tok.pad_token_id, "left"))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_concatenated_forward_equals_two_separate_forwards(world):
    model, tok = world
    examples = tokenize_pairs(tok, ROWS, max_length=64)
    with torch.no_grad():
        chosen, rejected = concatenated_logprobs(model, PreferenceCollator(tok.pad_token_id)(examples))
        sep = {}
        for key in ("chosen", "rejected"):
            batch = pad_rows([e["prompt_ids"] for e in examples], [e[f"{key}_ids"] for e in examples],
                             tok.pad_token_id)
            sep[key] = sequence_logprobs(model, **batch)
    torch.testing.assert_close(chosen, sep["chosen"], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, sep["rejected"], atol=1e-5, rtol=0)
    assert (chosen < 0).all() and (rejected < 0).all()


def test_gradients_flow_only_through_completion_tokens(world):
    model, tok = world
    batch = PreferenceCollator(tok.pad_token_id)(tokenize_pairs(tok, ROWS[:1], max_length=64))
    hidden = []  # the body's output at each position t, which predicts token t + 1
    hook = model.transformer.register_forward_hook(lambda m, a, out: hidden.append(out.last_hidden_state))
    try:
        chosen, _ = concatenated_logprobs(model, batch)
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(chosen.sum(), hidden[0])  # (2, T - 1, d): row 0 chosen, row 1 rejected
    predicts_completion = batch["completion_mask"][0, 1:].bool()  # (T - 1,): is token t + 1 a completion token?
    scored = grad[0].abs().sum(-1) > 0  # (T - 1,)
    assert predicts_completion.any() and (~predicts_completion).any()
    assert torch.equal(scored, predicts_completion), "only the positions that predict a completion token count"
    assert grad[1].abs().sum() == 0  # the rejected row is not part of the chosen score
    # the padding token id appears only as padding here: the loss must not depend on padded positions
    batch2 = {k: v.clone() for k, v in batch.items()}
    batch2["input_ids"][batch2["attention_mask"] == 0] = 5
    with torch.no_grad():
        a = concatenated_logprobs(model, batch)
        b = concatenated_logprobs(model, batch2)
    torch.testing.assert_close(a, b)


def test_length_normalized_is_a_named_option(world):
    model, tok = world
    batch = PreferenceCollator(tok.pad_token_id)(tokenize_pairs(tok, ROWS, max_length=64))
    with torch.no_grad():
        summed = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        mean = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                 average=True)
    torch.testing.assert_close(mean, summed / batch["completion_mask"].sum(-1))


def test_long_completion_is_cut_to_max_length(world):
    _, tok = world
    row = {"prompt": "the film was", "chosen": " great" * 40 + " .", "rejected": " bad ."}
    (ex,) = tokenize_pairs(tok, [row], max_length=20)
    assert len(ex["prompt_ids"]) + len(ex["chosen_ids"]) == 20
    assert ex["rejected_ids"][-1] == tok.eos_token_id
