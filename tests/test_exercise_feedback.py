"""What ``grader.check`` tells a student about answers a student writes: a wrong one is told what to change, in an
assert's words (never torch's own error from inside a test), and a correct one written another way passes.

Each answer here runs against the public cases in the student notebook's metadata, one case at a time and each up
to its first failing line, as ``grader.check`` runs them (``dpo_teach/grading/student.py``) and as ``dpo-teach
grade`` does. The wrong answers are mistakes students make that the checks let through or answered with a raw
error: an answer that writes into its input, ``log(softmax)``, ``nan_to_num``, a result in float32 or NumPy, the
loss's three tensors in another order, one value per token instead of per row.
"""

from __future__ import annotations

import doctest

import pytest
from test_exercises_new import first_failures  # tests/ is on sys.path (pytest's rootdir import)

_LOSS_HEAD = ("import torch\nimport torch.nn.functional as F\n"
              "def {name}(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,"
              " beta{extra}):\n"
              "    c = policy_chosen_logps - ref_chosen_logps\n    r = policy_rejected_logps - ref_rejected_logps\n")
_SEQ_HEAD = ("import torch\nimport torch.nn.functional as F\n"
             "def sequence_logprobs_from_logits(logits, input_ids, completion_mask):\n")


# (notebook, question, a wrong answer, words the first failure must hold)
WRONG = {
    "mask_written_in_place": ("05_dpo_on_gpt2", "completion_mask", (
        "import torch\ndef completion_mask(attention_mask, prompt_lengths):\n    m = attention_mask\n"
        "    for i in range(m.shape[0]):\n        first = int(m[i].nonzero()[0])\n"
        "        m[i, first:first + int(prompt_lengths[i])] = 0\n    return m"), "leave attention_mask as it is"),
    "log_of_softmax": ("05_dpo_on_gpt2", "sequence_logprobs", _SEQ_HEAD + (
        "    p = torch.softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
        "    return (torch.log(p) * completion_mask[:, 1:]).sum(-1)"), "torch.log_softmax"),
    "one_value_per_token": ("05_dpo_on_gpt2", "sequence_logprobs", _SEQ_HEAD + (
        "    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
        "    return lp[completion_mask[:, 1:].bool()]"), "one log-probability per row"),
    "kl_nan_to_num": ("01_kl_objective", "kl_divergence", (
        "import torch\ndef kl_divergence(p, q):\n    return torch.nan_to_num(p * torch.log(p / q)).sum(-1)"), "+inf"),
    "optimal_policy_float32": ("01_kl_objective", "optimal_policy", (
        "import torch\ndef optimal_policy(pi_ref, r, beta):\n"
        "    return torch.softmax((torch.log(pi_ref) + r / beta).float(), dim=-1)"),
     "the inputs are float64, the result is float32"),
    "objective_numpy": ("01_kl_objective", "objective", (
        "import torch\ndef objective(pi, pi_ref, r, beta):\n"
        "    return ((pi * r).sum(-1) - beta * torch.xlogy(pi, pi / pi_ref).sum(-1)).numpy()"),
     "return a torch tensor, not a numpy.ndarray"),
    "bt_loss_numpy": ("02_bradley_terry", "bt_loss", (
        "import numpy as np\ndef bt_loss(reward_chosen, reward_rejected):\n"
        "    return np.logaddexp(0, -(reward_chosen - reward_rejected).detach().numpy())"),
     "return a torch tensor, not a numpy.ndarray"),
    "bt_probability_float32": ("02_bradley_terry", "bt_probability", (
        "import torch\ndef bt_probability(reward_a, reward_b):\n"
        "    return torch.sigmoid((reward_a - reward_b).float())"),
     "the inputs are float64, the result is float32"),
    "bt_loss_sigma_clamped": ("02_bradley_terry", "bt_loss", (
        "import torch\ndef bt_loss(reward_chosen, reward_rejected):\n"
        "    return -torch.log(torch.sigmoid(reward_chosen - reward_rejected).clamp_min(1e-308))"), "a σ clamped"),
    "dpo_loss_in_another_order": ("03_deriving_dpo", "dpo_loss", _LOSS_HEAD.format(name="dpo_loss", extra="") + (
        "    return beta * c.detach(), beta * r.detach(), -F.logsigmoid(beta * (c - r))"), "the losses come first"),
    "dpo_loss_again_in_another_order": ("05_dpo_on_gpt2", "dpo_loss_again",
                                        _LOSS_HEAD.format(name="dpo_loss", extra="") + (
        "    return beta * c.detach(), beta * r.detach(), -F.logsigmoid(beta * (c - r))"), "the losses come first"),
    "ipo_loss_filled_in_float32": ("07_variants_and_pitfalls", "ipo_loss",
                                   _LOSS_HEAD.format(name="ipo_loss", extra="") + (
        "    h = c - r\n    losses = torch.zeros(len(h))\n    for i in range(len(h)):\n"
        "        losses[i] = (h[i] - 1 / (2 * beta)) ** 2\n    return losses, beta * c.detach(), beta * r.detach()"),
     "torch.zeros_like(x)"),
    "cdpo_loss_in_another_order": ("07_variants_and_pitfalls", "cdpo_loss",
                                   _LOSS_HEAD.format(name="cdpo_loss", extra=", label_smoothing") + (
        "    m = beta * (c - r)\n"
        "    losses = -(1 - label_smoothing) * F.logsigmoid(m) - label_smoothing * F.logsigmoid(-m)\n"
        "    return beta * c.detach(), losses, beta * r.detach()"), "the losses come first"),
    "sigmoid_in_place": ("00_start_here", "practice_sigmoid", (
        "import torch\ndef sigmoid(z):\n    return z.sigmoid_()"), "sigmoid changed z itself"),
    "sigmoid_mean": ("00_start_here", "practice_sigmoid", (
        "import torch\ndef sigmoid(z):\n    return torch.sigmoid(z).mean()"), "expected shape (2,), got ()"),
    "sigmoid_in_float64": ("00_start_here", "practice_sigmoid", (
        "import torch\ndef sigmoid(z):\n    return 1 / (1 + torch.exp(-z.double()))"),
     "the inputs are float32, the result is float64"),
    "probability_in_place": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    return torch.sigmoid(chosen_logratio.sub_(rejected_logratio).mul_(beta))"), "changed the log-ratios"),
    "probability_by_exp_overflowing": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    a = torch.exp(beta * (chosen_logratio - rejected_logratio))\n    return a / (1 + a)"), "gives nan"),
    "probability_clamped": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    return torch.sigmoid((beta * (chosen_logratio - rejected_logratio)).clamp(-10, 10))"), "do not clamp"),
    "probability_in_float64": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    return torch.sigmoid(beta * (chosen_logratio - rejected_logratio).double())"),
     "the inputs are float32, the result is float64"),
    "probability_numpy": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    return torch.sigmoid(beta * (chosen_logratio - rejected_logratio)).numpy()"),
     "return a torch tensor, not a numpy.ndarray"),
    "logged_probability_of_a_stub": ("04_fixed_reward_and_reference", "logged_probability", (
        "def preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    raise NotImplementedError\n"
        "try:\n    logged_probability = preference_probability(2.5, 0.4, 0.2)\nexcept NotImplementedError:\n"
        "    pass"), "is still a stub"),
}

