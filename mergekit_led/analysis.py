"""Per-weight election statistics of an ``led_merging`` config (no model is written).

Pure functions over masks (``weight_stats``, ``aggregate``) and one function
that walks a config's models and importance stores (``analyze_config``), shared
by ``mergekit-led inspect`` and the model card.

For every weight tensor and every fine-tuned model i it counts ``|N_i|`` (the
elected important set), how many of those the disjoint step drops, and the
final ``|T_i|``; and for every pair of models the intersection and union of
their important sets, whose ratio is the Jaccard overlap the paper analyses.
Aggregates (per layer, per weight type, overall) sum the counts first, so an
aggregated Jaccard is ``sum |N_i ∩ N_j| / sum |N_i ∪ N_j|`` over the group.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from mergekit_led.election import Election, disjoint as make_disjoint, elect
from mergekit_led.errors import ConfigError

Pair = Tuple[int, int]


# --------------------------------------------------------------------------- pure


@dataclass
class WeightStats:
    """Counts for one weight tensor (or a sum over a group of them)."""

    name: str
    numel: int
    elected: List[int]  # |N_i| per model
    kept: List[int]  # |T_i| per model
    intersection: Dict[Pair, int] = field(default_factory=dict)  # |N_i ∩ N_j|
    union: Dict[Pair, int] = field(default_factory=dict)  # |N_i ∪ N_j|
    tensors: int = 1

    @property
    def dropped(self) -> List[int]:
        return [e - k for e, k in zip(self.elected, self.kept)]

    def jaccard(self, pair: Pair) -> float:
        union = self.union.get(pair, 0)
        return self.intersection.get(pair, 0) / union if union else 0.0

    def share(self, index: int) -> float:
        """``|T_i| / N``: the share of this tensor taken from model i's task vector."""
        return self.kept[index] / self.numel if self.numel else 0.0

    def as_dict(self, labels: Sequence[str]) -> dict:
        pairs = sorted(self.union)
        return {
            "name": self.name,
            "tensors": self.tensors,
            "numel": self.numel,
            "models": {
                label: {
                    "elected": self.elected[i],
                    "dropped_by_disjoint": self.dropped[i],
                    "kept": self.kept[i],
                    "share": self.share(i),
                }
                for i, label in enumerate(labels)
            },
            "jaccard": {
                f"{labels[i]} | {labels[j]}": {
                    "intersection": self.intersection[(i, j)],
                    "union": self.union[(i, j)],
                    "jaccard": self.jaccard((i, j)),
                }
                for i, j in pairs
            },
        }


