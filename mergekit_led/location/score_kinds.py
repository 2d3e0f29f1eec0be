"""The table of score kinds: what ``locate --score KIND`` computes, one entry per kind.

A kind either reads the location data sample by sample (``needs_data``: an
accumulator keeps the sums, a step adds one sample, ``location.data_scoring``
runs the loop, checkpoints and all-reduces) or computes its scores from the
loaded weights alone (``scores``). Every place that depends on the kind (the
option checks, whether data is loaded, the memory check, gradient
checkpointing, the score a weight no gradient reaches gets, the config's
``locate_score``) reads its entry here, so a new kind is one entry in
``SCORE_KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from mergekit_led.core.locate_options import LocateOptions
from mergekit_led.errors import LocateError
from mergekit_led.location.scores import (
    SnipAccumulator,
    WandaAccumulator,
    magnitude_scores,
    random_scores,
)
from mergekit_led.location.steps import snip_step, wanda_step
from mergekit_led.location.weight_names import (
    ScoredParameters,
    check_wanda_applies,
    linear_modules,
)

# (loaded model, model name, its scored parameters, options) -> (accumulator, manifest details)
AccumulatorFactory = Callable[
    [nn.Module, str, ScoredParameters, LocateOptions], Tuple[Any, Dict[str, Any]]
]
# (loaded model, its scored parameters, options, name -> base weight or None) -> scores
WeightScores = Callable[
    [nn.Module, ScoredParameters, LocateOptions, Optional[Callable[[str], torch.Tensor]]],
    Dict[str, torch.Tensor],
]


@dataclass(frozen=True)
class ScoreKind:
    """One score kind of ``locate``."""

    name: str
    needs_data: bool
    # Data kinds: the accumulator of the sums and the per-sample step (``RunHooks.steps``
    # may replace the step). Data-free kinds: ``scores`` from the weights.
    accumulator: Optional[AccumulatorFactory] = None
    step: Optional[Callable[..., None]] = None
    scores: Optional[WeightScores] = None
    # A backward pass per sample: the memory plan applies, gradient checkpointing
    # can cut it, and a weight no gradient reaches scores 0 (otherwise ``|θ|``).
    uses_gradients: bool = False
    takes_base: bool = False  # ``--base``: scores against a base model's weights


def _snip_accumulator(loaded, model, scored, opts):
    accumulator = SnipAccumulator(
        scored.params, offload=opts.offload_accumulators, skip_nonfinite=opts.skip_nonfinite
    )
    return accumulator, {}


def _wanda_accumulator(loaded, model, scored, opts):
    check_wanda_applies(loaded, model, scored)
    modules = linear_modules(loaded, scored)
    accumulator = WandaAccumulator(scored.params, modules, offload=opts.offload_accumulators)
    return accumulator, {"wanda_magnitude_fallback": accumulator.fallback}


def _magnitude(loaded, scored, opts, base_weights):
    return magnitude_scores(scored.weight_tensors(loaded), base_weights)


def _random(loaded, scored, opts, base_weights):
    return random_scores(scored.shapes(), opts.seed)


SCORE_KINDS: Mapping[str, ScoreKind] = {
    kind.name: kind
    for kind in (
        ScoreKind(
            "snip",
            needs_data=True,
            accumulator=_snip_accumulator,
            step=snip_step,
            uses_gradients=True,
        ),
        ScoreKind(
            "wanda",
            needs_data=True,
            accumulator=_wanda_accumulator,
            step=wanda_step,
        ),
        ScoreKind(
            "magnitude",
            needs_data=False,
            scores=_magnitude,
            takes_base=True,
        ),
        ScoreKind(
            "random",
            needs_data=False,
            scores=_random,
        ),
    )
}


def score_kind(name: str) -> ScoreKind:
    """The entry of ``name``; a ``LocateError`` naming the kinds for any other name."""
    kind = SCORE_KINDS.get(name)
    if kind is None:
        raise LocateError(f"Unknown score kind {name!r}; choose one of {', '.join(SCORE_KINDS)}.")
    return kind


def data_scores() -> Tuple[str, ...]:
    """The kinds that read location data: those ``importance_data`` can compute."""
    return tuple(name for name, kind in SCORE_KINDS.items() if kind.needs_data)
