"""Per-weight election statistics: pure counts over the elected masks.

For every weight tensor and every fine-tuned model i it counts ``|N_i|`` (the
elected important set), how many of those the disjoint step drops, and the
final ``|T_i|``; and for every pair of models the intersection and union of
their important sets, whose ratio is the Jaccard overlap the paper analyses.
Aggregates (per layer, per weight type, overall) sum the counts first, so an
aggregated Jaccard is ``sum |N_i ∩ N_j| / sum |N_i ∪ N_j|`` over the group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

Pair = Tuple[int, int]


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

    def plus(self, other: WeightStats) -> WeightStats:
        """The counts of this group and ``other`` together (same models, in order)."""
        total = WeightStats(
            self.name,
            self.numel + other.numel,
            [a + b for a, b in zip(self.elected, other.elected)],
            [a + b for a, b in zip(self.kept, other.kept)],
            tensors=self.tensors + other.tensors,
        )
        for pair in set(self.union) | set(other.union):
            total.intersection[pair] = self.intersection.get(pair, 0) + other.intersection.get(
                pair, 0
            )
            total.union[pair] = self.union.get(pair, 0) + other.union.get(pair, 0)
        return total

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


def weight_stats(
    name: str, elected: Sequence[torch.Tensor], kept: Sequence[torch.Tensor]
) -> WeightStats:
    """Statistics of one weight from the elected sets ``N_i`` and the merged sets
    ``T_i`` (boolean masks; ``kept`` is ``elected`` without the disjoint step)."""
    if not elected:
        raise ValueError("weight_stats needs at least one mask")
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
            groups[group] = WeightStats(
                group, 0, [0] * len(s.elected), [0] * len(s.kept), tensors=0
            )
        groups[group] = groups[group].plus(s)  # keeps the group's name
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
    tail = name[match.end() :] if match else layer_of(name)
    if tail.endswith(".weight"):
        tail = tail[: -len(".weight")]
    return tail


def layer_sort_key(group: str) -> Tuple[int, int, str]:
    if group.startswith("layer "):
        return (1, int(group.split()[1]), "")
    order = 0 if "embed" in group or "wte" in group else 2
    return (order, 0, group)


def overall(stats: Iterable[WeightStats]) -> WeightStats:
    (total,) = aggregate(stats, lambda _: "all weights") or [None]
    return total
