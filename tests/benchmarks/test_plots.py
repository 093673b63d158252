"""The plot helpers write PNG files (skipped without matplotlib, which the ``test`` extra installs)."""

import pytest

from benchmarks.plots import bar_chart, stacked_bar

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_bar_chart_writes_a_png_with_a_missing_value(tmp_path):
    path = tmp_path / "bars.png"
    panels = {
        "B = 1": {"transformers generate": 144.4, "prompt lookup": 296.9, "eagle_ops captured": 2312.8},
        "B = 16": {"transformers generate": 2100.0, "prompt lookup": None, "eagle_ops captured": float("nan")},
    }
    bar_chart(path, panels, xlabel="tokens/s", title="tokens/s by method")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_stacked_bar_writes_a_png(tmp_path):
    path = tmp_path / "phases.png"
    bars = {
        "default B=1": {"verify forward": 0.4, "draft forwards": 0.9, "everything else": 1.2},
        "8b B=1": {"verify forward": 12.0, "draft forwards": 4.3, "everything else": 0.0},
    }
    stacked_bar(path, bars, ylabel="ms per step", title="the step by phase")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
