"""The exercises added for issue 10 are graded with public and hidden tests, and each common mistake loses exactly
its question's points: the gradient weight σ(−β·h) (03), one DPO training step (05), conservative DPO (07).

The deliberately wrong submissions (``WRONG``, one per common mistake) are graded in tests/test_grading.py's one
`grade` run, together with every other submission: there each loses exactly its question's points, and the full
solutions score every point, the new questions included. This module checks the exercises' tests themselves.
"""

from __future__ import annotations

import json

import nbformat
import pytest

from dpo_teach import grading
from dpo_teach.grading import judge
from dpo_teach.grading.assign import solution_lines

WEIGHT = "def dpo_gradient_weight("
STEP = "def dpo_training_step("
CDPO = "def cdpo_loss("

_STEP_HEAD = "def dpo_training_step(policy, reference, batch, optimizer, loss_fn, max_grad_norm=1.0):\n"
_CDPO_HEAD = ("import torch.nn.functional as F\n"
              "def cdpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,"
              " label_smoothing):\n"
              "    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)\n"
              "    rewards = (beta * (policy_chosen_logps - ref_chosen_logps).detach(),"
              " beta * (policy_rejected_logps - ref_rejected_logps).detach())\n")


def _step(ref: str = "with torch.no_grad():\n            rc, rr = logprobs.concatenated_logprobs(reference, batch)",
          train: str = "policy.train()", update: str = "optimizer.zero_grad()\n    l.mean().backward()\n"
          "    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)\n    optimizer.step()",
          loss: str = "loss_fn(pc, pr, rc, rr)") -> str:
    return (_STEP_HEAD + f"    {train}\n"
            "    pc, pr = logprobs.concatenated_logprobs(policy, batch)\n"
            "    if 'ref_chosen_logps' in batch:\n"
            "        rc, rr = batch['ref_chosen_logps'], batch['ref_rejected_logps']\n"
            f"    else:\n        {ref}\n"
            f"    l, cw, rw = {loss}\n"
            f"    {update}\n"
            "    return losses.step_metrics(l, cw, rw, pc, pr)\n")


# mistake → (assignment, text that finds the answer cell, the wrong answer, the only question that must lose points)
WRONG = {
    "weight_sign_flipped": ("03_deriving_dpo", WEIGHT, """
def dpo_gradient_weight(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return torch.sigmoid(beta * h).detach()  # σ(+βh): weighs the pairs already right
""", "dpo_gradient_weight"),
    "weight_without_beta": ("03_deriving_dpo", WEIGHT, """
def dpo_gradient_weight(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return torch.sigmoid(-h).detach()  # β forgotten
""", "dpo_gradient_weight"),
    "weight_one_minus_sigmoid": ("03_deriving_dpo", WEIGHT, """
def dpo_gradient_weight(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (1 - torch.sigmoid(beta * h)).detach()  # right in exact arithmetic, 0 for large margins
""", "dpo_gradient_weight"),
    "step_reference_not_detached": ("05_dpo_on_gpt2", STEP,
                                    _step(ref="rc, rr = logprobs.concatenated_logprobs(reference, batch)"),
                                    "dpo_training_step"),
    "step_missing_zero_grad": ("05_dpo_on_gpt2", STEP, _step(update="l.mean().backward()\n"
                               "    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)\n"
                               "    optimizer.step()"), "dpo_training_step"),
    "step_sum_not_mean": ("05_dpo_on_gpt2", STEP, _step(update="optimizer.zero_grad()\n    l.sum().backward()\n"
                          "    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)\n"
                          "    optimizer.step()"), "dpo_training_step"),
    "step_policy_in_eval_mode": ("05_dpo_on_gpt2", STEP, _step(train="policy.eval()"), "dpo_training_step"),
    "step_ignores_loss_fn": ("05_dpo_on_gpt2", STEP, _step(loss="dpo_loss(pc, pr, rc, rr, beta=BETA)"),
                             "dpo_training_step"),
    "step_without_clipping": ("05_dpo_on_gpt2", STEP, _step(update="optimizer.zero_grad()\n    l.mean().backward()\n"
                              "    optimizer.step()"), "dpo_training_step"),
    "step_before_backward": ("05_dpo_on_gpt2", STEP, _step(update="optimizer.zero_grad()\n    optimizer.step()\n"
                             "    l.mean().backward()"), "dpo_training_step"),
    "cdpo_epsilon_swapped": ("07_variants_and_pitfalls", CDPO, _CDPO_HEAD + """
    losses = -label_smoothing * F.logsigmoid(beta * h) - (1 - label_smoothing) * F.logsigmoid(-beta * h)  # ε swapped
    return losses, *rewards
""", "cdpo_loss"),
    "cdpo_naive_log_sigmoid": ("07_variants_and_pitfalls", CDPO, _CDPO_HEAD + """
    losses = (-(1 - label_smoothing) * torch.log(torch.sigmoid(beta * h))
              - label_smoothing * torch.log(torch.sigmoid(-beta * h)))  # inf once σ underflows
    return losses, *rewards
""", "cdpo_loss"),
    "cdpo_ignores_epsilon": ("07_variants_and_pitfalls", CDPO, _CDPO_HEAD + """
    losses = -F.logsigmoid(beta * h)  # plain DPO
    return losses, *rewards
""", "cdpo_loss"),
}
NEW_QUESTIONS = {"03_deriving_dpo": "dpo_gradient_weight", "05_dpo_on_gpt2": "dpo_training_step",
                 "07_variants_and_pitfalls": "cdpo_loss"}


