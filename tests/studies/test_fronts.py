"""Which settings of a method are evaluated on test (``studies.common.fronts``): its
validation front's best by the balanced score, filled up from the rest, the one-rule
selection always among them; and TIES / DARE-TIES's λ (mergekit's shared ``lambda``,
``MergeSetting.scale``) through the sweep's settings, slugs and words."""

import pytest

from studies.common.fronts import balanced, front_choices
from studies.common.merging import (
    TASKS,
    Inputs,
    MergeSetting,
    from_sweep,
    setting_config,
    sweep_setting,
)
from studies.common.results import Metrics, Trial


def _trial(index, harm, utility, *, over=0.0, selected=False):
    """A TIES setting (its density tells the trials apart) with these val metrics."""
    return Trial(
        setting=MergeSetting("ties", density=round(0.01 * (index + 1), 2)),
        text=f"setting {index}",
        val=Metrics(
            harmful_compliance=harm,
            over_refusal=over,
            math_accuracy=utility,
            code_accuracy=utility,
        ),
        config=f"configs/{index}.yml",
        selected=selected,
    )


def _picked(choices, trials):
    return [(trials.index(choice.trial), choice.on_front) for choice in choices]


# (harmful compliance, utility); no over-refusal: the safety error is the compliance.
# Binary fractions, so that the balanced scores tie exactly where they should.
POINTS = [
    (0.0, 0.125),  # front, balanced 0.5625
    (0.75, 0.875),  # front, balanced 0.75
    (0.875, 0.8125),  # behind 1, yet balanced 0.6875: more than 0 and 3
    (0.25, 0.25),  # front, balanced 0.5625: ties with 0, more harmful
    (0.5, 0.75),  # front, balanced 0.75: ties with 1, less harmful
    (0.875, 0.0),  # behind every other
]


def test_the_fronts_best_by_the_balanced_score_not_the_best_overall():
    trials = [_trial(i, harm, utility) for i, (harm, utility) in enumerate(POINTS)]
    assert balanced(trials[2].val) > balanced(trials[0].val) == balanced(trials[3].val)
    assert _picked(front_choices(trials, 3), trials) == [(4, True), (1, True), (0, True)]
    assert _picked(front_choices(trials, 2), trials) == [(4, True), (1, True)]
    # the whole front (4 settings) and then the best of the rest, in score order
    assert _picked(front_choices(trials, 6), trials) == [
        (4, True),
        (1, True),
        (0, True),
        (3, True),
        (2, False),
        (5, False),
    ]


def test_a_short_front_is_filled_up_from_the_rest():
    trials = [
        _trial(0, 0.5, 0.2),  # behind 2, balanced 0.475
        _trial(1, 0.9, 0.1),  # behind 0 and 2, balanced 0.325
        _trial(2, 0.1, 0.8),  # the whole front: it beats every other
        _trial(3, 0.3, 0.4),  # behind 2, balanced 0.625
    ]
    assert _picked(front_choices(trials, 3), trials) == [(2, True), (3, False), (0, False)]
    # a method with fewer settings than the count: each once
    assert _picked(front_choices(trials[:2], 3), trials) == [(0, True), (1, False)]
    assert front_choices([_trial(0, 0.3, 0.3)], 3)[0].on_front


@pytest.mark.parametrize("selected", [0, 3, 5])
def test_the_selected_setting_is_always_one_of_them(selected):
    """The one-rule selection (the sweep's, on unrounded metrics) may rank below the
    count, or off the front: it takes the place of the last chosen one."""
    trials = [
        _trial(i, harm, utility, selected=i == selected) for i, (harm, utility) in enumerate(POINTS)
    ]
    choices = front_choices(trials, 3)
    picked = _picked(choices, trials)
    assert len(picked) == 3 and len({index for index, _ in picked}) == 3
    assert [c.trial.selected for c in choices].count(True) == 1
    assert selected in [index for index, _ in picked]
    if selected == 5:  # not on the front, first; then the front's two best
        assert picked == [(5, False), (4, True), (1, True)]
    if selected == 3:  # on the front, below its best three: first, then the best two
        assert picked == [(3, True), (4, True), (1, True)]
    if selected == 0:  # on the front and among its best: the order is the score's
        assert picked == [(4, True), (1, True), (0, True)]


# ------------------------------------------------------- TIES / DARE-TIES λ (``scale``)


def _inputs():
    return Inputs(
        "/m/base",
        {t: f"/m/{t}" for t in TASKS},
        {t: f"/d/{t}.jsonl" for t in TASKS},
        "/cache",
    )


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_the_scale_is_mergekits_shared_lambda_and_comes_back(method):
    inputs = _inputs()
    half = MergeSetting(method, density=0.3, scale=0.5)
    point = sweep_setting(half, inputs)
    assert point.shared == (("lambda", 0.5),)
    assert {model: dict(values) for model, values in point.per_model} == {
        f"/m/{t}": {"weight": 1.0, "density": 0.3} for t in TASKS
    }
    assert from_sweep(point.as_dict(), inputs) == half
    whole = MergeSetting(method, density=0.3)
    assert sweep_setting(whole, inputs).shared == (("lambda", 1.0),)
    assert from_sweep(sweep_setting(whole, inputs).as_dict(), inputs) == whole
    assert setting_config(half, inputs)["parameters"] == {"lambda": 0.5}
    # in its row's name (1.0: the name the rows had before λ) and in words
    assert (half.slug, whole.slug) == (f"{method}_w1_d0.3_l0.5", f"{method}_w1_d0.3")
    assert (half.describe(), whole.describe()) == ("density 0.3, λ 0.5", "density 0.3, λ 1")


def test_methods_without_a_shared_lambda_keep_their_weight_as_lambda():
    inputs = _inputs()
    crumbs = MergeSetting("breadcrumbs", weight=0.5, density=0.7)
    assert sweep_setting(crumbs, inputs).shared == ()
    assert from_sweep(sweep_setting(crumbs, inputs).as_dict(), inputs) == crumbs
    assert crumbs.describe() == "density 0.7, λ 0.5"
    assert sweep_setting(MergeSetting("task_arithmetic", weight=0.6), inputs).shared == ()


def test_every_setting_of_the_full_grid_comes_back_under_its_own_name():
    """Each setting of the paper's grid, as the sweep parses it, is one MergeSetting with
    one row name (``rows/front-<slug>.json``): none two, none lost."""
    from mergekit_led.sweep import parse_grid
    from mergekit_led.sweep.sweeper import model_names
    from studies.common.merging import AUTHORS_LED
    from studies.smollm2.recipe import FULL_GRID

    inputs = _inputs()
    points = parse_grid(
        FULL_GRID, model_names(setting_config(AUTHORS_LED, inputs)), where="the test"
    )
    settings = [from_sweep(point.as_dict(), inputs) for point in points]
    assert len({s.slug for s in settings}) == len(points)
    for point, setting in zip(points, settings):
        if setting.method != "model_stock":  # no parameters: nothing to give back
            assert sweep_setting(setting, inputs) == point, setting.slug
    scales = {s.scale for s in settings if s.method in ("ties", "dare_ties")}
    assert scales == {0.5, 1.0}
    assert {s.scale for s in settings if s.method not in ("ties", "dare_ties")} == {1.0}
