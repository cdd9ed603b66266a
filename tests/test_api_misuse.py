"""The Python API misused as a student might in a notebook: each mistake gets an error that names the argument and what
to do, never silently wrong numbers or a bare error from deep inside torch. Each misuse test failed before its fix (a
red-team pass, findings R8–R16); the valid paths beside them keep their numbers.

Models here are built in the test (an untrained 2-layer GPT-2 of a few thousand weights), never π_ref.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from dpo_teach import bandit
from dpo_teach.dpo import DPOConfig
from dpo_teach.evaluate import evaluate_policy, preference_accuracy
from dpo_teach.logprobs import (
    PreferenceCollator,
    concatenated_logprobs,
    reference_logprobs,
    tokenize_pairs,
    with_reference_logprobs,
)
from dpo_teach.losses import LOGPROBS, LOSSES, dpo_loss, get_loss
from dpo_teach.sampling import Samples, sample, samples_logprobs

ROWS = [
    {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."},
    {"prompt": "honestly , the acting", "chosen": " was superb .", "rejected": " was awful ."},
    {"prompt": "the film was", "chosen": " fine .", "rejected": " dull ."},
]


@pytest.fixture(scope="module")
def tiny():
    """``(model, tokenizer)``: an untrained tiny GPT-2 and a byte-level BPE tokenizer trained on ROWS."""
    from dpo_teach.model import build_model
    from dpo_teach.tokenizer import train_tokenizer

    tok = train_tokenizer([r["prompt"] + r[k] for r in ROWS for k in ("chosen", "rejected")] * 20, vocab_size=280)
    torch.manual_seed(0)
    return build_model("tiny", len(tok), tok.eos_token_id, n_positions=32).eval(), tok


# --- R8: β ≤ 0 ------------------------------------------------------------------------------------------------------

PI_REF = torch.tensor(bandit.PI_REF, dtype=torch.float64)
R = torch.linspace(-1, 1, 15, dtype=torch.float64).view(3, 5)


@pytest.mark.parametrize("call", [
    lambda b: DPOConfig(beta=b),
    lambda b: get_loss("sigmoid", b),
    lambda b: get_loss("ipo", b),
    lambda b: bandit.optimal_policy(PI_REF, R, b),
    lambda b: bandit.log_partition(PI_REF, R, b),
    lambda b: bandit.fit_dpo(torch.ones(3, 5, 5), PI_REF, b, max_iter=2),
    lambda b: bandit.train_policy(torch.ones(3, 5, 5), PI_REF, b, steps=1),
], ids=["DPOConfig", "get_loss", "get_loss-ipo", "optimal_policy", "log_partition", "fit_dpo", "train_policy"])
@pytest.mark.parametrize("beta", [-0.5, float("nan")])
def test_a_negative_beta_is_refused(call, beta):
    """β = -0.5 trained the policy toward the rejected completions, without a word."""
    with pytest.raises(ValueError, match=rf"beta must be [>≥] 0, got {beta}: .*opposite preference"):
        call(beta)


@pytest.mark.parametrize("call", [
    lambda: get_loss("ipo", 0.0),  # was a bare ZeroDivisionError
    lambda: bandit.optimal_policy(PI_REF, R, 0.0),  # nan
    lambda: bandit.log_partition(PI_REF, R, 0.0),  # nan
    lambda: bandit.fit_dpo(torch.ones(3, 5, 5), PI_REF, 0.0, max_iter=2),  # π_ref back, as if fitted
], ids=["get_loss-ipo", "optimal_policy", "log_partition", "fit_dpo"])
def test_beta_zero_is_refused_where_it_has_no_value(call):
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0.0"):
        call()


def test_beta_zero_still_trains_nothing_where_notebook_07_shows_it():
    """Notebook 07 runs DPO at β = 0 on purpose (the loss reads ln 2, nothing learns): DPOConfig and the DPO loss
    still take it."""
    h = torch.tensor([1.0, -2.0])
    losses, chosen, _ = DPOConfig(beta=0.0).loss()(h, torch.zeros(2), torch.zeros(2), torch.zeros(2))
    assert torch.allclose(losses, torch.full((2,), math.log(2))) and not chosen.any()
    assert bandit.optimal_policy(PI_REF, R, torch.tensor([[0.5], [1.0], [2.0]])).shape == (3, 5)  # a tensor of β's


# --- R9: pair_counts' P and K ---------------------------------------------------------------------------------------

PREFS = bandit.sample_preferences(PI_REF, R, 400, seed=0)  # P = 3 prompts, K = 5 responses


@pytest.mark.parametrize("P, K, says", [
    (5, 3, r"prefs\['chosen'\] holds ids 0 to 4, but K=3 leaves room for 0 to 2"),  # swapped: counted silently
    (3, 4, r"prefs\['chosen'\] holds ids 0 to 4, but K=4"),  # too few responses: also silent, aliased
    (3, 2, r"prefs\['chosen'\] holds ids 0 to 4, but K=2"),  # a deep IndexError
    (2, 5, r"prefs\['prompt'\] holds ids 0 to 2, but P=2"),
], ids=["swapped", "K-one-short", "K-too-small", "P-too-small"])
def test_pair_counts_names_the_size_too_small(P, K, says):
    with pytest.raises(ValueError, match=says + r".*pass P, the number of prompts, then K"):
        bandit.pair_counts(PREFS, P, K)


def test_pair_counts_still_counts_every_pair():
    counts = bandit.pair_counts(PREFS, 3, 5)
    brute = torch.zeros(3, 5, 5, dtype=torch.float64)
    for x, w, l in zip(PREFS["prompt"].tolist(), PREFS["chosen"].tolist(), PREFS["rejected"].tolist()):
        brute[x, w, l] += 1
    assert torch.equal(counts, brute)


# --- R10: kl_divergence's 0·log 0 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [
    torch.tensor([float("nan"), 0.5, 0.5], dtype=torch.float64),  # was 0.5·log(…) + 0.5·log(…): nan dropped
    torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)),  # log-probs for probs: was KL = 0
])
def test_kl_divergence_gives_nan_for_what_is_not_a_probability(p):
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert math.isnan(float(bandit.kl_divergence(p, q)))


def test_kl_divergence_with_zeros_in_p_is_the_direct_formula_bit_for_bit():
    """Σ over p(y) > 0 of p·(log p − log q): values and gradients as before the fix, also where q = 0 under p = 0."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    p[:, :2] = 0.0
    p = p / p.sum(-1, keepdim=True)
    q = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    q[0, 0] = 0.0  # q = 0 where p = 0 too
    ours_p, ours_q = p.clone().requires_grad_(), q.clone().requires_grad_()
    direct_p, direct_q = p.clone().requires_grad_(), q.clone().requires_grad_()
    ours = bandit.kl_divergence(ours_p, ours_q)
    direct = torch.where(direct_p > 0, direct_p * (torch.log(direct_p) - torch.log(direct_q)), 0.0).sum(-1)
    assert torch.equal(ours, direct)
    loop = [sum(a * math.log(a / b) for a, b in zip(pr, qr) if a > 0) for pr, qr in zip(p.tolist(), q.tolist())]
    assert torch.allclose(ours, torch.tensor(loop, dtype=torch.float64), atol=1e-12)
    ours.sum().backward()
    direct.sum().backward()
    for a, b in [(ours_p.grad, direct_p.grad), (ours_q.grad, direct_q.grad)]:  # nan where p = 0, in both alike
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# --- R11: one string for a list of prompts ---------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda model, tok: sample(model, tok, "the film was", max_new_tokens=2),
    lambda model, tok: evaluate_policy(model, model, tok, "the film was", max_new_tokens=2),
], ids=["sample", "evaluate_policy"])
def test_one_prompt_string_is_refused_not_sampled_per_character(tiny, call):
    with pytest.raises(TypeError, match=r"^prompts must be a list of strings, got a str: wrap it, \[prompt\]$"):
        call(*tiny)