def points(assigned, name: str) -> dict[str, float]:
    manifest = json.loads((assigned / "autograder" / f"{name}.json").read_text())
    return {q["name"]: float(q["points"]) for q in manifest["questions"] if not q["manual"]}


@pytest.mark.parametrize("name", sorted(NEW_QUESTIONS))
def test_new_exercises_have_public_and_hidden_tests(assigned, name):
    """The student notebook carries the public tests; the bundle's hidden tests stay out of it."""
    student = (assigned / "notebooks" / f"{name}.ipynb").read_text()
    question = NEW_QUESTIONS[name]
    assert f'grader.check(\\"{question}\\")' in student or f'grader.check("{question}")' in student
    assert question in points(assigned, name)
    master = nbformat.read(grading.MASTERS / f"{name}.ipynb", as_version=4)
    hidden = [c.source for c in master.cells if c.cell_type == "code" and c.source.startswith("# HIDDEN")]
    secret = set(solution_lines(grading.MASTERS / f"{name}.ipynb"))  # specific lines no student cell shows
    hidden_lines = {line for h in hidden for line in h.splitlines()[1:] if line in secret}
    assert hidden and hidden_lines, f"{name}: no hidden test line to look for"
    nb = nbformat.read(assigned / "notebooks" / f"{name}.ipynb", as_version=4)
    shown = [c.source for c in nb.cells] + [case["code"] for test in nb.metadata["otter"]["tests"].values()
                                           for suite in test["suites"] for case in suite["cases"]]
    leaked = sorted(line for line in hidden_lines if any(line in text for text in shown))
    assert not leaked, f"{name}: hidden test lines in the student notebook: {leaked[:3]}"


def first_failures(assigned, name: str, question: str, answer: str) -> list[str]:
    """What ``grader.check(question)`` says of ``answer`` in the student notebook: each failing public case's first
    failing line, as ``"Type: message"`` (each case a doctest, run as the grader runs it: its examples one by one in
    a fresh namespace, up to the first that raises)."""
    import torch

    from dpo_teach import logprobs, losses

    nb = nbformat.read(assigned / "notebooks" / f"{name}.ipynb", as_version=4)
    cases = [case["code"] for suite in nb.metadata["otter"]["tests"][question]["suites"] for case in suite["cases"]]
    assert cases, f"{name}: no public case of {question}"
    answered = {"torch": torch, "logprobs": logprobs, "losses": losses}
    exec(compile(answer, "<answer>", "exec"), answered)  # noqa: S102 - our own test answers
    failed = []
    for code in cases:
        ns = dict(answered)
        try:
            for example in judge.test_case(code, hidden=False)["examples"]:
                exec(compile(example, "<case>", "single"), ns)  # noqa: S102 - the course's own public tests
        except Exception as e:  # noqa: BLE001 - what the student would read
            failed.append(f"{type(e).__name__}: {e}")
    return failed


def public_messages(assigned, name: str, question: str, answer: str) -> list[str]:
    """The words of each failing public case of ``question`` on ``answer``, each an assert's."""
    said = first_failures(assigned, name, question, answer)
    assert all(s.startswith("AssertionError: ") for s in said), said
    return [s.removeprefix("AssertionError: ") for s in said]


@pytest.mark.parametrize("mistake, says", [
    # the metrics of the batch after the step: the messages speak of the returned metrics, never of the loss_fn
    (_step(update="optimizer.zero_grad()\n    l.mean().backward()\n"
           "    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)\n    optimizer.step()\n"
           "    pc, pr = logprobs.concatenated_logprobs(policy, batch)\n    l, cw, rw = loss_fn(pc, pr, rc, rr)"),
     ("before optimizer.step()", "step 6: the metrics", "step 6: the returned loss")),
    # zero_grad after the step: the leftover gradients at the start of the next one
    (_step(update="l.mean().backward()\n    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)\n"
           "    optimizer.step()\n    optimizer.zero_grad()"), ("step 5: clear the gradients",)),
    (_step(loss="losses.dpo_loss(pc, pr, rc, rr, beta=0.5)"), ("step 4: compute the losses with the loss_fn",)),
    # π_ref's log-probs with a graph: this one used to pass in public while the notebook's probe said the step differs
    (_step(ref="rc, rr = logprobs.concatenated_logprobs(reference, batch)"),
     ("step 3: π_ref's log-probs under torch.no_grad()",)),
])
def test_each_training_step_mistake_is_told_what_to_change(assigned, mistake, says):
    """A step that returns the metrics of the batch after the step was told, among others, to use the loss_fn it
    was given (it did), and one that lets a gradient reach π_ref passed; each message now names the requirement the
    answer breaks."""
    said = public_messages(assigned, "05_dpo_on_gpt2", "dpo_training_step", mistake)
    assert len(said) == len(says) and all(s in m for s, m in zip(says, said)), said
