"""dpo_teach.plots: the four DPO panels, shared by the saved figure and notebook 05's live curves."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from dpo_teach import plots

KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
        "logps/rejected"]


def fake_history(n: int) -> list[dict]:
    return [{"step": s, **{key: float(i + s) for i, key in enumerate(KEYS)}} for s in range(n)]


def test_smooth_is_a_trailing_mean():
    assert np.allclose(plots.smooth([1, 2, 3, 4], window=2), [1, 1.5, 2.5, 3.5])


def test_draw_dpo_panels_draws_every_key_and_redraws_in_place():
    fig, axes = plt.subplots(1, 4)
    try:
        for n in (5, 12):  # a live plot redraws into the same axes: nothing may pile up
            plots.draw_dpo_panels(axes, fake_history(n))
            labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
            assert labels == [keys + ["ln 2"] * (title == "loss") for title, keys in plots.DPO_PANELS]
            curves = [line for ax in axes for line in ax.get_lines() if line.get_label() != "ln 2"]
            assert all(list(line.get_xdata()) == list(range(n)) for line in curves)
        assert axes[0].get_lines()[-1].get_ydata()[0] == math.log(2)
        assert [ax.get_title() for ax in axes] == [title for title, _ in plots.DPO_PANELS]
    finally:
        plt.close(fig)


def test_plot_dpo_history_uses_the_shared_panels():
    fig = plots.plot_dpo_history(fake_history(8), title="run")
    try:
        assert [ax.get_title() for ax in fig.axes] == [title for title, _ in plots.DPO_PANELS]
        assert fig._suptitle.get_text() == "run"
    finally:
        plt.close(fig)


def test_series_are_told_apart_without_colour_and_every_colour_shows_on_white():
    """Several of matplotlib's colours collapse for colour-blind readers (orange and green for protanopes, ΔE 1.3)
    and in greyscale (blue and red), and its orange, olive, cyan and pink are under WCAG's 3:1 for graphics on
    white: every series of the course's figures has a colour of 3:1 or more and something besides colour (a line
    style, or a marker for the comparison's methods) that no other series in its figure shares."""
    from wcag import contrast

    from dpo_teach import frontier

    for colour in [*plots.COLORS, *frontier.COLORS.values()]:
        assert contrast(colour, "#ffffff") >= 3.0, colour
    assert set(frontier.MARKERS) == set(frontier.COLORS)
    assert len(set(frontier.MARKERS.values())) == len(frontier.MARKERS)
    with plt.rc_context():
        plots.course_style()
        cycle = list(plt.rcParams["axes.prop_cycle"])
        assert len({(c["color"], str(c["linestyle"])) for c in cycle}) == len(cycle) == len(plots.COLORS)
        assert len({str(c["linestyle"]) for c in cycle[:4]}) == 4  # the first four series differ in style alone
    fig, axes = plt.subplots(2, 2)
    try:
        plots.draw_dpo_panels(axes, fake_history(6))
        for ax in axes.ravel():
            curves = [line for line in ax.get_lines() if line.get_label() != "ln 2"]
            assert len({str(line.get_linestyle()) for line in curves}) == len(curves), ax.get_title()
    finally:
        plt.close(fig)
