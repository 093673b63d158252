"""The benchmarks' pictures: a bar chart of one number by method, a stacked bar of a step's time by phase.

matplotlib (``pip install 'eagle-ops[bench]'``) is imported inside each function and draws on a figure of its own
through the Agg canvas: no pyplot state, no display, nothing at import time.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path


def bar_chart(path: Path, panels: dict[str, dict[str, float | None]], *, xlabel: str, title: str) -> None:
    """One panel of horizontal bars per entry of ``panels`` (e.g. one per batch size), side by side, each mapping a
    label (e.g. a method) to its value; a value of ``None`` or NaN is drawn as the text "n/a". Writes a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = 0.9 + 0.45 * max(len(bars) for bars in panels.values())
    figure = Figure(figsize=(6.5 * len(panels), height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, bars) in zip(axes, panels.items(), strict=True):
        labels = list(bars)[::-1]  # the first label on top
        values = [_number(bars[label]) for label in labels]
        drawn = ax.barh(labels, [0.0 if math.isnan(v) else v for v in values], color="tab:blue")
        ax.bar_label(drawn, labels=["n/a" if math.isnan(v) else f"{v:,.0f}" for v in values], padding=3)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.margins(x=0.15)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def stacked_bar(path: Path, bars: dict[str, dict[str, float]], *, ylabel: str, title: str) -> None:
    """One vertical bar per entry of ``bars``, stacked from its segments (name: non-negative value) in the order of
    the first bar's, with a legend beside them and each bar's total above it. Writes a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    segments = list(next(iter(bars.values())))
    figure = Figure(figsize=(max(6.5, 3.6 + 1.6 * len(bars)), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    names = list(bars)
    bottom = [0.0] * len(names)
    for segment in segments:
        heights = [bars[name][segment] for name in names]
        ax.bar(names, heights, bottom=bottom, label=segment)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, total in enumerate(bottom):
        ax.annotate(f"{total:.3g}", (x, total), ha="center", va="bottom", xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel(ylabel)
    figure.suptitle(textwrap.fill(title, 70))
    ax.margins(y=0.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the bars, never over them
    figure.savefig(path, dpi=120)


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)
