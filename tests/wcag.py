"""WCAG's contrast ratio, shared by the tests of the site's colours and of the figures' colours."""

from __future__ import annotations

from matplotlib.colors import to_rgb


def contrast(a: str, b: str) -> float:
    """WCAG's contrast ratio of two colours (any colour matplotlib reads: "#rgb", "#rrggbb", "tab:blue", ...)."""

    def luminance(colour: str) -> float:
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)
