"""Which parameters are scored, under which names: the names mergekit reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from mergekit_led.errors import LocateError
from mergekit_led.store import fingerprint


@dataclass
class ScoredParameters:
    """The parameters to score, each under the name the checkpoint stores it."""

    params: Dict[str, nn.Parameter]  # checkpoint name -> parameter (tied ones once)
    aliases: Dict[str, str]  # another name of a tied parameter -> its scored name
    not_scored: List[str]  # checkpoint tensors no parameter of the model loads
    verified: bool  # names checked against the checkpoint's own index


def checkpoint_tensor_shapes(model: str) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Tensor names and shapes of the checkpoint (a local folder, or a hub id
    already in the local cache); None when they cannot be read."""
    folder = model
    if not fingerprint.is_local_checkpoint(folder):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(model, local_files_only=True)
        except Exception:  # not cached, or not a hub id: names stay unverified
            return None
        if not fingerprint.is_local_checkpoint(folder):
            return None
    return fingerprint.checkpoint_shapes(folder)


def scored_parameters(
    model: nn.Module, model_name: str, checkpoint_shapes: Optional[Mapping[str, Tuple[int, ...]]]
) -> ScoredParameters:
    """Map every parameter to its checkpoint tensor, or refuse before any work.

    Names go through the loader's renamings in reverse (transformers 5 may
    rename or fuse checkpoint tensors while loading); a parameter fused from
    several checkpoint tensors, or whose name or shape the checkpoint does not
    have, cannot be scored under a name mergekit reads.
    """
    to_checkpoint = _reverse_loader_renaming(model)
    groups: Dict[int, Tuple[nn.Parameter, List[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), (param, []))[1].append(name)

    params: Dict[str, nn.Parameter] = {}
    aliases: Dict[str, str] = {}
    problems: List[str] = []
    for param, names in groups.values():
        mapped = [to_checkpoint(name) for name in names]
        if any(m is None for m in mapped):
            problems.append(f"{names[0]!r} (fused from several checkpoint tensors by the loader)")
            continue
        if checkpoint_shapes is None:
            stored = mapped[0]
        else:
            present = [m for m in mapped if m in checkpoint_shapes]
            if not present:
                problems.append(f"{names[0]!r} (no tensor of that name in the checkpoint)")
                continue
            stored = present[0]
            if tuple(checkpoint_shapes[stored]) != tuple(param.shape):
                problems.append(
                    f"{names[0]!r} (shape {tuple(param.shape)} in the loaded model, "
                    f"{tuple(checkpoint_shapes[stored])} in the checkpoint)"
                )
                continue
        params[stored] = param
        for other in mapped:
            if other != stored:
                aliases[other] = stored
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise LocateError(
            f"Cannot key scores by the tensor names of checkpoint {model_name}: the loaded "
            f"model's parameters {shown}. LED stores must be keyed by the checkpoint's names; "
            "this architecture's loader renames or fuses them."
        )
    not_scored = sorted(set(checkpoint_shapes or {}) - set(params) - set(aliases))
    return ScoredParameters(params, aliases, not_scored, checkpoint_shapes is not None)


def _reverse_loader_renaming(model: nn.Module) -> Callable[[str], Optional[str]]:
    """Parameter name -> checkpoint name (None for a fused tensor)."""
    conversions = getattr(model, "_weight_conversions", None)
    if not conversions:
        return lambda name: name
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        apply_converters,
        apply_renamings,
    )

    reverse = [conversion.reverse_transform() for conversion in conversions[::-1]]
    renamings = [t for t in reverse if isinstance(t, WeightRenaming)]
    converters = [t for t in reverse if isinstance(t, WeightConverter)]

    def to_checkpoint(name: str) -> Optional[str]:
        _, pattern = apply_converters(name, converters)
        if pattern is not None:
            return None
        return apply_renamings(name, renamings)

    return to_checkpoint


def linear_modules(model: nn.Module, scored: ScoredParameters) -> Dict[str, nn.Linear]:
    """Checkpoint weight name -> the ``nn.Linear`` using that weight (for wanda)."""
    by_id = {id(param): name for name, param in scored.params.items()}
    found: Dict[str, nn.Linear] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in by_id:
            found.setdefault(by_id[id(module.weight)], module)
    return found
