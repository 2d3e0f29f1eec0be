"""matplotlib for every plot of the package and the studies, with one policy when it is missing.

matplotlib is the ``[plot]`` extra, not a dependency. The policy: a plot the user asked
for (``inspect --plot``, a study's report) fails with one line naming the extra, before
any work where the caller can check first (``require``); a plot that is a by-product of
another result (the sweep's ``pareto.png``) is skipped, and that same line becomes the
note its report carries, so the two cases never word it differently.
"""

from __future__ import annotations

from mergekit_led.errors import MissingPlotLibrary


def require(what: str) -> None:
    """Raise ``MissingPlotLibrary`` (one line naming the ``[plot]`` extra) when matplotlib
    cannot be imported; ``what`` is the plot it is needed for."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingPlotLibrary(
            f"{what} is drawn with matplotlib, which is not installed: "
            "pip install 'mergekit-led[plot]'."
        ) from None


def pyplot(what: str):
    """``matplotlib.pyplot`` on the file-only Agg backend (no display is needed or opened);
    ``MissingPlotLibrary`` as ``require`` says when matplotlib is missing."""
    require(what)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