# (notebook, question, a correct answer written another way than the solution's)
RIGHT = {
    "sigmoid_by_its_formula": ("00_start_here", "practice_sigmoid", (
        "import torch\ndef sigmoid(z):\n    return 1 / (1 + torch.exp(-z))")),
    "probability_by_tanh": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    return 0.5 * (1 + torch.tanh(beta * (chosen_logratio - rejected_logratio) / 2))")),
    "probability_by_logsigmoid": ("04_fixed_reward_and_reference", "preference_probability", (
        "import torch.nn.functional as F\ndef preference_probability(chosen_logratio, rejected_logratio, beta):\n"
        "    return F.logsigmoid(beta * chosen_logratio - beta * rejected_logratio).exp()")),
    "mask_from_argmax": ("05_dpo_on_gpt2", "completion_mask", (
        "import torch\ndef completion_mask(attention_mask, prompt_lengths):\n"
        "    first = attention_mask.argmax(-1, keepdim=True)\n"
        "    pos = torch.arange(attention_mask.shape[1])[None, :]\n"
        "    return ((pos >= first + prompt_lengths[:, None]) & (attention_mask > 0)).long()")),
    "logprobs_by_cross_entropy": ("05_dpo_on_gpt2", "sequence_logprobs", _SEQ_HEAD + (
        "    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction='none')\n"
        "    return -(nll * completion_mask[:, 1:]).sum(-1)")),
    "kl_by_xlogy": ("01_kl_objective", "kl_divergence", (
        "import torch\ndef kl_divergence(p, q):\n    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)")),
    "kl_by_distributions": ("01_kl_objective", "kl_divergence", (
        "import torch\ndef kl_divergence(p, q):\n    from torch.distributions import Categorical, kl_divergence as kl\n"
        "    return kl(Categorical(probs=p), Categorical(probs=q))")),
    "optimal_policy_by_logsumexp": ("01_kl_objective", "optimal_policy", (
        "import torch\ndef optimal_policy(pi_ref, r, beta):\n    z = torch.log(pi_ref) + r / beta\n"
        "    return torch.exp(z - torch.logsumexp(z, -1, keepdim=True))")),
    "bt_loss_by_softplus": ("02_bradley_terry", "bt_loss", (
        "import torch.nn.functional as F\ndef bt_loss(reward_chosen, reward_rejected):\n"
        "    return F.softplus(reward_rejected - reward_chosen)")),
    "dpo_loss_by_cross_entropy": ("03_deriving_dpo", "dpo_loss", _LOSS_HEAD.format(name="dpo_loss", extra="") + (
        "    z = beta * (c - r)\n"
        "    return (F.binary_cross_entropy_with_logits(z, torch.ones_like(z), reduction='none'), beta * c.detach(),"
        " beta * r.detach())")),
    "ipo_loss_filled_like_its_input": ("07_variants_and_pitfalls", "ipo_loss",
                                       _LOSS_HEAD.format(name="ipo_loss", extra="") + (
        "    h = c - r\n    losses = torch.zeros_like(h)\n    for i in range(len(h)):\n"
        "        losses[i] = (h[i] - 1 / (2 * beta)) ** 2\n    return losses, beta * c.detach(), beta * r.detach()")),
}


