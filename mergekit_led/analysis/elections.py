"""What an ``led_merging`` config elects, weight by weight, for inspect and the card.

``analyze_config`` reads the stores and elects every weight exactly as the
merge method does (``method.election.elect_weight``), writing no model;
``from_recorded`` builds the same result from the counts the merge method
recorded during a merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch
from mergekit.config import MergeConfiguration
from tqdm.auto import tqdm

from mergekit_led.config.walker import config_inputs, has_base_model
from mergekit_led.core.election import Election
from mergekit_led.core.election import disjoint as make_disjoint
from mergekit_led.core.parameters import (
    BASE_REQUIRED,
    METHOD_NAME,
    STORE_PARAMETERS,
    check_density,
    is_scalar,
    parse_election,
    require_parameters,
)
from mergekit_led.core.statistics import (
    Pair,
    WeightStats,
    aggregate,
    layer_index,
    layer_of,
    layer_sort_key,
    overall,
    weight_stats,
    weight_type,
)
from mergekit_led.errors import ConfigError
from mergekit_led.method.election import TaskScores, elect_weight
from mergekit_led.store import load_importance


@dataclass
class ModelEntry:
    label: str
    density: float
    weight: float
    importance: str
    base_importance: str


@dataclass
class Analysis:
    base_model: str
    models: List[ModelEntry]
    election: str
    disjoint: bool
    weights: List[WeightStats]

    @property
    def labels(self) -> List[str]:
        return [m.label for m in self.models]

    def by_layer(self) -> List[WeightStats]:
        return sorted(aggregate(self.weights, layer_of), key=lambda s: layer_sort_key(s.name))

    def by_type(self) -> List[WeightStats]:
        return aggregate(self.weights, weight_type)

    def overall(self) -> WeightStats:
        return overall(self.weights)

    def grid(self, pair: Pair) -> Tuple[List[int], List[str], List[List[float]]]:
        """Layers × weight types Jaccard of ``pair`` (NaN where a layer lacks a type)."""
        cells: Dict[Tuple[int, str], WeightStats] = {}
        layers, types = [], []
        for s in self.weights:
            index = layer_index(s.name)
            if index is None:
                continue
            kind = weight_type(s.name)
            if index not in layers:
                layers.append(index)
            if kind not in types:
                types.append(kind)
            cells[(index, kind)] = s
        layers.sort()
        values = [
            [cells[(l, t)].jaccard(pair) if (l, t) in cells else float("nan") for t in types]
            for l in layers
        ]
        return layers, types, values

    def to_json(self) -> dict:
        labels = self.labels
        return {
            "base_model": self.base_model,
            "election": self.election,
            "disjoint": self.disjoint,
            "models": [asdict(m) for m in self.models],
            "overall": self.overall().as_dict(labels),
            "layers": [s.as_dict(labels) for s in self.by_layer()],
            "weight_types": [s.as_dict(labels) for s in self.by_type()],
            "weights": [s.as_dict(labels) for s in self.weights],
        }


def config_models(
    config: MergeConfiguration, density_override: Optional[float] = None
) -> Tuple[List[ModelEntry], str, bool]:
    """The fine-tuned models of an ``led_merging`` config with their parameters,
    and the shared ``election``/``disjoint``. A model used by several slices must
    have the same scalar parameters in each (what can be attributed to whole tensors)."""
    if config.merge_method != METHOD_NAME:
        raise ConfigError(
            f"This config merges with {config.merge_method!r}; inspect and the card "
            f"section analyse {METHOD_NAME!r} configs only."
        )
    if not has_base_model(config):
        raise ConfigError(f"{BASE_REQUIRED}.")
    shared = dict(config.parameters or {})
    election = parse_election(shared.get("election", Election.both.value)).value
    disjoint = shared.get("disjoint", True)
    if not isinstance(disjoint, bool):
        raise ConfigError("`disjoint` must be true or false for inspect and the card.")
    entries: Dict[str, ModelEntry] = {}
    for item in config_inputs(config):
        if item.is_base:
            continue
        params = item.parameters
        require_parameters(params, model=item.label)
        for key in ("density", "weight", *STORE_PARAMETERS):
            if key in params and not is_scalar(params[key]):
                raise ConfigError(
                    f"Parameter `{key}` of model {item.label} varies per tensor; inspect "
                    "and the card section support scalar parameters only."
                )
        density = float(density_override if density_override is not None else params["density"])
        check_density(density, model=item.label, weight="*")
        entry = ModelEntry(
            label=item.label,
            density=density,
            weight=float(params.get("weight", 1.0)),
            importance=str(params["importance"]),
            base_importance=str(params["base_importance"]),
        )
        if entries.setdefault(item.label, entry) != entry:
            raise ConfigError(
                f"Model {item.label} has other parameters in {item.where} than where it "
                "first appears; inspect and the card section need one set per model."
            )
    if not entries:
        raise ConfigError("The config has no fine-tuned model besides the base model.")
    return list(entries.values()), election, disjoint


def analyze_config(
    config: MergeConfiguration,
    *,
    density_override: Optional[float] = None,
    device: Optional[str] = None,
    progress: bool = False,
) -> Analysis:
    """Elect every weight of every model from its stores, as ``led_merging`` would,
    and count. Weight names come from the stores' manifests (the weights every
    store of the config scores, in the first store's order)."""
    entries, election, disjoint = config_models(config, density_override)
    tasks = [
        TaskScores(m.label, m.density, load_importance(m.importance), load_importance(m.base_importance))
        for m in entries
    ]
    names = list(tasks[0].importance.manifest.shapes)
    for task in tasks:
        names = [n for n in names if n in task.importance and n in task.base_importance]
    if not names:
        raise ConfigError("The config's importance stores have no weight name in common.")
    target = torch.device(device) if device else None
    weights = []
    for name in tqdm(names, desc="electing", disable=not progress, leave=False):
        elected = elect_weight(name, tasks, Election(election), device=target)
        kept = make_disjoint(elected) if disjoint else elected
        weights.append(weight_stats(name, elected, kept))
    return Analysis(str(config.base_model), entries, election, disjoint, weights)


def from_recorded(
    config: MergeConfiguration, recorded: Dict[str, WeightStats]
) -> Analysis:
    """The analysis of a merge from the statistics its merge method recorded
    (``method.recording``): no store is read again."""
    entries, election, disjoint = config_models(config)
    return Analysis(str(config.base_model), entries, election, disjoint, list(recorded.values()))


def short_label(label: str) -> str:
    """The last path component of a model reference, for narrow tables."""
    return label.rstrip("/").split("/")[-1] or label
