"""Which setting a sweep selects: one rule, named before the run (docs/sweep.md).

Harmful compliance is evaluate's ``harmful_compliance``: the harmful answers
neither refused nor degenerate, so a setting whose merge babbles does not look
unsafe (it looks useless: its task accuracy falls).

* ``balanced`` (default): the highest balanced score, the mean of a safety half
  and a utility half. Safety is the mean of (1 - harmful compliance) and
  (1 - over-refusal), over the sets the evaluation has; utility is the mean
  task accuracy. With harmful, benign and two tasks this is the demo's score:
  the mean of (1 - harmful compliance), (1 - over-refusal) and both accuracies.
* ``max-utility`` with ``max_harmful`` X: the highest utility among the
  settings whose harmful compliance is at most X.

Ties go to the lower harmful compliance, then to the earlier setting of the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from mergekit_led.errors import SweepError

RULES = ("balanced", "max-utility")


@dataclass(frozen=True)
class SelectionRule:
    name: str = "balanced"
    max_harmful: Optional[float] = None

    def __post_init__(self):
        if self.name not in RULES:
            raise SweepError(f"--select {self.name!r}: choose one of {', '.join(RULES)}.")
        if self.name == "max-utility":
            if self.max_harmful is None:
                raise SweepError("--select max-utility needs --max-harmful X (a share in [0, 1]).")
            if not 0 <= self.max_harmful <= 1:
                raise SweepError(f"--max-harmful {self.max_harmful}: must be a share in [0, 1].")
        elif self.max_harmful is not None:
            raise SweepError("--max-harmful goes with --select max-utility.")

    def describe(self) -> str:
        if self.name == "balanced":
            return (
                "highest balanced score = mean of the safety half (mean of 1 - harmful "
                "compliance and 1 - over-refusal) and the utility half (mean task accuracy); "
                "ties: lower harmful compliance, then the earlier grid setting"
            )
        return (
            f"highest utility (mean task accuracy) with harmful compliance at most "
            f"{self.max_harmful:g}; ties: lower harmful compliance, then the earlier grid setting"
        )


def safety_error(metrics: Mapping[str, float]) -> Optional[float]:
    """Harmful compliance + over-refusal (what the plot's x axis shows)."""
    parts = [metrics[k] for k in ("harmful_compliance", "over_refusal") if k in metrics]
    return sum(parts) if parts else None


def balanced_score(metrics: Mapping[str, float]) -> float:
    halves = []
    safety = [1 - metrics[k] for k in ("harmful_compliance", "over_refusal") if k in metrics]
    if safety:
        halves.append(sum(safety) / len(safety))
    if "utility" in metrics:
        halves.append(metrics["utility"])
    if not halves:
        raise SweepError("The evaluation measures neither safety nor a task: nothing to select on.")
    return sum(halves) / len(halves)


def choose(rule: SelectionRule, metrics: Sequence[Mapping[str, float]]) -> Optional[int]:
    """Index of the selected setting; None when no setting meets the rule."""
    candidates = list(range(len(metrics)))
    if rule.name == "max-utility":
        if any("harmful_compliance" not in m or "utility" not in m for m in metrics):
            raise SweepError(
                "--select max-utility needs a harmful set and at least one task in the evaluation."
            )
        candidates = [i for i in candidates if metrics[i]["harmful_compliance"] <= rule.max_harmful]
    if not candidates:
        return None

    def score(i: int) -> float:
        return balanced_score(metrics[i]) if rule.name == "balanced" else metrics[i]["utility"]

    return max(candidates, key=lambda i: (score(i), -metrics[i].get("harmful_compliance", 0), -i))


def pareto_front(points: Sequence[tuple]) -> List[int]:
    """Indices of the points (safety error, utility) no other point beats on
    both (lower error, higher utility), sorted by error."""
    front = []
    for i, (error, utility) in enumerate(points):
        dominated = any(
            (e <= error and u >= utility) and (e < error or u > utility)
            for j, (e, u) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def per_method(
    rule: SelectionRule, methods: Sequence[str], metrics: Sequence[Mapping[str, float]]
) -> Dict[str, Optional[int]]:
    """The rule applied within each method's settings (indices into the whole grid)."""
    chosen: Dict[str, Optional[int]] = {}
    for method in dict.fromkeys(methods):
        indices = [i for i, m in enumerate(methods) if m == method]
        pick = choose(rule, [metrics[i] for i in indices])
        chosen[method] = None if pick is None else indices[pick]
    return chosen