@pytest.mark.parametrize("mistake", sorted(WRONG))
def test_a_mistake_is_told_what_to_change(assigned, mistake):
    notebook, question, answer, says = WRONG[mistake]
    failed = first_failures(assigned, notebook, question, answer)
    assert failed, f"{mistake}: every public case of {question} passed"
    assert failed[0].startswith("AssertionError: ") and says in failed[0], failed


@pytest.mark.parametrize("answer", sorted(RIGHT))
def test_a_right_answer_written_another_way_passes(assigned, answer):
    notebook, question, code = RIGHT[answer]
    assert first_failures(assigned, notebook, question, code) == []


def test_a_check_stops_each_case_at_its_first_failing_line(monkeypatch):
    """What ``grader.check`` runs (otter's doctest, given the course's runner): after the failing line, doctest
    went on, and each later line that read the failed line's name added a NameError to the feedback."""
    from otter.test_files import ok_test

    from dpo_teach.grading import student

    monkeypatch.setattr(ok_test, "doctest", doctest)
    student.checks_ignore_prints()
    case = ">>> _out = answer()\n>>> assert _out == 1, 'one'\n>>> assert _out > 0, 'positive'\n"

    def answer():
        raise ValueError("the student's bug")

    passed, said = ok_test.run_doctest("q", case, {"answer": answer})
    assert not passed and "the student's bug" in said
    assert "NameError" not in said, said
    passed, said = ok_test.run_doctest("q", case, {"answer": lambda: 1})
    assert passed, said
