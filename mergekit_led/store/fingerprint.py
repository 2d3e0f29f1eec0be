"""Cheap fingerprints of checkpoint weights.

A store records, for every weight it scores, a handful of that weight's values
(a few rows, a few columns: a few KiB read per tensor, never a whole tensor).
At merge time the same positions are read from the tensor mergekit hands to the
method, so a store computed for another model, another layer (a shifted
``slices`` range) or another vocabulary order is caught on the weight itself.

Samples are kept in float64, which holds bfloat16, float16 and float32 values
exactly, so ``sample.to(dtype)`` equals what a loader's ``tensor.to(dtype)``
produces for any merge dtype.
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, Iterable, Optional, Tuple

import torch

from mergekit_led.errors import CheckpointError

SAMPLE_ROWS = 8
SAMPLE_COLS = 8


def sample_index(shape: Tuple[int, ...]) -> Tuple[object, ...]:
    """The index expression that picks a weight's fingerprint sample.

    A few rows spread along the first axis (the vocabulary axis of embeddings,
    so a re-ordered vocabulary changes the sample) and the first columns of
    each, the first element along any further axis.
    """
    if len(shape) == 0:
        return ()
    rows = _spread(shape[0], SAMPLE_ROWS)
    if len(shape) == 1:
        return (rows,)
    cols = slice(0, min(shape[1], SAMPLE_COLS))
    return (rows, cols) + (0,) * (len(shape) - 2)


def sample_size(shape: Tuple[int, ...]) -> int:
    """How many values the fingerprint sample of a weight of this shape holds."""
    index = sample_index(tuple(shape))
    if not index:
        return 1
    size = len(index[0])
    if len(index) > 1:
        size *= index[1].stop - index[1].start
    return size


def _spread(length: int, count: int) -> torch.Tensor:
    if length == 0:
        return torch.zeros(0, dtype=torch.long)
    count = min(length, count)
    return torch.linspace(0, length - 1, count).round().long().unique()


def sample_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The fingerprint sample of an in-memory tensor, as float64 on the CPU."""
    index = sample_index(tuple(tensor.shape))
    if not index:
        return tensor.detach().reshape(1).to("cpu", torch.float64)
    rows = index[0].to(tensor.device)
    picked = tensor.detach()[(rows,) + tuple(index[1:])]
    return picked.reshape(-1).to("cpu", torch.float64)


def _sample_lazy(handle, name: str) -> torch.Tensor:
    """Read only the sampled rows of one tensor from an open checkpoint shard."""
    if not hasattr(handle, "get_slice"):  # pickled checkpoints load whole anyway
        return sample_tensor(handle.get_tensor(name))
    lazy = handle.get_slice(name)
    shape = tuple(lazy.get_shape())
    index = sample_index(shape)
    if not index:  # a scalar (e.g. Apertus' activation parameters): safetensors cannot slice it
        return handle.get_tensor(name).reshape(1).to(torch.float64)
    rest = tuple(index[1:])
    pieces = [lazy[(slice(int(r), int(r) + 1),) + rest] for r in index[0].tolist()]
    if not pieces:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([p.reshape(-1) for p in pieces]).to(torch.float64)


def is_local_checkpoint(model: Optional[str]) -> bool:
    if not model or not os.path.isdir(model):
        return False
    return any(
        os.path.exists(os.path.join(model, name))
        for name in (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        )
    )


# The weight files of a checkpoint, in the order both loaders look for them. For
# each, transformers takes the single file over its shard index, and mergekit
# (``ShardedTensorIndex.from_disk``) the index over the single file.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_unambiguous(model_path: str) -> None:
    """Refuse a checkpoint folder where transformers (locate) and mergekit (the
    merge, the fingerprint) would read different weights: a single weights file
    next to a shard index of the same kind (a stale ``model.safetensors`` left
    beside new shards, or the reverse)."""
    for name in WEIGHT_FILES:
        single = os.path.join(model_path, name)
        index = single + ".index.json"
        if os.path.exists(single) and os.path.exists(index):
            raise CheckpointError(
                f"Model {model_path} holds both {name} and its shard index "
                f"{os.path.basename(index)}: transformers (which computes the scores) "
                f"loads {name}, mergekit merges the shards, so the scores would belong to "
                "other weights than the merged ones. Remove the one that is stale."
            )


def checkpoint_index(model_path: str):
    """mergekit's index of a local checkpoint's weights (what it merges), refused
    when transformers would load other files (``check_unambiguous``)."""
    from mergekit.io.lazy_tensor_loader import ShardedTensorIndex

    check_unambiguous(model_path)
    return ShardedTensorIndex.from_disk(model_path)


# Files of a checkpoint besides its weights that change what a forward pass
# computes, hence the scores: the architecture and its settings (config.json,
# e.g. rms_norm_eps, hidden_act) and remote code. Tokenizer files are covered by
# the token ids a store's key records.
SCORING_FILES = ("config.json",)
SCORING_PATTERN_SUFFIX = ".py"


def scoring_files_digest(model_path: str) -> str:
    """``sha256:<hex>`` over the names and bytes of the files besides the weights
    that change a checkpoint's scores (``SCORING_FILES`` and top-level ``*.py``)."""
    names = sorted(
        entry.name
        for entry in os.scandir(model_path)
        if entry.is_file()
        and (entry.name in SCORING_FILES or entry.name.endswith(SCORING_PATTERN_SUFFIX))
    )
    h = hashlib.sha256()
    for name in names:
        with open(os.path.join(model_path, name), "rb") as f:
            data = f.read()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


def checkpoint_samples(model_path: str) -> Dict[str, torch.Tensor]:
    """Fingerprint samples of every tensor of a local checkpoint, read lazily."""
    from mergekit.io.loader import TensorLoader

    index = checkpoint_index(model_path)
    samples: Dict[str, torch.Tensor] = {}
    for shard in index.shards:
        handle = TensorLoader.get(os.path.join(model_path, shard.filename))
        for name in shard.contained_keys:
            samples[name] = _sample_lazy(handle, name)
        del handle
    return samples


def checkpoint_shapes(model_path: str) -> Dict[str, Tuple[int, ...]]:
    """Shapes of every tensor of a local checkpoint, without reading any data."""
    from mergekit.io.loader import TensorLoader

    index = checkpoint_index(model_path)
    shapes: Dict[str, Tuple[int, ...]] = {}
    for shard in index.shards:
        handle = TensorLoader.get(os.path.join(model_path, shard.filename))
        for name in shard.contained_keys:
            if hasattr(handle, "get_slice"):
                shapes[name] = tuple(handle.get_slice(name).get_shape())
            else:
                shapes[name] = tuple(handle.get_tensor(name).shape)
        del handle
    return shapes


def digest(samples: Dict[str, torch.Tensor], shapes: Dict[str, Iterable[int]]) -> str:
    """One hex digest for a whole model: names, shapes and sampled values."""
    h = hashlib.sha256()
    for name in sorted(samples):
        h.update(name.encode())
        h.update(repr(tuple(int(d) for d in shapes[name])).encode())
        h.update(samples[name].contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def matches(sample: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (in whatever dtype the merge runs) has the sampled values."""
    observed = sample_tensor(tensor)
    if observed.shape != sample.shape:
        return False
    if tensor.is_floating_point():
        expected = sample.to(tensor.dtype).to(torch.float64)
    else:
        expected = sample
    return bool(torch.equal(expected.isnan(), observed.isnan())) and bool(
        torch.equal(torch.nan_to_num(expected, nan=0.0), torch.nan_to_num(observed, nan=0.0))
    )