# --- R12: an empty prompt ------------------------------------------------------------------------------------------

def test_tokenize_pairs_names_the_row_whose_prompt_is_empty(tiny):
    _, tok = tiny
    rows = [ROWS[0], {**ROWS[1], "prompt": ""}]
    with pytest.raises(ValueError, match=r"^row 1: the prompt '' has no tokens; every prompt needs at least one token"):
        tokenize_pairs(tok, rows, max_length=32)


# --- R13: a batch of an odd number of rows ---------------------------------------------------------------------------

def test_concatenated_logprobs_refuses_an_odd_number_of_rows(tiny):
    model, tok = tiny
    batch = PreferenceCollator(tok.pad_token_id)(tokenize_pairs(tok, ROWS, max_length=32))  # 6 rows
    odd = {k: v[:5] for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"batch has 5 rows; concatenated_logprobs needs 2B"):
        concatenated_logprobs(model, odd)


# --- R14: log-prob shapes that broadcast ---------------------------------------------------------------------------

B = 4
G = torch.Generator().manual_seed(0)
LOGPS = [-10 * torch.rand(B, generator=G) for _ in range(4)]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("which, bad", [
    (2, LOGPS[2][:, None]),  # (B, 1) beside (B,): a (B, B) loss, a wrong mean
    (3, LOGPS[3][:3]),  # another B: torch's unnamed "size of tensor a (3) must match"
    (0, -torch.rand(B, 7)),  # per-token (B, T), not summed
], ids=["column", "length", "per-token"])
def test_a_loss_names_the_log_prob_of_the_wrong_shape(name, which, bad):
    args = [bad if i == which else x for i, x in enumerate(LOGPS)]  # reference_free ignores its reference's two,
    # but not their shape: a (B, 1) there is as wrong a call
    with pytest.raises(ValueError, match=rf"^{LOGPROBS[which]} has shape {re.escape(str(tuple(bad.shape)))}; each "
                                         r"log-prob argument is one number per pair, shape \(B,\)"):
        get_loss(name, 0.5)(*args)
    with pytest.raises(ValueError, match=LOGPROBS[which]):
        LOSSES[name](*args, beta=0.5)


