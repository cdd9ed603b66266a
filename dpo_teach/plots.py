"""Figures from training histories and evaluation results (matplotlib, headless-safe, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # the backend is the caller's: inline in a notebook, Agg for the CLI (cli.main)
import numpy as np
from cycler import cycler

from dpo_teach.utils import atomic_file

# Series colours, each at 3:1 contrast or more against white (WCAG 1.4.11; matplotlib's orange, olive, cyan and pink
# are not), paired with line styles: lines stay apart in greyscale print and for colour-blind readers, for whom
# several of these colours look alike. Dotted lines are left for the course's reference lines (ln 2, a target).
COLORS = ["tab:blue", "#d9650b", "tab:green", "tab:red", "tab:purple", "tab:brown", "#c04d9e", "tab:gray"]
LINE_STYLES = ["-", "--", "-.", (0, (5, 1.5, 1, 1.5, 1, 1.5))] * 2
# The course's figures: each series a colour and a line style of its own, text a size up from matplotlib's default.
COURSE_RC = {"axes.prop_cycle": cycler(color=COLORS) + cycler(linestyle=LINE_STYLES), "font.size": 11,
             "axes.titlesize": 11, "legend.fontsize": 9}


def course_style() -> None:
    """Set :data:`COURSE_RC` for every figure from here on: each notebook calls it once, after its imports. The
    figures the package saves to files (the demo's, train's, the comparison's, the README's and the site's frontier)
    are drawn inside :func:`course_figures` instead, the same whatever ran before them."""
    plt.rcParams.update(COURSE_RC)


def course_figures():
    """``with course_figures():`` the figures drawn (and saved) inside have :data:`COURSE_RC`, and the settings
    before it come back after it."""
    return plt.rc_context(COURSE_RC)


def smooth(values: list[float], window: int = 10) -> np.ndarray:
    """Trailing moving average (the first points average over what exists so far)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


DPO_PANELS = [  # (title, history keys) of the four panels of a DPO training run
    ("loss", ["loss"]),
    ("rewards/accuracies", ["rewards/accuracies"]),
    ("implicit rewards β·log π_θ/π_ref", ["rewards/chosen", "rewards/rejected", "rewards/margins"]),
    ("sequence log-probs log π_θ(y|x)", ["logps/chosen", "logps/rejected"]),
]


def draw_dpo_panels(axes, history: list[dict], window: int = 10) -> None:
    """Loss (ln 2 marked), reward accuracy, implicit rewards and chosen/rejected log-probs of ``history``
    (``train_dpo``'s) in four axes (:data:`DPO_PANELS`), as moving averages over ``window`` steps. Each axis is
    cleared first, so a live plot can redraw into the same axes."""
    steps = [h["step"] for h in history]
    for ax, (title, keys) in zip(np.ravel(axes), DPO_PANELS, strict=True):
        ax.clear()
        for key, color, style in zip(keys, COLORS, LINE_STYLES, strict=False):  # a panel's series: apart without colour
            ax.plot(steps, smooth([h[key] for h in history], window), label=key, color=color, ls=style)
        if keys == ["loss"]:
            ax.axhline(np.log(2), color="gray", ls=":", label="ln 2")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step")
        ax.legend(fontsize=9)


def plot_dpo_history(history: list[dict], title: str = "DPO training"):
    """Loss (with the ln 2 start), reward accuracy, margins and chosen/rejected log-probs against the step."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))  # 2 × 2: its text stays readable where a page is narrow
    draw_dpo_panels(axes, history)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reward_before_after(rewards_before: np.ndarray, rewards_after: np.ndarray, metrics_before: dict,
                             metrics_after: dict, trained: str = "DPO"):
    """Histogram of ground-truth rewards of π_ref and π_θ samples, with mean reward, fluency and KL in the legend;
    ``trained`` names the trained policy (its loss: "DPO", "IPO", ...)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(-1, 1, 41)
    for (r, m, name), color, style in zip(((rewards_before, metrics_before, "π_ref"),
                                           (rewards_after, metrics_after, trained)), COLORS, LINE_STYLES):
        ax.hist(r, bins=bins, histtype="stepfilled", alpha=0.25, color=color)  # where they overlap, both show
        ax.hist(r, bins=bins, histtype="step", lw=2, ls=style, color=color,  # and outlines tell them apart in grey
                label=f"{name}: mean r {m['reward']:+.2f}, fluent {m['fluency']:.0%}, KL {m['kl']:.2f}")
    ax.set_xlabel("ground-truth reward r(x, y) (VADER compound)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> None:
    """Save as PNG atomically, then close the figure."""
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
