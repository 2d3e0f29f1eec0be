"""Writing an importance store from a mapping of weight name -> scores."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import save_file

from mergekit_led.atomic import staged_directory
from mergekit_led.environment import package_versions
from mergekit_led.errors import StoreError
from mergekit_led.store import fingerprint, mergekit_weights
from mergekit_led.store.manifest import (
    FINGERPRINT_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    DatasetInfo,
    Manifest,
)
from mergekit_led.store.values import check_score_values

DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3


def save_importance(
    scores: Mapping[str, torch.Tensor],
    out_dir: str,
    *,
    model: Optional[str],
    score: str = "custom",
    dataset: Optional[Dict[str, Any]] = None,
    aliases: Optional[Dict[str, str]] = None,
    overwrite: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    thresholds: bool = True,
    weight_samples: Optional[Mapping[str, torch.Tensor]] = None,
    trust_remote_code: bool = False,
    **metadata: Any,
) -> str:
    """Write a valid importance store from a mapping of weight name to scores.

    Args:
        scores: weight name (as mergekit asks the merge method for it) -> non-negative
            scores of that weight's shape. Converted to float32.
        out_dir: the store folder. Written aside and renamed into place, so a
            folder at this path is always complete.
        model: the scored model as given (path or hub id). A local checkpoint is
            fingerprinted and every score is checked against the names and shapes
            of the weights mergekit merges for it.
        score: the score kind (``snip``, ``wanda``, ``magnitude``, ``random``, ...).
        dataset: ``{"name", "fingerprint", "samples", "answer_tokens", ...}``.
        aliases: other names a merge may ask for -> the stored name (tied weights).
        overwrite: replace an existing store at ``out_dir``.
        max_shard_size: bytes per ``scores`` shard.
        thresholds: also write the sorted copies that make merging fast.
        weight_samples: fingerprint samples of converted weights, already taken
            (locate samples the loaded parameters); others are read from the checkpoint.
        trust_remote_code: read the model's config with its own code (for mergekit's
            architecture of a custom model).
        **metadata: anything JSON-serialisable, kept in the manifest.

    Returns the store path.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise StoreError(
            f"Importance store {out_dir} already exists; pass overwrite=True "
            "(--overwrite) to replace it."
        )
    if not scores:
        raise StoreError(f"No scores to write to importance store {out_dir}.")

    ckpt_shapes: Optional[Dict[str, Tuple[int, ...]]] = None
    samples: Dict[str, torch.Tensor] = {}
    model_fingerprint = None
    if model is not None and fingerprint.is_local_checkpoint(model):
        ckpt_shapes = fingerprint.checkpoint_shapes(model)
        samples = fingerprint.checkpoint_samples(model)
        model_fingerprint = fingerprint.digest(samples, ckpt_shapes)
        ckpt_shapes, samples = _mergekit_names(
            model, scores, out_dir, samples, weight_samples, trust_remote_code
        )

    prepared: Dict[str, torch.Tensor] = {}
    for name, tensor in scores.items():
        prepared[name] = _checked_scores(name, tensor, out_dir, model, ckpt_shapes)
    for alias, target in (aliases or {}).items():
        if target not in prepared:
            raise StoreError(
                f"Alias {alias!r} of importance store {out_dir} points at {target!r}, "
                "which has no scores."
            )

    with staged_directory(out_dir) as staging:
        sizes = {name: tensor.numel() * 4 for name, tensor in prepared.items()}
        files = _write_sharded(sizes, prepared.__getitem__, staging, "scores", max_shard_size)
        threshold_files: Dict[str, str] = {}
        if thresholds:
            threshold_files = _write_sharded(
                sizes, partial(_sorted_descending, prepared), staging, "thresholds", max_shard_size
            )
        fingerprint_file = None
        if samples:
            save_file(
                {name: samples[name].contiguous() for name in prepared},
                os.path.join(staging, FINGERPRINT_FILE),
            )
            fingerprint_file = FINGERPRINT_FILE
        manifest = Manifest(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            model=model,
            model_fingerprint=model_fingerprint,
            score=score,
            dataset=DatasetInfo(**dataset) if dataset is not None else None,
            files=files,
            shapes={name: list(t.shape) for name, t in prepared.items()},
            threshold_files=threshold_files,
            fingerprint_file=fingerprint_file,
            aliases=dict(aliases or {}),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            producer=package_versions(),
            metadata=metadata,
        )
        # The manifest is written last: a folder without it is never a store.
        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as f:
            f.write(manifest.model_dump_json(indent=2))
    return out_dir