def weight_stats(name: str, elected: Sequence[torch.Tensor], disjoint: bool = True) -> WeightStats:
    """Statistics of one weight from the elected sets ``N_i`` (boolean masks)."""
    if not elected:
        raise ValueError("weight_stats needs at least one mask")
    kept = make_disjoint(list(elected)) if disjoint else list(elected)
    stats = WeightStats(
        name=name,
        numel=int(elected[0].numel()),
        elected=[int(m.sum()) for m in elected],
        kept=[int(m.sum()) for m in kept],
    )
    for i, j in combinations(range(len(elected)), 2):
        stats.intersection[(i, j)] = int((elected[i] & elected[j]).sum())
        stats.union[(i, j)] = int((elected[i] | elected[j]).sum())
    return stats


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a ∩ b| / |a ∪ b|`` of two boolean masks (0 when both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def aggregate(stats: Iterable[WeightStats], key: Callable[[str], str]) -> List[WeightStats]:
    """Sum the counts of weights that share ``key(name)``, in first-seen order."""
    groups: Dict[str, WeightStats] = {}
    for s in stats:
        group = key(s.name)
        if group not in groups:
            groups[group] = WeightStats(group, 0, [0] * len(s.elected), [0] * len(s.kept), tensors=0)
        g = groups[group]
        g.numel += s.numel
        g.tensors += s.tensors
        g.elected = [a + b for a, b in zip(g.elected, s.elected)]
        g.kept = [a + b for a, b in zip(g.kept, s.kept)]
        for pair in s.union:
            g.intersection[pair] = g.intersection.get(pair, 0) + s.intersection[pair]
            g.union[pair] = g.union.get(pair, 0) + s.union[pair]
    return list(groups.values())


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_index(name: str) -> Optional[int]:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def layer_of(name: str) -> str:
    """``layer 3`` for transformer-block weights, else the weight's own short name
    (``embed_tokens``, ``norm``, ``lm_head``)."""
    index = layer_index(name)
    if index is not None:
        return f"layer {index}"
    parts = [p for p in name.split(".") if p not in ("weight", "bias", "model")]
    return ".".join(parts) or name


def weight_type(name: str) -> str:
    """``self_attn.q_proj``, ``mlp.down_proj``, ``input_layernorm`` ...: the
    weight's name inside its block (with ``.bias`` kept apart)."""
    match = _LAYER.search(name)
    tail = name[match.end():] if match else layer_of(name)
    if tail.endswith(".weight"):
        tail = tail[: -len(".weight")]
    return tail


def _layer_sort_key(group: str) -> Tuple[int, int, str]:
    if group.startswith("layer "):
        return (1, int(group.split()[1]), "")
    order = 0 if "embed" in group or "wte" in group else 2
    return (order, 0, group)


def overall(stats: Iterable[WeightStats]) -> WeightStats:
    (total,) = aggregate(stats, lambda _: "all weights") or [None]
    return total


# --------------------------------------------------------------------------- config


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
        return sorted(aggregate(self.weights, layer_of), key=lambda s: _layer_sort_key(s.name))

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


def config_models(config, density_override: Optional[float] = None) -> Tuple[List[ModelEntry], str, bool]:
    """The fine-tuned models of an ``led_merging`` config with their parameters,
    and the shared ``election``/``disjoint``. Only ``models:`` configs with scalar
    parameters are supported (what the analysis can attribute to whole tensors)."""
    from mergekit_led.led_merging import METHOD_NAME, check_density, parse_election

    if config.merge_method != METHOD_NAME:
        raise ConfigError(
            f"This config merges with {config.merge_method!r}; inspect and the card "
            f"section analyse {METHOD_NAME!r} configs only."
        )
    if config.base_model is None:
        raise ConfigError("led_merging requires `base_model:`.")
    shared = dict(config.parameters or {})
    election = parse_election(shared.get("election", Election.both.value)).value
    disjoint = shared.get("disjoint", True)
    entries = []
    for model, parameters in _config_inputs(config):
        if model == config.base_model:
            continue
        label = str(model)
        params = {**shared, **(parameters or {})}
        for key in ("density", "importance", "base_importance"):
            if key not in params:
                raise ConfigError(f"Model {label} has no `{key}` parameter.")
        for key in ("density", "weight", "importance", "base_importance"):
            if key in params and not isinstance(params[key], (str, int, float, bool)):
                raise ConfigError(
                    f"Parameter `{key}` of model {label} varies per tensor; inspect and "
                    "the card section support scalar parameters only."
                )
        density = float(density_override if density_override is not None else params["density"])
        check_density(density, model=label, weight="*")
        entries.append(
            ModelEntry(
                label=label,
                density=density,
                weight=float(params.get("weight", 1.0)),
                importance=str(params["importance"]),
                base_importance=str(params["base_importance"]),
            )
        )
    if not isinstance(disjoint, bool):
        raise ConfigError("`disjoint` must be true or false for inspect.")
    if not entries:
        raise ConfigError("The config has no fine-tuned model besides the base model.")
    return entries, election, disjoint


def _config_inputs(config):
    """(model, parameters) of every input, once per model, from a config as written
    (``models:``) or as mergekit's planner leaves it after a merge (``modules:`` with
    one full-range slice each). Several output slices cannot be attributed to whole
    tensors and are refused."""
    seen = {}

    def one_slice(slices, where):
        if len(slices) != 1:
            raise ConfigError(
                f"inspect and the card section analyse `models:` configs; this config's "
                f"{where} has {len(slices)} output slices (not supported)."
            )
        shared = dict(slices[0].parameters or {})
        return [(s.model, {**shared, **(s.parameters or {})}) for s in slices[0].sources]

    inputs = []
    if config.models:
        inputs = [(m.model, m.parameters) for m in config.models]
    elif config.slices:
        inputs = one_slice(config.slices, "`slices:`")
    for name, module in (config.modules or {}).items():
        if module.models:
            inputs += [(m.model, m.parameters) for m in module.models]
        elif module.slices:
            inputs += one_slice(module.slices, f"module {name!r}")
    for model, parameters in inputs:
        seen.setdefault(model, parameters)
    return list(seen.items())


def analyze_config(
    config,
    *,
    density_override: Optional[float] = None,
    device: Optional[str] = None,
    progress: bool = False,
) -> Analysis:
    """Elect every weight of every model from its stores, as ``led_merging`` would,
    and count. Weight names come from the stores' manifests (the weights every
    store of the config scores, in the first store's order)."""
    from tqdm.auto import tqdm

    from mergekit_led.store import load_importance

    entries, election, disjoint = config_models(config, density_override)
    pairs = [(load_importance(m.importance), load_importance(m.base_importance)) for m in entries]
    names = list(pairs[0][0].manifest.shapes)
    for fine, base in pairs:
        names = [n for n in names if n in fine and n in base]
    if not names:
        raise ConfigError("The config's importance stores have no weight name in common.")
    dev = torch.device(device) if device else None
    weights = []
    for name in tqdm(names, desc="electing", disable=not progress, leave=False):
        masks = []
        for entry, (fine, base) in zip(entries, pairs):
            model_top = fine.top_mask(name, entry.density, model=entry.label, device=dev)
            base_top = base.top_mask(name, entry.density, model="base", device=dev)
            masks.append(elect(model_top, base_top, Election(election)))
        weights.append(weight_stats(name, masks, disjoint))
    return Analysis(str(config.base_model), entries, election, disjoint, weights)


def short_label(label: str) -> str:
    """The last path component of a model reference, for narrow tables."""
    return label.rstrip("/").split("/")[-1] or label
