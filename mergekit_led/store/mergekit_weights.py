"""The weights mergekit asks a merge method for, for one checkpoint: names, shapes, sources.

mergekit, not the checkpoint, decides the names a merge method sees. Its ``MergePlanner``
walks the architecture's ``WeightInfo`` list (a JSON definition, a special case such as
AFMoE, or one inferred from the transformers model when there is no definition) and asks
the method for each ``WeightInfo.name``. mergekit's ``LoadTensor`` then reads the first of
``name``, ``aliases`` and ``tied_names`` present in the checkpoint, or builds the tensor with
``convert_checkpoint_tensors``, which runs transformers 5's own checkpoint conversion: a
Mixtral checkpoint holds ``...block_sparse_moe.experts.N.w1.weight`` per expert, and mergekit
hands the method one ``...mlp.experts.gate_up_proj`` holding all experts of the layer.

Importance stores are keyed by these names. This module resolves them the way mergekit
does, reading only checkpoint headers (converted shapes come from a run of the same
conversion on meta tensors), reads the tensor mergekit hands over, and takes its
fingerprint sample.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from mergekit_led.errors import CheckpointError, StoreError
from mergekit_led.store import fingerprint

Shape = Tuple[int, ...]

# How mergekit's loader gets a weight for this checkpoint.
DIRECT = "direct"  # a checkpoint tensor of the weight's own name
ALIAS = "alias"  # a checkpoint tensor under one of the weight's aliases
TIED = "tied"  # a checkpoint tensor under one of its tied names (e.g. lm_head -> embeddings)
CONVERTED = "converted"  # built from checkpoint tensors by transformers' conversion mapping
SKIPPED = "skipped"  # optional and absent: a merge of this checkpoint alone never asks for it
MISSING = "missing"  # required but absent: mergekit's own merge fails on it

READ_AS_IS = (DIRECT, ALIAS, TIED)

_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class MergekitWeight:
    """One weight of mergekit's architecture, resolved against one checkpoint."""

    name: str  # what mergekit asks the method for, and writes to the merged checkpoint
    how: str  # DIRECT, ALIAS, TIED, CONVERTED, SKIPPED or MISSING
    inputs: Tuple[str, ...]  # the checkpoint tensors it is read or built from
    shape: Optional[Shape]  # of the tensor handed over (None when nothing is read)
    dtype: Optional[torch.dtype]
    optional: bool
    target: Optional[str] = None  # CONVERTED: the conversion target (the name or an alias)

    @property
    def source(self) -> Optional[str]:
        """The checkpoint tensor read as it is (None unless DIRECT, ALIAS or TIED)."""
        return self.inputs[0] if self.how in READ_AS_IS else None


@dataclass(frozen=True)
class MergekitWeights:
    """mergekit's weights for one checkpoint, in the order mergekit merges them."""

    checkpoint: str
    model_type: Optional[str]
    architecture: str  # e.g. "MixtralForCausalLM (mergekit's definition)"
    weights: Tuple[MergekitWeight, ...]
    checkpoint_tensors: Dict[str, Tuple[Shape, torch.dtype]]

    def by_name(self) -> Dict[str, MergekitWeight]:
        return {w.name: w for w in self.weights}

    def asked(self) -> Dict[str, MergekitWeight]:
        """The weights a merge of this checkpoint asks the method for."""
        return {w.name: w for w in self.weights if w.how not in (SKIPPED, MISSING)}

    def storable(self) -> Dict[str, MergekitWeight]:
        """Names a store may hold: the weights asked for, and optional tied weights
        (a tied ``lm_head``) that mergekit asks for when another model of the merge
        has its own, reading this checkpoint's tied tensor."""
        return {w.name: w for w in self.weights if w.how != MISSING and w.inputs}

    def missing(self) -> List[str]:
        return [w.name for w in self.weights if w.how == MISSING]

    def converted_inputs(self) -> Dict[str, str]:
        """Checkpoint tensor -> the converted weight mergekit builds from it."""
        found: Dict[str, str] = {}
        for weight in self.weights:
            if weight.how == CONVERTED:
                for key in weight.inputs:
                    found.setdefault(key, weight.name)
        return found

    def missing_message(self) -> str:
        """Why mergekit cannot merge this checkpoint (when ``missing()`` is not empty)."""
        return (
            f"mergekit's architecture for {self.checkpoint} ({self.architecture}) requires "
            f"weights the checkpoint does not hold and no conversion builds: "
            f"{', '.join(self.missing())}. mergekit's own merge of this model fails with "
            f'"Tensor {self.missing()[0]} required but not present in model ...".'
        )


