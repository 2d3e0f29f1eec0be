"""One policy for a missing matplotlib (``mergekit_led.plotting``): a plot asked for is a
one-line error naming the ``[plot]`` extra; the sweep's by-product plot is skipped and its
report carries that same line."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from mergekit_led.errors import MissingPlotLibrary
from mergekit_led.plotting import pyplot, require
from mergekit_led.sweep.selection import SelectionRule


@pytest.fixture
def no_matplotlib(monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError, as when it is absent.
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_a_plot_asked_for_is_one_line_naming_the_extra(no_matplotlib):
    with pytest.raises(MissingPlotLibrary) as raised:
        pyplot("The heatmap")
    message = str(raised.value)
    assert message == (
        "The heatmap is drawn with matplotlib, which is not installed: "
        "pip install 'mergekit-led[plot]'."
    )
    with pytest.raises(MissingPlotLibrary, match=r"mergekit-led\[plot\]"):
        require("The study's safety_vs_utility.png")


def test_with_matplotlib_pyplot_draws_off_screen():
    plt = pyplot("A test plot")
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg" and hasattr(plt, "subplots")


def _result(out):
    row = SimpleNamespace(
        index=0,
        method="ties",
        text="density 0.5",
        metrics={
            "harmful_compliance": 0.5,
            "over_refusal": 0.0,
            "math_accuracy": 1.0,
            "utility": 1.0,
        },
        seconds={"merge": 1.0},
        config={"merge_method": "ties"},
    )
    return SimpleNamespace(
        out=str(out), rows=[row], selected=None, per_method={}, rule=SelectionRule()
    )


def test_the_sweeps_pareto_plot_is_skipped_with_the_same_line(tmp_path, no_matplotlib):
    from mergekit_led.sweep.sweep_report import write_sweep_report

    spec = SimpleNamespace(tasks=["math"], harmful=object(), benign=object())
    paths = write_sweep_report(_result(tmp_path), spec)
    assert "pareto" not in paths and not (tmp_path / "pareto.png").exists()
    text = (tmp_path / "sweep.md").read_text()
    assert (
        "pareto.png was not drawn: The sweep's pareto.png is drawn with matplotlib, which is "
        "not installed: pip install 'mergekit-led[plot]'." in text
    )


def test_the_sweeps_pareto_plot_is_drawn_with_matplotlib(tmp_path):
    from mergekit_led.sweep.sweep_report import write_sweep_report

    spec = SimpleNamespace(tasks=["math"], harmful=object(), benign=object())
    paths = write_sweep_report(_result(tmp_path), spec)
    assert (tmp_path / "pareto.png").stat().st_size > 1000 and "pareto" in paths
