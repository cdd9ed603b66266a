"""Every loss against values computed by hand in the test."""

import math

import pytest
import torch

from dpo_teach.losses import LOSSES, cdpo_loss, dpo_loss, hinge_loss, ipo_loss, reference_free_loss

# policy chosen, policy rejected, ref chosen, ref rejected (summed log-probs)
PC, PR, RC, RR = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0]), torch.tensor([-3.5, -4.0]), torch.tensor(
    [-3.0, -3.0])
# log-ratios: chosen [0.5, -1.0], rejected [-1.0, 1.0]; h = chosen - rejected = [1.5, -2.0]
H = [1.5, -2.0]


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_dpo_loss_by_hand():
    beta = 0.5
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=beta)
    expected = [-math.log(sig(beta * h)) for h in H]  # 0.4741, 1.3133
    torch.testing.assert_close(losses, torch.tensor(expected))
    torch.testing.assert_close(rc, torch.tensor([0.25, -0.5]))
    torch.testing.assert_close(rr, torch.tensor([-0.5, 0.5]))


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    x = torch.randn(16, dtype=torch.float64) * 10
    y = torch.randn(16, dtype=torch.float64) * 10
    losses, rc, rr = dpo_loss(x, y, x.clone(), y.clone(), beta=0.1)
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)), atol=1e-12)
    assert (rc == 0).all() and (rr == 0).all()


def test_rewards_are_detached_and_losses_per_example():
    pc = PC.clone().requires_grad_()
    losses, rc, rr = dpo_loss(pc, PR, RC, RR, beta=0.1)
    assert losses.shape == (2,) and losses.requires_grad
    assert not rc.requires_grad and not rr.requires_grad


def test_dpo_gradient_weight_is_sigmoid_of_reward_error():
    # d loss / d log π(y_w) = -β σ(r̂_l - r̂_w)  (the paper's §4 gradient weighting)
    beta = 0.5
    pc = PC.clone().requires_grad_()
    losses, rc, rr = dpo_loss(pc, PR, RC, RR, beta=beta)
    losses.sum().backward()
    expected = [-beta * sig(-beta * h) for h in H]
    torch.testing.assert_close(pc.grad, torch.tensor(expected))


def test_cdpo_by_hand():
    beta, eps = 0.5, 0.1
    losses, _, _ = cdpo_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    expected = [-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)) for h in H]
    torch.testing.assert_close(losses, torch.tensor(expected))
    with pytest.raises(ValueError, match="label_smoothing"):
        cdpo_loss(PC, PR, RC, RR, label_smoothing=0.5)


def test_ipo_by_hand():
    beta = 0.5  # target margin 1/(2β) = 1
    losses, _, _ = ipo_loss(PC, PR, RC, RR, beta=beta)
    torch.testing.assert_close(losses, torch.tensor([(1.5 - 1) ** 2, (-2.0 - 1) ** 2]))


def test_hinge_by_hand():
    losses, _, _ = hinge_loss(PC, PR, RC, RR, beta=1.0)
    torch.testing.assert_close(losses, torch.tensor([0.0, 3.0]))  # max(0, 1 - 1.5), max(0, 1 + 2)


def test_reference_free_by_hand():
    losses, rc, rr = reference_free_loss(PC, PR, RC, RR, beta=0.5)
    expected = [-math.log(sig(0.5 * (-3.0 + 4.0))), -math.log(sig(0.5 * (-5.0 + 2.0)))]
    torch.testing.assert_close(losses, torch.tensor(expected))
    # the reference is ignored: changing it changes nothing
    losses2, _, _ = reference_free_loss(PC, PR, RC + 7, RR - 3, beta=0.5)
    torch.testing.assert_close(losses, losses2)


def test_every_loss_has_the_same_signature_and_returns():
    for name, fn in LOSSES.items():
        out = fn(PC, PR, RC, RR, beta=0.3)
        assert len(out) == 3 and all(t.shape == (2,) for t in out), name


def test_dpop_registered_and_its_option_bound():
    from dpo_teach.dpo import DPOConfig
    from dpo_teach.losses import dpop_loss, get_loss

    below = PC - 2.0  # y_w lost probability against the reference: the penalty is active
    for cfg_lam in (0.0, 2.0):
        loss = DPOConfig(loss_type="dpop", beta=0.5, dpop_lambda=cfg_lam).loss()
        torch.testing.assert_close(loss(below, PR, PC, RR)[0], dpop_loss(below, PR, PC, RR, beta=0.5, lam=cfg_lam)[0])
    assert not torch.allclose(get_loss("dpop", 0.5, lam=2.0)(below, PR, PC, RR)[0],
                              get_loss("dpop", 0.5, lam=0.0)(below, PR, PC, RR)[0])


