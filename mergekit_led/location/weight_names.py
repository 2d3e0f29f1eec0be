"""Which parameters are scored, under which names: the names mergekit asks the method for.

A store is read by weight name at merge time, and mergekit picks those names from its own
architecture definition (``mergekit_led.store.mergekit_weights``), not from the checkpoint
nor from the loaded model. They can differ from both: transformers 5 fuses a Mixtral's
per-expert checkpoint tensors into one ``mlp.experts.gate_up_proj`` parameter, and mergekit
asks for that fused name; mergekit asks for AFMoE's experts one checkpoint tensor at a time,
while the loaded model holds them fused.

Every parameter of the loaded model is mapped to the weight mergekit hands over with the
same values, in this order:

1. one to one, by name: the parameter's own name is the weight's name, or the reverse of
   the loader's renamings gives the checkpoint tensor the weight is read from; shapes must
   agree. Tied parameters are scored once and their other names become aliases;
2. by layout: parameters left over are put back into checkpoint layout with transformers'
   own ``revert_weight_conversion`` (what ``save_pretrained`` writes), then into mergekit's
   weights with mergekit's own conversion. These conversions only move elements (stack,
   split, concatenate, rename), so scores follow the weights exactly;
3. weights mergekit asks for that the model holds as buffers get no gradient, so their SNIP
   score is zero (LED_SPEC section 2: never elected, the base value is kept).

Anything else is refused before any work, naming the weights on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from mergekit_led.errors import LocateError
from mergekit_led.store import fingerprint
from mergekit_led.store.mergekit_weights import (
    CONVERTED,
    READ_AS_IS,
    MergekitWeight,
    MergekitWeights,
    Shape,
    mergekit_weights,
)


@dataclass
class ScoredParameters:
    """The parameters to score, and how their scores become mergekit's weights."""

    # key -> parameter (tied ones once). The key is the name mergekit asks for, except
    # for the parameters in ``layout_params``, keyed by their own name until converted.
    params: Dict[str, nn.Parameter]
    aliases: Dict[str, str]  # another name of a tied weight -> its stored name
    not_scored: List[str]  # checkpoint tensors that no stored weight is made of
    verified: bool  # names resolved against the checkpoint and mergekit's architecture
    weights: Optional[MergekitWeights] = None
    layout_params: List[str] = field(default_factory=list)  # converted by the layout route
    layout: Dict[str, Shape] = field(default_factory=dict)  # the weights they build
    no_gradient: Dict[str, torch.Tensor] = field(default_factory=dict)  # weight -> its buffer
    samples: Dict[str, torch.Tensor] = field(default_factory=dict)  # fingerprints of weights
    unasked: List[str] = field(default_factory=list)  # parameters mergekit never asks for

    def shapes(self) -> Dict[str, Shape]:
        """Every stored weight name and its shape, as mergekit hands the weight over."""
        layout = set(self.layout_params)
        shapes = {n: tuple(p.shape) for n, p in self.params.items() if n not in layout}
        shapes.update(self.layout)
        shapes.update({name: tuple(buffer.shape) for name, buffer in self.no_gradient.items()})
        return shapes

    def weight_tensors(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """The stored weights' values in mergekit's layout (for ``--score magnitude``)."""
        layout = set(self.layout_params)
        tensors = {n: p.detach() for n, p in self.params.items() if n not in layout}
        if layout:
            tensors.update(
                self._in_mergekit_layout(
                    {n: self.params[n].detach() for n in self.layout_params}, model
                )
            )
        tensors.update(self.no_gradient)
        return tensors

    def store_scores(
        self, scores: Dict[str, torch.Tensor], model: nn.Module, *, gradients: bool
    ) -> Dict[str, torch.Tensor]:
        """Scores keyed by mergekit's names: layout-route scores converted, and the
        weights no gradient reaches scored (0 for a score of ``gradients`` such as
        SNIP, ``|θ|`` otherwise: wanda's fallback)."""
        pending = [name for name in self.layout_params if name in scores]
        if pending:
            converted = self._in_mergekit_layout({n: scores.pop(n) for n in pending}, model)
            scores.update(converted)
        for name, buffer in self.no_gradient.items():
            if name in scores:
                continue
            values = buffer.detach().to("cpu", torch.float32)
            scores[name] = torch.zeros_like(values) if gradients else values.abs()
        return scores

    def _in_mergekit_layout(
        self, tensors: Dict[str, torch.Tensor], model: nn.Module
    ) -> Dict[str, torch.Tensor]:
        built = to_mergekit_layout(model, tensors, self.weights, list(self.layout))
        return {name: tensor.contiguous() for name, tensor in built.items()}


def local_checkpoint(model: str) -> Optional[str]:
    """The local folder of a checkpoint: the path itself, or a hub id's snapshot
    already in the local cache (None when there is none)."""
    if fingerprint.is_local_checkpoint(model):
        return model
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(model, local_files_only=True)
    except Exception:  # not cached, or not a hub id: names stay unverified
        return None
    return folder if fingerprint.is_local_checkpoint(folder) else None


def model_weights(model: str, *, trust_remote_code: bool = False) -> Optional[MergekitWeights]:
    """mergekit's weights for a model's checkpoint; None when it cannot be read locally."""
    folder = local_checkpoint(model)
    if folder is None:
        return None
    return mergekit_weights(folder, trust_remote_code=trust_remote_code)


def check_mergeable(weights: Optional[MergekitWeights], model_name: str) -> None:
    """Refuse a model mergekit cannot merge (its architecture requires weights the
    checkpoint lacks), before anything is loaded."""
    if weights is not None and weights.missing():
        raise LocateError(
            f"Cannot locate {model_name} for a merge: {weights.missing_message()} "
            "Scores for it could never be merged."
        )


def scored_parameters(
    model: nn.Module, model_name: str, weights: Optional[MergekitWeights]
) -> ScoredParameters:
    """Map every parameter to the weight mergekit asks for, or refuse before any work."""
    if weights is None:
        return _unverified(model, model_name)
    check_mergeable(weights, model_name)
    storable = weights.storable()
    asked = weights.asked()
    read_from: Dict[str, List[str]] = {}  # checkpoint tensor -> weights reading it as is
    for weight in storable.values():
        if weight.how != CONVERTED:
            read_from.setdefault(weight.inputs[0], []).append(weight.name)
    to_checkpoint = _reverse_loader_renaming(model)

    params: Dict[str, nn.Parameter] = {}
    aliases: Dict[str, str] = {}
    left_over: Dict[str, nn.Parameter] = {}
    for param, names in _parameter_groups(model):
        hits: Dict[str, str] = {}
        for name in names:
            candidates = [name] if name in storable else []
            for key in (name, to_checkpoint(name)):
                candidates.extend(read_from.get(key, []))
            hit = next((c for c in candidates if storable[c].shape == tuple(param.shape)), None)
            if hit is not None:
                hits[name] = hit
        if not hits:
            left_over[names[0]] = param
            continue
        mapped = list(dict.fromkeys(hits.values()))
        stored = next((m for m in mapped if m in asked), mapped[0])
        if stored in params:
            raise LocateError(
                f"Cannot key scores by mergekit's weight names for {model_name}: parameters "
                f"{names[0]!r} and another both map to weight {stored!r}."
            )
        params[stored] = param
        others = mapped + (
            [n for name in names for n in (name, to_checkpoint(name)) if n]
            if len(names) > 1
            else []
        )  # a tied parameter's other names
        for other in others:
            if other != stored:
                aliases.setdefault(other, stored)

    unmatched = [name for name in asked if name not in params and name not in aliases]
    layout: Dict[str, Shape] = {}
    used: List[str] = []
    if unmatched and left_over:
        used, layout = _layout_route(model, left_over, weights, unmatched)
        for name in used:
            params[name] = left_over.pop(name)
        unmatched = [name for name in unmatched if name not in layout]
    no_gradient = _buffers_for(model, weights, unmatched, to_checkpoint)
    unmatched = [name for name in unmatched if name not in no_gradient]
    if unmatched:
        shown_params = ", ".join(repr(n) for n in list(left_over)[:8]) or "none"
        raise LocateError(
            f"Cannot key scores by the weight names mergekit asks for with checkpoint "
            f"{model_name} ({weights.architecture}): no parameter or buffer of the loaded "
            f"model gives {_shown(unmatched)}; parameters of the loaded model that match no "
            f"mergekit weight: {shown_params}. The loader renames or converts them in a way "
            "that cannot be mapped back."
        )
    stored_inputs = {
        key
        for name in list(params) + list(layout) + list(no_gradient)
        if name in storable
        for key in storable[name].inputs
    }
    return ScoredParameters(
        params=params,
        aliases=aliases,
        not_scored=sorted(set(weights.checkpoint_tensors) - stored_inputs),
        verified=True,
        weights=weights,
        layout_params=used if layout else [],
        layout=layout,
        no_gradient=no_gradient,
        samples=_loaded_samples(params, storable),
        unasked=sorted(left_over),
    )


def _shown(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _parameter_groups(model: nn.Module) -> List[Tuple[nn.Parameter, List[str]]]:
    groups: Dict[int, Tuple[nn.Parameter, List[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), (param, []))[1].append(name)
    return list(groups.values())


def _loaded_samples(
    params: Mapping[str, nn.Parameter], storable: Mapping[str, MergekitWeight]
) -> Dict[str, torch.Tensor]:
    """Fingerprint samples of converted weights, taken from the loaded parameters.

    A converted weight (e.g. fused experts) has no checkpoint tensor to sample; the
    loaded parameter holds the very values mergekit builds when it is in the
    checkpoint's dtype, or in float32 (which holds bfloat16 and float16 exactly).
    Otherwise the store writer builds the weight from the checkpoint instead.
    """
    samples: Dict[str, torch.Tensor] = {}
    for name, param in params.items():
        weight = storable.get(name)
        if weight is None or weight.how != CONVERTED or param.device.type == "meta":
            continue
        exact = param.dtype == weight.dtype or (
            param.dtype == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16)
        )
        if exact and tuple(param.shape) == weight.shape:
            samples[name] = fingerprint.sample_tensor(param)
    return samples


def _layout_route(
    model: nn.Module,
    left_over: Mapping[str, nn.Parameter],
    weights: MergekitWeights,
    unmatched: List[str],
) -> Tuple[List[str], Dict[str, Shape]]:
    """Which left-over parameters build which unmatched weights through the checkpoint
    layout (checked on meta tensors: nothing is computed)."""
    if not getattr(model, "_weight_conversions", None):
        return [], {}
    meta = {
        name: torch.empty(param.shape, dtype=param.dtype, device="meta")
        for name, param in left_over.items()
    }
    try:
        built = to_mergekit_layout(model, meta, weights, unmatched)
    except Exception:  # a conversion that does not apply: the names stay unmatched
        return [], {}
    by_name = weights.by_name()
    layout = {
        name: tuple(tensor.shape)
        for name, tensor in built.items()
        if tuple(tensor.shape) == by_name[name].shape
    }
    if not layout:
        return [], {}
    inputs = {key for name in layout for key in by_name[name].inputs}
    used = []
    for name, tensor in meta.items():
        try:
            pieces = _revert(model, {name: tensor})
        except Exception:  # converted only together with other parameters
            used.append(name)
            continue
        if inputs & set(pieces):
            used.append(name)
    return used, layout


def _revert(model: nn.Module, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, dict(tensors))


def to_mergekit_layout(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    weights: MergekitWeights,
    names: List[str],
) -> Dict[str, torch.Tensor]:
    """Per-parameter tensors in the loaded model's layout -> the mergekit weights
    ``names`` built from them (those that can be built). Checkpoint layout comes from
    transformers' ``revert_weight_conversion``, mergekit layout from mergekit's own
    resolution and ``convert_checkpoint_tensors``."""
    from mergekit.architecture.conversion import convert_checkpoint_tensors

    checkpoint_layout = _revert(model, dict(tensors))
    by_name = weights.by_name()
    built: Dict[str, torch.Tensor] = {}
    for name in names:
        weight = by_name[name]
        if weight.how in READ_AS_IS:
            tensor = checkpoint_layout.get(weight.inputs[0])
        elif weight.how == CONVERTED and all(k in checkpoint_layout for k in weight.inputs):
            sources = {key: checkpoint_layout[key] for key in weight.inputs}
            tensor = convert_checkpoint_tensors(weights.model_type, sources, weight.target)
        else:
            tensor = None
        if tensor is not None:
            built[name] = tensor
    return built


def _buffers_for(
    model: nn.Module,
    weights: MergekitWeights,
    names: List[str],
    to_checkpoint: Callable[[str], Optional[str]],
) -> Dict[str, torch.Tensor]:
    """Weights mergekit asks for that the loaded model holds as buffers."""
    by_name = weights.by_name()
    found: Dict[str, torch.Tensor] = {}
    for buffer_name, buffer in model.named_buffers(remove_duplicate=False):
        for key in (buffer_name, to_checkpoint(buffer_name)):
            for name in names:
                weight = by_name[name]
                same = name == key or (weight.how in READ_AS_IS and weight.inputs[0] == key)
                if same and weight.shape == tuple(buffer.shape) and name not in found:
                    found[name] = buffer
    return found


def _unverified(model: nn.Module, model_name: str) -> ScoredParameters:
    """Without a local checkpoint, scores are keyed by the checkpoint names the loader's
    renamings give (mergekit reads those for every architecture whose definition uses
    the checkpoint's names); a parameter fused by the loader cannot be named."""
    to_checkpoint = _reverse_loader_renaming(model)
    params: Dict[str, nn.Parameter] = {}
    aliases: Dict[str, str] = {}
    fused: List[str] = []
    for param, names in _parameter_groups(model):
        mapped = [to_checkpoint(name) for name in names]
        if any(m is None for m in mapped):
            fused.append(names[0])
            continue
        params[mapped[0]] = param
        for other in mapped[1:]:
            aliases[other] = mapped[0]
    if fused:
        raise LocateError(
            f"Cannot key scores by mergekit's weight names for {model_name}: its checkpoint "
            f"is not available locally to resolve them, and the loader fused parameters "
            f"{_shown(fused)} from several checkpoint tensors. Download the model first "
            "(e.g. huggingface-cli download) or pass a local folder."
        )
    return ScoredParameters(params, aliases, [], False)


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
    """Stored weight name -> the ``nn.Linear`` using that weight (for wanda)."""
    by_id = {id(param): name for name, param in scored.params.items()}
    found: Dict[str, nn.Linear] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in by_id:
            found.setdefault(by_id[id(module.weight)], module)
    return found


def check_wanda_applies(model: nn.Module, model_name: str, scored: ScoredParameters) -> None:
    """Refuse wanda for batched expert weights (3-D parameters outside convolutions).

    wanda scales each weight column by the norm of that column's inputs. Fused MoE
    experts are one parameter used by a batched matmul over the tokens routed to each
    expert, not an ``nn.Linear``: their inputs cannot be hooked per expert without
    model-specific code, and falling back to ``|θ|`` for most of the model's weights
    would not be wanda.
    """
    owners = {
        id(param): module
        for module in model.modules()
        for param in module.parameters(recurse=False)
    }
    batched = [
        name
        for name, param in scored.params.items()
        if param.ndim >= 3 and not isinstance(owners.get(id(param)), nn.modules.conv._ConvNd)
    ]
    if batched:
        raise LocateError(
            f"--score wanda cannot score the batched expert weights of {model_name} "
            f"({_shown(batched, 4)}): they are not nn.Linear layers (transformers fuses MoE "
            "experts into one tensor per layer), so their input norms per expert cannot be "
            "recorded. Use --score snip (the paper's score) for this model."
        )