def test_the_losses_still_give_their_numbers():
    """The shape check adds nothing to valid calls: DPO's loss is its equation, bit for bit."""
    pc, pr, rc, rr = LOGPS
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert torch.equal(losses, -torch.nn.functional.logsigmoid(0.1 * ((pc - rc) - (pr - rr))))
    assert torch.equal(chosen, 0.1 * (pc - rc)) and torch.equal(rejected, 0.1 * (pr - rr))
    assert LOSSES["reference_free"](pc, pr, None, None, beta=0.1)[0].shape == (B,)


# --- R15: non-finite log-probs carried with the examples ---------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1], ids=["spot-checked", "not-spot-checked"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_carried_reference_logprobs_must_be_finite(tiny, index, value):
    model, tok = tiny
    examples = reference_logprobs(model, tokenize_pairs(tok, ROWS * 3, max_length=32), tok.pad_token_id)
    assert with_reference_logprobs(model, examples, tok.pad_token_id) is examples  # as carried: fine
    examples[index] = {**examples[index], "ref_rejected_logps": value}  # 9 examples: 0, 3, 5 and 8 are spot-checked
    with pytest.raises(ValueError, match=rf"example {index} carries ref_rejected_logps = {value}, not a log-prob"):
        with_reference_logprobs(model, examples, tok.pad_token_id)


# --- R16: batch_size ≤ 0, and nothing to score -------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda model, tok, n: reference_logprobs(model, tokenize_pairs(tok, ROWS, 32), tok.pad_token_id, batch_size=n),
    lambda model, tok, n: sample(model, tok, ["the film was"], max_new_tokens=2, batch_size=n),
    lambda model, tok, n: samples_logprobs(model, sample(model, tok, ["the film was"], max_new_tokens=2),
                                           tok.pad_token_id, batch_size=n),
    lambda model, tok, n: preference_accuracy(model, model, tok, ROWS, batch_size=n),
    lambda model, tok, n: DPOConfig(batch_size=n),
], ids=["reference_logprobs", "sample", "samples_logprobs", "preference_accuracy", "DPOConfig"])
@pytest.mark.parametrize("batch_size", [-1, 0])
def test_a_batch_size_below_one_is_refused(tiny, call, batch_size):
    """-1 dropped every example (reference_logprobs returned []); 0 was range()'s "arg 3 must not be zero"."""
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer, got {batch_size}$"):
        call(*tiny, batch_size)


@pytest.mark.parametrize("call, says", [
    (lambda model, tok: preference_accuracy(model, model, tok, []), r"no preference pairs to score: rows"),
    (lambda model, tok: evaluate_policy(model, model, tok, []), r"prompts is empty"),
    (lambda model, tok: samples_logprobs(model, Samples([], [], [], [], []), tok.pad_token_id), r"samples holds no"),
], ids=["preference_accuracy", "evaluate_policy", "samples_logprobs"])
def test_nothing_to_score_is_said_not_torch_cat(tiny, call, says):
    with pytest.raises(ValueError, match=says):
        call(*tiny)


def test_a_table_of_no_samples_and_a_log_every_below_one_are_said():
    """A bare StopIteration, and a ZeroDivisionError from train_policy's loop."""
    from dpo_teach.evaluate import samples_table

    with pytest.raises(ValueError, match=r"samples_table needs at least one column"):
        samples_table({})
    with pytest.raises(ValueError, match=r"^log_every must be a positive number of steps, got 0$"):
        bandit.train_policy(torch.ones(3, 5, 5), PI_REF, 0.5, steps=1, log_every=0)
