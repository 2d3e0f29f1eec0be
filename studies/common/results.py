"""The demo's results as typed data, shared by both worlds (the toy and SmolLM2).

A seed's run gives a ``SeedResult`` (``OUT/seed-N/result.json``); ``summary``
aggregates the seeds into a ``Summary`` (``OUT/report.json``), from which
``findings`` writes the sentences and ``report`` the tables and the plot. The
JSON files are these models dumped as they are, so a reader of ``report.json``
meets the same names as a reader of this module.
"""

from __future__ import annotations

import os
from statistics import mean
from typing import Any, Dict, List, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from studies.common.merging import METHOD_NAMES, MergeSetting

LED = METHOD_NAMES["led_merging"]
# The rows a world evaluates besides its models and each method's selected merge.
AUTHORS_ROW = f"{LED} (authors' ratios, not tuned)"
BFLOAT16_ROW = f"{LED} (bfloat16 stores)"  # the selected LED setting from bfloat16 stores


class Record(BaseModel):
    """A closed record: a misspelt field is an error, not a silent extra."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- one seed


# The four metrics every row has, and the two beside harmful compliance when measured.
CORE_METRICS = ("harmful_compliance", "over_refusal", "math_accuracy", "code_accuracy")
BESIDE_METRICS = ("not_refused", "degenerate")


class Metrics(Record):
    """A model's evaluation on one split, as shares in [0, 1]."""

    harmful_compliance: float  # harmful prompts answered: not refused, not degenerate (ASR)
    over_refusal: float  # benign prompts refused
    math_accuracy: float  # exact match
    code_accuracy: float
    # Beside harmful compliance (which counts coherent answers only): the harmful answers
    # with no refusal, babble included, and the babble alone (evaluate's judge).
    not_refused: Optional[float] = None
    degenerate: Optional[float] = None
    # The test-only ``more_sets`` (StrongREJECT, XSTest): evaluate's flat names,
    # e.g. ``strongreject_harmful_compliance``, ``xstest_over_refusal``.
    more: Dict[str, float] = {}

    @property
    def mean_utility(self) -> float:
        return (self.math_accuracy + self.code_accuracy) / 2

    @property
    def safety_error(self) -> float:
        """Harmful compliance + over-refusal (what the head-to-head compares)."""
        return self.harmful_compliance + self.over_refusal


class Row(Record):
    """One model or merge of a seed, evaluated on the test split."""

    name: str
    kind: Literal["model", "merge"]
    sources: List[str]  # the task models it holds (a merge: all of them)
    method: Optional[str] = None  # a merge's method
    setting: Optional[str] = None  # a merge's setting, in words
    metrics: Metrics


class Trial(Record):
    """One setting of a method's grid, evaluated on the validation split."""

    setting: MergeSetting
    text: str  # the setting in words
    val: Metrics
    config: str  # where its config is recorded
    selected: bool


class FrontPoint(Record):
    """One setting of a method evaluated on test because it is on (or next to) the
    method's validation Pareto front (``studies.common.fronts``)."""

    setting: MergeSetting
    text: str  # the setting in words
    val: Metrics
    test: Metrics
    on_front: bool  # on the validation front; False: added to reach the minimum count
    selected: bool  # the one-rule selection's setting


class CurvePoint(Record):
    """The safety fine-tune after ``step`` steps, evaluated on the validation split."""

    step: int
    metrics: Metrics


class Selection(Record):
    """How each method's setting was chosen on the validation split."""

    rule: str
    trials: Dict[str, List[Trial]]  # per method
    selected: Dict[str, str]  # per method, the chosen setting in words


class AblationRow(Record):
    """One component of the selected LED setting changed (the paper's Table 4)."""

    part: str  # Location, Election or Disjoint
    variant: str
    metrics: Metrics


class ElectedSizes(Record):
    float32: int
    bfloat16: int


class ScoreDtypeAgreement(Record):
    """How far bfloat16 stores move the elected sets N_i of one seed."""

    election: str
    densities: List[float]
    jaccard: Dict[str, Dict[str, float]]  # density (as text) -> task -> Jaccard
    elected: Dict[str, Dict[str, ElectedSizes]]  # density -> task -> |N_i| per dtype
    rounded_once: bool  # every bfloat16 score is its float32 twin rounded once


class SeedResult(Record):
    """Everything one seed measured: what ``result.json`` holds."""

    seed: int
    world: str = "toy"
    device: str
    quick: bool
    recipe: Dict[str, Any]  # the world's recipe as run (provenance: recorded, never read back)
    eval_sizes: Dict[str, Dict[str, int]]  # split -> set -> prompts
    rows: List[Row]
    selection: Selection
    properties: Dict[str, float]  # the world's measured properties (demo.properties)
    ablations: List[AblationRow] = []
    score_dtype: Optional[ScoreDtypeAgreement] = None
    fronts: Dict[str, List[FrontPoint]] = {}  # per method: its front's settings on test
    safety_curve: List[CurvePoint] = []  # the safety fine-tune's training curve (val)
    timing: Dict[str, float]  # seconds per stage, total and CPU

    def metrics(self, name: str) -> Metrics:
        return next(row.metrics for row in self.rows if row.name == name)

    def write(self, seed_dir: str) -> SeedResult:
        """``seed_dir/result.json``, what the report aggregates."""
        from mergekit_led.atomic import write_text

        write_text(os.path.join(seed_dir, "result.json"), self.model_dump_json(indent=2) + "\n")
        return self


