"""Which settings of a method are evaluated on test: its validation Pareto front.

One rule gives one point per method, which hides the trade-off between safety and
utility; the paper's claim (more utility *at the same safety*) needs each method's
front. The front is taken on the validation split, on the axes ``mergekit-led sweep``
plots (safety error = harmful compliance + over-refusal, lower is better; mean task
accuracy, higher is better), and its settings are ranked by the sweep's balanced
score, whose best is always on the front (it falls as the safety error rises and
rises with utility). The ``count`` best front settings are evaluated on test; a
front with fewer settings is filled up with the best of the rest, so every method
with that many settings has ``count`` points on test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from mergekit_led.sweep.selection import balanced_score, pareto_front
from studies.common.results import Metrics, Trial

FRONT_POINTS = 3  # settings per method on test (the "at least the 3 best")


def balanced(metrics: Metrics) -> float:
    """The sweep's balanced score of ``metrics`` (its default selection rule)."""
    return balanced_score(
        {
            "harmful_compliance": metrics.harmful_compliance,
            "over_refusal": metrics.over_refusal,
            "utility": metrics.mean_utility,
        }
    )


@dataclass(frozen=True)
class FrontChoice:
    """A trial picked for test, and whether it is on the validation front."""

    trial: Trial
    on_front: bool


def front_choices(trials: Sequence[Trial], count: int = FRONT_POINTS) -> List[FrontChoice]:
    """The ``count`` settings of one method evaluated on test: its validation Pareto
    front's best by the balanced score (ties: lower harmful compliance, then the
    earlier setting, as the sweep breaks them), filled up with the best of the rest."""
    points = [(t.val.safety_error, t.val.mean_utility) for t in trials]
    on_front = set(pareto_front(points))

    def rank(index: int):
        val = trials[index].val
        return (-balanced(val), val.harmful_compliance, index)

    front = sorted(on_front, key=rank)[:count]
    rest = sorted((i for i in range(len(trials)) if i not in on_front), key=rank)
    chosen = front + rest[: max(0, count - len(front))]
    # The one-rule selection (the sweep's, on its unrounded metrics) is always among
    # them, so the one-rule table reads its row from the front's test points.
    selected = [i for i, trial in enumerate(trials) if trial.selected]
    if selected and selected[0] not in chosen:
        chosen = [selected[0], *chosen[: count - 1]]
    return [FrontChoice(trials[i], i in on_front) for i in chosen]
