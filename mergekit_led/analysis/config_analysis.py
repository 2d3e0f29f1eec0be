"""What an ``led_merging`` config elects, weight by weight, for inspect and the card.

``analyze_config`` reads the stores and elects every weight exactly as the
merge method does (``method.weight_election.elect_weight``), writing no model;
``from_recorded`` builds the same result from the counts the merge method
recorded during a merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Dict, List, Optional, Tuple

import torch
from mergekit.config import MergeConfiguration

from mergekit_led.config.walker import ConfigSource, read_config
from mergekit_led.console import progress_bar
from mergekit_led.core.elect_merge import Election
from mergekit_led.core.elect_merge import disjoint as make_disjoint
from mergekit_led.core.parameters import (
    BASE_REQUIRED,
    METHOD_NAME,
    STORE_PARAMETERS,
    check_density,
    is_scalar,
    parse_election,
    parse_number,
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
from mergekit_led.errors import ConfigError, StoreError
from mergekit_led.method.recording import Recorded
from mergekit_led.method.weight_election import TaskStorePair, elect_weight
from mergekit_led.store import fingerprint, load_importance


@dataclass
class ModelEntry:
    label: str
    density: float
    weight: float
    importance: str
    base_importance: str
    # Where these values apply ("slices[0], slices[2]") when the config gives the
    # model other values elsewhere (one entry per set); "" when it has one set.
    where: str = ""


@dataclass
class Analysis:
    base_model: str
    models: List[ModelEntry]
    election: str
    disjoint: bool
    weights: List[WeightStats]

    @property
    def labels(self) -> List[str]:
        """The models the counts are indexed by (one per model, even when it has
        several parameter sets)."""
        return list(dict.fromkeys(m.label for m in self.models))

    @property
    def varies_per_slice(self) -> bool:
        return len(self.models) > len(self.labels)

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
            [
                cells[(layer, kind)].jaccard(pair) if (layer, kind) in cells else float("nan")
                for kind in types
            ]
            for layer in layers
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
    config: ConfigSource,
    density_override: Optional[float] = None,
    *,
    several_sets: bool = False,
) -> Tuple[List[ModelEntry], str, bool]:
    """The fine-tuned models of an ``led_merging`` config with their parameters,
    and the shared ``election``/``disjoint``.

    A model used by several slices must have the same scalar parameters in each
    (what can be attributed to whole tensors), unless ``several_sets``: then a
    model gets one entry per parameter set, saying where it applies (the card
    of a merge whose models' values vary per slice)."""
    view = read_config(config)
    config = view.config
    if config.merge_method != METHOD_NAME:
        raise ConfigError(
            f"This config merges with {config.merge_method!r}; inspect and the card "
            f"section analyse {METHOD_NAME!r} configs only."
        )
    if not view.has_base_model:
        raise ConfigError(f"{BASE_REQUIRED}.")
    shared = dict(config.parameters or {})
    election = parse_election(shared.get("election", Election.both.value)).value
    disjoint = shared.get("disjoint", True)
    if not isinstance(disjoint, bool):
        raise ConfigError("`disjoint` must be true or false for inspect and the card.")
    sets: Dict[str, Dict[Tuple, List[str]]] = {}  # label -> parameter values -> where
    for item in view.fine_tuned:
        params = item.parameters
        require_parameters(params, model=item.label)
        for key in ("density", "weight", *STORE_PARAMETERS):
            if key in params and not is_scalar(params[key]):
                raise ConfigError(
                    f"Parameter `{key}` of model {item.label} varies per tensor; inspect "
                    "and the card section support scalar parameters only."
                )
        density = parse_number(
            density_override if density_override is not None else params["density"],
            parameter="density",
            model=item.label,
        )
        check_density(density, model=item.label, weight="*")
        values = (
            density,
            parse_number(params.get("weight", 1.0), parameter="weight", model=item.label),
            str(params["importance"]),
            str(params["base_importance"]),
        )
        places = sets.setdefault(item.label, {})
        if places and values not in places and not several_sets:
            raise ConfigError(
                f"Model {item.label} has other parameters in {item.where} than where it "
                "first appears; inspect and the card section need one set per model."
            )
        places.setdefault(values, []).append(item.where)
    if not sets:
        raise ConfigError("The config has no fine-tuned model besides the base model.")
    entries = []
    for label, places in sets.items():
        for values, where in places.items():
            shown = ", ".join(dict.fromkeys(where)) if len(places) > 1 else ""
            entries.append(ModelEntry(label, *values, where=shown))
    return entries, election, disjoint


def analyze_config(
    config: ConfigSource,
    *,
    density_override: Optional[float] = None,
    device: Optional[str] = None,
    progress: bool = False,
) -> Analysis:
    """Elect every weight of every model from its stores, as ``led_merging`` would,
    and count. Weight names come from the stores' manifests (the weights every
    store of the config scores, in the first store's order)."""
    view = read_config(config)
    config = view.config
    entries, election, disjoint = config_models(view, density_override)
    tasks = [
        TaskStorePair(
            m.label, m.density, load_importance(m.importance), load_importance(m.base_importance)
        )
        for m in entries
    ]
    names = list(tasks[0].importance.manifest.shapes)
    for task in tasks:
        names = [n for n in names if n in task.importance and n in task.base_importance]
    if not names:
        raise ConfigError("The config's importance stores have no weight name in common.")
    check_shapes(names, tasks, config)
    target = torch.device(device) if device else None
    weights = []
    electing = progress_bar(
        total=len(names), desc="electing", unit="weight", enabled=progress, leave=False
    )
    with electing as bar:
        for name in names:
            elected = elect_weight(name, tasks, Election(election), device=target)
            kept = make_disjoint(elected) if disjoint else elected
            weights.append(weight_stats(name, elected, kept))
            bar.update()
    return Analysis(str(config.base_model), entries, election, disjoint, weights)


def check_shapes(names: List[str], tasks: List[TaskStorePair], config: MergeConfiguration) -> None:
    """Every store gives each weight the shape the merge would check it against.

    The merge compares each store with the weight mergekit hands over; inspect
    and the card read no weights, so they compare the stores' shapes with the
    base model's (headers only, when it is a local checkpoint) or, for a Hub
    base, with each other: a store of another shape (say transposed, with
    header, manifest and checksums agreeing) is named instead of crashing the
    election."""
    base = config.base_model.model.path if config.base_model is not None else None
    reference: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    if base is not None and fingerprint.is_local_checkpoint(base):
        shapes = fingerprint.checkpoint_shapes(base)
        reference = {n: (tuple(shapes[n]), f"base model {base}") for n in names if n in shapes}
    for task in tasks:
        for store in (task.importance, task.base_importance):
            for name in names:
                stored = store.resolve(name)
                shape = tuple(store.manifest.shapes[stored])
                expected, source = reference.setdefault(name, (shape, f"store {store.path}"))
                if shape != expected:
                    raise StoreError(
                        f"Importance store {store.path} holds scores of shape {shape} for "
                        f"weight {name!r}, but {source} has shape {expected}: it was "
                        "computed for another model (or damaged). Point the config at the "
                        "store computed for this model."
                    )


def from_recorded(config: ConfigSource, recorded: Recorded) -> Analysis:
    """The analysis of a merge from the statistics its merge method recorded
    (``method.recording``): no store is read again. Each weight's counts are
    re-ordered to the config's model order (a slice may list its models in
    another order, or leave some out: those count zero there)."""
    view = read_config(config)
    entries, election, disjoint = config_models(view, several_sets=True)
    analysis = Analysis(str(view.config.base_model), entries, election, disjoint, [])
    order = {label: index for index, label in enumerate(analysis.labels)}
    for labels, stats in recorded.values():
        unknown = [label for label in labels if label not in order]
        if unknown:
            raise ConfigError(
                f"The merge recorded weight {stats.name!r} for model(s) "
                f"{', '.join(unknown)}, which the config does not list as fine-tuned models."
            )
        analysis.weights.append(_reordered(stats, [order[label] for label in labels], len(order)))
    return analysis


def _reordered(stats: WeightStats, positions: List[int], count: int) -> WeightStats:
    """``stats`` of models at ``positions`` of a list of ``count`` models."""
    elected, kept = [0] * count, [0] * count
    for source, target in enumerate(positions):
        elected[target] = stats.elected[source]
        kept[target] = stats.kept[source]
    result = WeightStats(stats.name, stats.numel, elected, kept, tensors=stats.tensors)
    for first, second in combinations(range(count), 2):
        result.intersection[(first, second)] = 0
        result.union[(first, second)] = 0
    for (i, j), union in stats.union.items():
        pair = tuple(sorted((positions[i], positions[j])))
        result.intersection[pair] = stats.intersection[(i, j)]
        result.union[pair] = union
    for first, second in combinations(range(count), 2):
        if result.union[(first, second)] == 0 and (elected[first] or elected[second]):
            # One of the two models is not merged into this weight: the union is
            # the other's set, the intersection empty.
            result.union[(first, second)] = elected[first] + elected[second]
    return result


def short_label(label: str) -> str:
    """The last path component of a model reference, for narrow tables."""
    return label.rstrip("/").split("/")[-1] or label