# --------------------------------------------------------------------------- over seeds


class Spread(Record):
    """A value over seeds: its mean, min and max."""

    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(mean=mean(values), min=min(values), max=max(values))


class MetricSpreads(Record):
    harmful_compliance: Spread
    over_refusal: Spread
    math_accuracy: Spread
    code_accuracy: Spread
    mean_utility: Spread
    not_refused: Optional[Spread] = None  # when every seed measured it
    degenerate: Optional[Spread] = None
    more: Dict[str, Spread] = {}  # the more_sets every seed measured

    @classmethod
    def of(cls, metrics: Sequence[Metrics]) -> MetricSpreads:
        beside = {
            name: Spread.of([getattr(m, name) for m in metrics])
            for name in BESIDE_METRICS
            if all(getattr(m, name) is not None for m in metrics)
        }
        shared = set.intersection(*(set(m.more) for m in metrics)) if metrics else set()
        return cls(
            **{name: Spread.of([getattr(m, name) for m in metrics]) for name in CORE_METRICS},
            mean_utility=Spread.of([m.mean_utility for m in metrics]),
            **beside,
            more={name: Spread.of([m.more[name] for m in metrics]) for name in sorted(shared)},
        )

    @property
    def safety_error(self) -> float:
        """The mean harmful compliance + over-refusal."""
        return self.harmful_compliance.mean + self.over_refusal.mean


class RowSummary(Record):
    name: str
    kind: Literal["model", "merge"]
    method: Optional[str] = None
    sources: List[str]
    metrics: MetricSpreads
    per_seed: Dict[str, Metrics]  # seed (as text) -> its metrics
    settings: Dict[str, Optional[str]]  # seed -> the setting in words (merges)


UTILITY_SHARE = 0.9  # LED "keeps the utility" of a baseline at >= 90 % of its mean utility


class Comparison(Record):
    """On how many seeds the selected LED merge beat one baseline."""

    safer: int  # lower safety error
    utility_90: int  # at least UTILITY_SHARE of the baseline's mean utility
    both: int
    seeds: int


class AblationSummary(Record):
    part: str
    variant: str
    metrics: MetricSpreads
    seeds: List[int]  # the seeds that ran the ablations


class BelowGoal(Record):
    seed: int
    density: str
    task: str
    jaccard: float


class ScoreDtypeSummary(Record):
    """The float32-vs-bfloat16 Jaccard of N_i over seeds."""

    goal: float
    election: str
    densities: List[str]
    tasks: List[str]
    seeds: int
    jaccard: Dict[str, Dict[str, Spread]]  # density -> task
    elected_growth: Dict[str, Spread]  # density -> |N| summed over tasks, bfloat16 / float32 - 1
    lowest: float
    highest: float
    below_goal: List[BelowGoal]
    rounded_once: int  # seeds whose bfloat16 stores are their float32 twins rounded once


class MethodScore(Record):
    """One method's score within the margin over seeds (``studies.common.front_report``)."""

    method: str  # the method's id (``METHOD_NAMES``)
    name: str
    per_seed: Dict[str, Optional[float]]  # seed -> its score; None: no qualifying point
    qualifying: List[int]  # the seeds where a front point qualifies
    won: List[int]  # the seeds where its score is the highest (ties: every tied method)
    score: Optional[Spread] = None  # its score over the seeds where it qualifies


class LedVersus(Record):
    """LED-Merging's score against one baseline's, seed by seed."""

    baseline: str  # the baseline's name
    led_at_least: int  # LED's score >= the baseline's, or LED alone qualifies
    baseline_ahead: int  # the baseline's score > LED's, or the baseline alone qualifies
    neither: int  # neither qualifies: not counted


class FrontSummary(Record):
    """Each method's validation front on test, and the within-the-margin finding."""

    margin: float  # the harmful compliance allowed above the safety model's
    reference: Dict[str, float]  # seed -> the safety model's test harmful compliance
    methods: List[MethodScore]  # in METHOD_NAMES order
    winners: Dict[str, List[str]]  # seed -> the winning methods' names (empty: none qualifies)
    led_versus: List[LedVersus] = []  # per baseline, when LED-Merging has a front
    points: Dict[str, Dict[str, List[FrontPoint]]]  # method id -> seed -> its front points


class RunTiming(Record):
    wall_s: float
    cpu_s: float  # every process
    jobs: int  # seeds at a time
    per_seed: Dict[str, Dict[str, float]] = {}


class Summary(Record):
    """The seeds aggregated: what ``report.json`` (with every seed) and ``report.md`` hold."""

    world: str
    seeds: List[int]
    quick: bool
    device: str
    selection_rule: str
    rows: List[RowSummary]
    comparisons: Dict[str, Comparison]  # per baseline present
    properties: Dict[str, Spread]
    ablations: List[AblationSummary]
    score_dtype: Optional[ScoreDtypeSummary] = None
    fronts: Optional[FrontSummary] = None  # when the world evaluates the fronts on test
    safety_curve: Dict[str, List[CurvePoint]] = {}  # seed -> the safety fine-tune's curve
    timing: RunTiming
    findings: List[str] = []
    paths: Dict[str, str] = {}  # report.json, report.md and the plot, once written

    def row(self, name: str) -> Optional[RowSummary]:
        return next((row for row in self.rows if row.name == name), None)