def mergekit_weights(checkpoint_dir: str, *, trust_remote_code: bool = False) -> MergekitWeights:
    """Resolve every weight of mergekit's architecture for a local checkpoint, the way
    ``MergePlanner.plan_tensor`` and ``LoadTensor.execute`` do for a merge whose models
    all look like this one. Reads the config and the checkpoint headers only."""
    from mergekit.architecture import arch_info_for_config
    from mergekit.architecture.auto import infer_architecture_info
    from mergekit.options import MergeOptions

    reference = _model_reference(checkpoint_dir)
    try:
        config = reference.config(trust_remote_code=trust_remote_code)
        architecture = arch_info_for_config(config)
        if architecture is None:
            options = MergeOptions(trust_remote_code=trust_remote_code)
            architecture = infer_architecture_info((reference,), reference, options)
            described = f"{config.architectures[0]}, inferred by mergekit from transformers"
        else:
            described = f"{config.architectures[0]}, mergekit's definition"
    except Exception as error:  # mergekit and transformers raise many types here
        raise StoreError(
            f"mergekit cannot tell which weights it merges for {checkpoint_dir}: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        index = checkpoint_tensors(checkpoint_dir)
    except CheckpointError:
        raise
    except Exception as error:  # safetensors, json and OS errors of a damaged checkpoint
        raise StoreError(
            f"Cannot read the tensor index of checkpoint {checkpoint_dir}: "
            f"{type(error).__name__}: {error}"
        ) from error
    layers = _keys_by_layer(index)
    resolved = []
    for info in architecture.all_weights(config):
        resolved.append(_resolve(info, index, layers, config.model_type))
    return MergekitWeights(
        os.path.abspath(checkpoint_dir), config.model_type, described, tuple(resolved), index
    )


def _resolve(info, index, layers, model_type) -> MergekitWeight:
    aliases = tuple(info.aliases or ())
    tied = tuple(info.tied_names or ())
    own_names = (info.name,) + aliases
    if info.optional and not any(n in index for n in own_names):
        # plan_tensor leaves an optional weight out when no model holds it under its
        # name or aliases (tied names are not looked at there); when another model
        # holds it, LoadTensor reads this checkpoint's tied tensor instead.
        tied_hit = next((n for n in tied if n in index), None)
        if tied_hit is None:
            return MergekitWeight(info.name, SKIPPED, (), None, None, True)
        shape, dtype = index[tied_hit]
        return MergekitWeight(info.name, SKIPPED, (tied_hit,), shape, dtype, True)
    for how, names in ((DIRECT, (info.name,)), (ALIAS, aliases), (TIED, tied)):
        found = next((n for n in names if n in index), None)
        if found is not None:
            shape, dtype = index[found]
            return MergekitWeight(info.name, how, (found,), shape, dtype, info.optional)
    for target in own_names:
        converted = _convert_meta(model_type, index, layers, target)
        if converted is not None:
            tensor, inputs = converted
            return MergekitWeight(
                info.name,
                CONVERTED,
                inputs,
                tuple(tensor.shape),
                tensor.dtype,
                info.optional,
                target,
            )
    how = SKIPPED if info.optional else MISSING
    return MergekitWeight(info.name, how, (), None, None, info.optional)


def _keys_by_layer(keys) -> Dict[Optional[str], List[str]]:
    grouped: Dict[Optional[str], List[str]] = {}
    for key in keys:
        match = _LAYER_NUMBER.search(key)
        grouped.setdefault(match.group(1) if match else None, []).append(key)
    return grouped


def _candidate_key_sets(keys, layers, target: str):
    """The target's own layer first: mergekit's conversion walks every key it is given
    (about 2 s per fused weight on a 18,720-tensor index, 0.04 s on one layer's keys),
    and transformers' renamings never change a layer number. Then every key."""
    match = _LAYER_NUMBER.search(target)
    if match is not None and match.group(1) in layers:
        yield layers[match.group(1)]
    yield list(keys)


def _convert_meta(model_type, index, layers, target):
    """Run mergekit's conversion on meta tensors: the shape it builds and which
    checkpoint tensors it reads (None when it builds nothing)."""
    from mergekit.architecture.conversion import convert_checkpoint_tensors

    for keys in _candidate_key_sets(index, layers, target):
        read: List[str] = []
        sources = {key: _recorded_meta(index, key, read) for key in keys}
        tensor = convert_checkpoint_tensors(model_type, sources, target)
        if tensor is not None:
            return tensor, tuple(dict.fromkeys(read))
    return None


def _recorded_meta(index, key: str, read: List[str]) -> Callable[[], torch.Tensor]:
    """A lazy meta tensor of checkpoint tensor ``key`` that notes in ``read`` when used."""

    def load() -> torch.Tensor:
        read.append(key)
        shape, dtype = index[key]
        return torch.empty(shape, dtype=dtype, device="meta")

    return load


def read_weight(weights: MergekitWeights, weight: MergekitWeight, loader=None) -> torch.Tensor:
    """The tensor mergekit's ``LoadTensor`` hands over for ``weight`` (before any dtype
    cast), reading only the checkpoint tensors it is made of."""
    from mergekit.architecture.conversion import convert_checkpoint_tensors

    if loader is None:
        loader = _model_reference(weights.checkpoint).lazy_loader(lazy_unpickle=True)
    if weight.how in READ_AS_IS or (weight.how == SKIPPED and weight.inputs):
        return loader.get_tensor(weight.inputs[0], device="cpu")
    if weight.how != CONVERTED:
        raise KeyError(f"mergekit reads no tensor for {weight.name!r} of {weights.checkpoint}")
    for keys in (weight.inputs, list(loader.index.tensor_paths)):
        sources = {key: _lazy(loader, key) for key in keys}
        tensor = convert_checkpoint_tensors(weights.model_type, sources, weight.target)
        if tensor is not None:
            return tensor
    raise KeyError(f"mergekit builds no tensor {weight.name!r} from {weights.checkpoint}")


def _lazy(loader, key: str) -> Callable[[], torch.Tensor]:
    return lambda: loader.get_tensor(key, device="cpu")


def weight_samples(
    weights: MergekitWeights,
    names: Sequence[str],
    checkpoint_samples: Mapping[str, torch.Tensor],
    given: Optional[Mapping[str, torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Fingerprint samples of the tensors mergekit hands over, for each store name.

    A weight read as it is has the sample of its checkpoint tensor. A converted weight
    takes the sample ``given`` for it (locate samples the loaded parameter, which holds
    the same values), or else is built from the checkpoint once. Other names are
    checkpoint tensors, sampled as they are.
    """
    storable = weights.storable()
    samples: Dict[str, torch.Tensor] = {}
    loader = None
    for name in names:
        weight = storable.get(name)
        if weight is None or weight.how != CONVERTED:
            source = weight.inputs[0] if weight is not None else name
            if source in checkpoint_samples:
                samples[name] = checkpoint_samples[source]
            continue
        expected = fingerprint.sample_size(weight.shape)
        if given is not None and name in given and given[name].numel() == expected:
            samples[name] = given[name].detach().to("cpu", torch.float64).reshape(-1)
            continue
        if loader is None:
            loader = _model_reference(weights.checkpoint).lazy_loader(lazy_unpickle=True)
        samples[name] = fingerprint.sample_tensor(read_weight(weights, weight, loader))
    return samples


def store_shapes(weights: MergekitWeights) -> Dict[str, Shape]:
    """The names a store for this checkpoint may hold, with their shapes: the weights
    mergekit asks for (and tied ones), and checkpoint tensors mergekit reads under no
    other name (never asked for, so harmless)."""
    converted = weights.converted_inputs()
    shapes = {
        name: shape
        for name, (shape, _) in weights.checkpoint_tensors.items()
        if name not in converted
    }
    shapes.update({name: weight.shape for name, weight in weights.storable().items()})
    return shapes


def refuse_converted_inputs(weights: MergekitWeights, names, where: str) -> None:
    """Refuse scores keyed by checkpoint tensors that mergekit only reads to build
    another weight: the merge would ask for that weight and find no scores."""
    converted = weights.converted_inputs()
    storable = weights.storable()
    bad = [n for n in names if isinstance(n, str) and n in converted and n not in storable]
    if bad:
        wanted = list(dict.fromkeys(converted[name] for name in bad))
        raise StoreError(
            f"The scores of {where} are keyed by checkpoint tensors mergekit never hands to "
            f"a merge method ({_listed(bad)}): mergekit builds {_listed(wanted)} from them "
            f"with transformers' conversion of {weights.checkpoint}. Key the scores by the "
            "names mergekit asks for (mergekit-led locate does)."
        )


def _listed(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def checkpoint_tensors(checkpoint_dir: str) -> Dict[str, Tuple[Shape, torch.dtype]]:
    """name -> (shape, dtype) of every tensor of a local checkpoint, headers only."""
    from mergekit.io.loader import TensorLoader

    index = fingerprint.checkpoint_index(checkpoint_dir)
    found: Dict[str, Tuple[Shape, torch.dtype]] = {}
    for shard in index.shards:
        handle = TensorLoader.get(os.path.join(checkpoint_dir, shard.filename))
        for name in shard.contained_keys:
            if hasattr(handle, "get_slice"):
                lazy = handle.get_slice(name)
                found[name] = (tuple(lazy.get_shape()), _SAFETENSORS_DTYPES[lazy.get_dtype()])
            else:  # pickled shards are read whole anyway
                tensor = handle.get_tensor(name)
                found[name] = (tuple(tensor.shape), tensor.dtype)
        del handle
    return found


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", torch.uint8),
    "F8_E5M2": getattr(torch, "float8_e5m2", torch.uint8),
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _model_reference(checkpoint_dir: str):
    from mergekit.common import ModelReference

    return ModelReference.model_validate(os.path.abspath(checkpoint_dir))