def test_cdpo_from_the_config_smooths_and_dpo_ignores_the_smoothing():
    from dpo_teach.dpo import DPOConfig

    smoothed = DPOConfig(loss_type="cdpo", beta=0.5).loss()(PC, PR, RC, RR)[0]
    torch.testing.assert_close(smoothed, cdpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)[0])
    assert not torch.allclose(smoothed, dpo_loss(PC, PR, RC, RR, beta=0.5)[0]), "cdpo's default ε is not 0"
    plain = DPOConfig(loss_type="sigmoid", beta=0.5, label_smoothing=0.3).loss()(PC, PR, RC, RR)[0]
    torch.testing.assert_close(plain, dpo_loss(PC, PR, RC, RR, beta=0.5)[0])


def test_unknown_loss_names_the_choices():
    from dpo_teach.losses import get_loss

    with pytest.raises(ValueError, match="choose one of"):
        get_loss("dop", 0.1)


def test_cli_loss_choices_are_the_registry():
    from dpo_teach.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    loss_action = next(a for a in train._actions if a.dest == "loss")
    assert sorted(loss_action.choices) == sorted(LOSSES) and "dpop" in LOSSES


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_registry_says_which_way_beta_steadies_each_loss(name):
    """A run that blew up (nan/inf) is told to move β the way that shrinks the loss's gradient: measured here where π_θ
    starts at π_ref (as every run does), at β and at β/2, against the registry's word (training.diverged reads it
    through DPOConfig.steadier_beta)."""
    from dpo_teach.dpo import DPOConfig
    from dpo_teach.losses import STEADIER_BETA, get_loss

    ref_chosen, ref_rejected = torch.tensor([-9.0, -12.0]), torch.tensor([-10.0, -8.0])

    def gradient_norm(beta: float) -> float:
        chosen, rejected = ref_chosen.clone().requires_grad_(), ref_rejected.clone().requires_grad_()
        losses, _, _ = get_loss(name, beta)(chosen, rejected, ref_chosen, ref_rejected)
        losses.mean().backward()
        return float(torch.cat([chosen.grad, rejected.grad]).norm())

    smaller_beta_is_steadier = gradient_norm(0.05) < gradient_norm(0.1)
    assert STEADIER_BETA[name] == ("lower" if smaller_beta_is_steadier else "raise")
    assert DPOConfig(loss_type=name).steadier_beta == STEADIER_BETA[name]


def test_an_option_no_loss_takes_is_refused_not_ignored():
    """A typo (label_smothing) left cDPO at its default ε = 0.1 with no word; one loss's option is still ignored by
    the others, since DPOConfig passes every loss's options."""
    from dpo_teach.losses import get_loss

    with pytest.raises(TypeError, match=r"no loss takes \['label_smothing'\]; the losses' options are "
                                        r"\['label_smoothing', 'lam'\]$"):
        get_loss("cdpo", 0.5, label_smothing=0.3)
    # a log-probability is an argument of every loss, not an option: reference_free_loss's default of None for the
    # reference's two does not make them options that bind once and for all
    with pytest.raises(TypeError, match=r"no loss takes \['ref_chosen_logps'\]"):
        get_loss("sigmoid", 0.5, ref_chosen_logps=torch.tensor([0.0]))
    h = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0])
    assert get_loss("cdpo", 0.5, label_smoothing=0.3)(*h)[0].item() == pytest.approx(
        cdpo_loss(*h, beta=0.5, label_smoothing=0.3)[0].item())
    assert get_loss("sigmoid", 0.5, label_smoothing=0.3)(*h)[0].item() == pytest.approx(
        dpo_loss(*h, beta=0.5)[0].item())


def test_every_loss_names_the_policy_it_trains():
    """The demo's table, samples and figures name the trained policy after its loss: "IPO", not "DPO"."""
    from dpo_teach.losses import LABELS
    from dpo_teach.pipeline import results_table

    assert set(LABELS) == set(LOSSES) and LABELS["sigmoid"] == "DPO" and len(set(LABELS.values())) == len(LABELS)
    side = {"reward": 0.1, "fluency": 0.9, "kl": 0.5, "kl_sem": 0.05, "length": 7.0}
    metrics = {"reference": side, "policy": side, "reward_gain": 0.0, "win_rate": 0.5, "heldout_accuracy": 0.8,
               "bt_ceiling": 0.9, "config": {"dpo": {"loss_type": "reference_free"}}}
    head = results_table(metrics).splitlines()[0]
    assert head.split() == ["π_ref", "reference-free", "DPO"], head