def _checked_scores(
    name: str,
    tensor: torch.Tensor,
    out_dir: str,
    model: Optional[str],
    ckpt_shapes: Optional[Dict[str, Tuple[int, ...]]],
) -> torch.Tensor:
    where = f"scores for weight {name!r} (importance store {out_dir})"
    if not isinstance(name, str):
        raise StoreError(f"Weight names must be strings, got {name!r} in {out_dir}.")
    if not isinstance(tensor, torch.Tensor) or not (
        tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)
    ):
        raise StoreError(f"The {where} must be a real-valued torch.Tensor.")
    if ckpt_shapes is not None:
        if name not in ckpt_shapes:
            raise StoreError(
                f"The {where} name no weight of model {model}; stores are keyed by the "
                "names mergekit asks the merge method for."
            )
        if tuple(tensor.shape) != tuple(ckpt_shapes[name]):
            raise StoreError(
                f"The {where} have shape {tuple(tensor.shape)}, but the weight of "
                f"model {model} has shape {tuple(ckpt_shapes[name])}."
            )
    values = tensor.detach().to(torch.float32)
    check_score_values(values, where=f"the {where}")
    return values.contiguous()


def _mergekit_names(
    model: str,
    scores: Mapping[str, torch.Tensor],
    out_dir: str,
    checkpoint_samples: Dict[str, torch.Tensor],
    given: Optional[Mapping[str, torch.Tensor]],
    trust_remote_code: bool,
) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, torch.Tensor]]:
    """The names and shapes a store of ``model`` may hold (those mergekit asks for), and
    the fingerprint samples of the tensors mergekit hands over under those names."""
    weights = mergekit_weights.mergekit_weights(model, trust_remote_code=trust_remote_code)
    if weights.missing():
        raise StoreError(f"Cannot write importance store {out_dir}: {weights.missing_message()}")
    mergekit_weights.refuse_converted_inputs(weights, list(scores), f"importance store {out_dir}")
    shapes = mergekit_weights.store_shapes(weights)
    names = [name for name in scores if isinstance(name, str) and name in shapes]
    samples = mergekit_weights.weight_samples(weights, names, checkpoint_samples, given)
    return shapes, samples


def _write_sharded(
    sizes: Dict[str, int],
    load: Callable[[str], torch.Tensor],
    folder: str,
    stem: str,
    max_shard_size: int,
) -> Dict[str, str]:
    """Write ``load(name)`` for every name into shards of at most
    ``max_shard_size`` bytes (one tensor may exceed it alone); return name -> file."""
    shards: List[List[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    files: Dict[str, str] = {}
    for index, names in enumerate(shards, start=1):
        file_name = (
            f"{stem}.safetensors"
            if len(shards) == 1
            else f"{stem}-{index:05d}-of-{len(shards):05d}.safetensors"
        )
        payload = {name: load(name).to("cpu").contiguous() for name in names}
        save_file(payload, os.path.join(folder, file_name), metadata={"format": "pt"})
        del payload
        files.update({name: file_name for name in names})
    return files


def _sorted_descending(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    flat = tensors[name].reshape(-1)
    if flat.device.type != "cpu":
        return torch.sort(flat, descending=True).values
    # numpy's value-only sort is >10x faster than torch.sort (values + indices) on CPU.
    return torch.from_numpy(np.sort(flat.numpy())[::-1].copy())
