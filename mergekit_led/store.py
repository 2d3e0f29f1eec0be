"""The importance store: per-weight scores on disk, read lazily one weight at a time.

Layout of a store folder (``LED_SPEC.md`` section 5)::

    led_importance.json                 manifest (format, model, fingerprint, dataset, files)
    scores.safetensors                  float32 scores, named and shaped like the weights
    thresholds.safetensors              each score tensor sorted in descending order
    fingerprint.safetensors             a few sampled values of each scored weight

Large stores are sharded like checkpoints (``scores-00001-of-00004.safetensors``).

The ``thresholds`` files are what makes the merge fast and exact: the k-th
largest score of a weight is one element of its sorted copy, read with a
one-element slice, so electing the top ``r`` of a weight is a single comparison
instead of a selection over the whole tensor. Stores written without them (by
other tools) still merge, with an exact selection at merge time.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from functools import lru_cache, partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_led import fingerprint as fp
from mergekit_led._version import __version__
from mergekit_led.election import elected_count, top_mask, top_mask_from_threshold
from mergekit_led.errors import FingerprintMismatch, StoreError

FORMAT_NAME = "mergekit-led-importance"
FORMAT_VERSION = 1
MANIFEST_NAME = "led_importance.json"
FINGERPRINT_FILE = "fingerprint.safetensors"
DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3
# Weights with a vocabulary axis, whose rows mergekit may re-order.
_VOCABULARY_WEIGHTS = ("embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_out.weight")


class DatasetInfo(BaseModel):
    """Where a store's scores came from."""

    model_config = ConfigDict(extra="allow")

    name: Optional[str] = None  # path or hub name, as given
    fingerprint: Optional[str] = None
    samples: Optional[int] = None  # samples used
    answer_tokens: Optional[int] = None  # answer tokens used (the loss tokens)


class Manifest(BaseModel):
    """``led_importance.json``. Unknown extra keys are kept (forward compatible)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format: str
    format_version: int
    model: Optional[str] = None
    model_fingerprint: Optional[str] = None
    score: str
    dataset: Optional[DatasetInfo] = None
    files: Dict[str, str]
    shapes: Dict[str, List[int]]
    threshold_files: Dict[str, str] = {}
    fingerprint_file: Optional[str] = None
    aliases: Dict[str, str] = {}
    created: Optional[str] = None
    producer: Dict[str, str] = {}
    metadata: Dict[str, Any] = {}


# --------------------------------------------------------------------------- write


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
    **metadata: Any,
) -> str:
    """Write a valid importance store from a mapping of weight name to scores.

    Args:
        scores: weight name (as the checkpoint names it) -> non-negative scores of
            that weight's shape. Converted to float32.
        out_dir: the store folder. Written aside and renamed into place, so a
            folder at this path is always complete.
        model: the scored model as given (path or hub id). A local checkpoint is
            fingerprinted and every score is checked against its weight names
            and shapes.
        score: the score kind (``snip``, ``wanda``, ``magnitude``, ``random``, ...).
        dataset: ``{"name", "fingerprint", "samples", "answer_tokens", ...}``.
        aliases: other names a merge may ask for -> the stored name (tied weights).
        overwrite: replace an existing store at ``out_dir``.
        max_shard_size: bytes per ``scores`` shard.
        thresholds: also write the sorted copies that make merging fast.
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
    if model is not None and fp.is_local_checkpoint(model):
        ckpt_shapes = fp.checkpoint_shapes(model)
        samples = fp.checkpoint_samples(model)
        model_fingerprint = fp.digest(samples, ckpt_shapes)

    prepared: Dict[str, torch.Tensor] = {}
    for name, tensor in scores.items():
        prepared[name] = _checked_scores(name, tensor, out_dir, model, ckpt_shapes)
    for alias, target in (aliases or {}).items():
        if target not in prepared:
            raise StoreError(
                f"Alias {alias!r} of importance store {out_dir} points at {target!r}, "
                "which has no scores."
            )

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(
        parent, f".{os.path.basename(out_dir)}.partial-{uuid.uuid4().hex[:8]}"
    )
    os.makedirs(staging)
    try:
        sizes = {name: tensor.numel() * 4 for name, tensor in prepared.items()}
        files = _write_sharded(
            sizes, prepared.__getitem__, staging, "scores", max_shard_size
        )
        threshold_files: Dict[str, str] = {}
        if thresholds:
            threshold_files = _write_sharded(
                sizes, partial(_sorted_descending, prepared), staging, "thresholds",
                max_shard_size,
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
            producer=_producer_versions(),
            metadata=metadata,
        )
        # The manifest is written last: a folder without it is never a store.
        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as f:
            f.write(manifest.model_dump_json(indent=2))
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
                "checkpoint's tensor names."
            )
        if tuple(tensor.shape) != tuple(ckpt_shapes[name]):
            raise StoreError(
                f"The {where} have shape {tuple(tensor.shape)}, but the weight of "
                f"model {model} has shape {tuple(ckpt_shapes[name])}."
            )
    values = tensor.detach().to(torch.float32)
    lo, hi = torch.aminmax(values) if values.numel() else (values.new_zeros(()),) * 2
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise StoreError(f"The {where} contain non-finite values (nan or inf).")
    if lo < 0:
        raise StoreError(
            f"The {where} contain negative values (min {float(lo):g}); "
            "importance scores must be non-negative."
        )
    return values.contiguous()


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


def _replace_dir(staging: str, out_dir: str) -> None:
    if os.path.exists(out_dir):
        old = f"{staging}.old"
        os.rename(out_dir, old)
        os.rename(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out_dir)


def _producer_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"mergekit_led": __version__}
    for package in ("mergekit", "torch", "transformers", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


# --------------------------------------------------------------------------- read


class ImportanceStore(Mapping):
    """A lazy, read-only mapping of weight name -> float32 scores.

    Nothing but the manifest is read on open; each lookup reads one tensor from
    its shard. Thread-safe (mergekit's multi-GPU executor merges in threads).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.manifest = _read_manifest(self.path)
        self._lock = threading.Lock()
        self._samples: Optional[Dict[str, torch.Tensor]] = None
        for files in (self.manifest.files, self.manifest.threshold_files):
            for name, file_name in files.items():
                if not os.path.isfile(os.path.join(self.path, file_name)):
                    raise StoreError(
                        f"Importance store {self.path} is incomplete: {file_name} "
                        f"(holding {name!r}) is missing."
                    )

    # Mapping interface -----------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        stored = self.resolve(name)
        if stored is None:
            raise KeyError(name)
        return self._read(self.manifest.files[stored], stored)

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest.files)

    def __len__(self) -> int:
        return len(self.manifest.files)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def __repr__(self) -> str:
        return (
            f"ImportanceStore({self.path!r}, model={self.manifest.model!r}, "
            f"score={self.manifest.score!r}, tensors={len(self)})"
        )

    # Store specifics -------------------------------------------------------
    def resolve(self, name: str) -> Optional[str]:
        """The stored name that scores weight ``name`` (itself, or via an alias)."""
        if name in self.manifest.files:
            return name
        target = self.manifest.aliases.get(name)
        return target if target in self.manifest.files else None

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.manifest.shapes[self.resolve(name) or name])

    def scores(
        self, name: str, *, model: str = "?", device: Optional[torch.device] = None
    ) -> torch.Tensor:
        """Scores of weight ``name``, with errors that name the model and store."""
        stored = self._require(name, model)
        tensor = self._read(self.manifest.files[stored], stored)
        if device is not None:
            tensor = tensor.to(device)
        return tensor

    def top_mask(
        self,
        name: str,
        ratio: float,
        *,
        model: str = "?",
        device: Optional[torch.device] = None,
    ) -> torch.Tensor:
        """``top(S, r)`` of weight ``name``, exactly as ``election.top_mask``."""
        stored = self._require(name, model)
        scores = self.scores(name, model=model, device=device)
        # One pass over the scores themselves: a file replaced after writing
        # must not slip through behind a stale thresholds file.
        self._check_values(scores, stored, model)
        threshold_file = self.manifest.threshold_files.get(stored)
        if threshold_file is None:
            return top_mask(scores, ratio)
        k = elected_count(scores.numel(), ratio)
        threshold = self._read_sorted(threshold_file, stored, k - 1) if k else None
        return top_mask_from_threshold(scores, threshold)

    def check_weight(self, name: str, weight: torch.Tensor, *, model: str) -> None:
        """Refuse a weight that is not the one these scores were computed on."""
        stored = self._require(name, model)
        expected_shape = tuple(self.manifest.shapes[stored])
        if tuple(weight.shape) != expected_shape:
            hint = ""
            if weight.ndim and expected_shape and weight.shape[1:] == expected_shape[1:]:
                hint = (
                    " If this is an embedding or output layer, the vocabulary was "
                    "probably re-sized by `tokenizer_source`/`tokenizer`; LED-Merging "
                    "cannot re-index scores, so merge without vocabulary alignment "
                    "(all models must share one tokenizer)."
                )
            raise StoreError(
                f"Shape mismatch for weight {name!r} of model {model}: the weight has "
                f"shape {tuple(weight.shape)}, but importance store {self.path} holds "
                f"scores of shape {expected_shape}.{hint}"
            )
        samples = self._fingerprint_samples()
        if stored not in samples or fp.matches(samples[stored], weight):
            return
        twin = next(
            (
                other
                for other, sample in samples.items()
                if other != stored
                and sample.shape == samples[stored].shape
                and self.manifest.shapes.get(other) == list(expected_shape)
                and fp.matches(sample, weight)
            ),
            None,
        )
        if twin is not None:
            hint = (
                f" Its values are those of {twin!r} in the scored model: a `slices` "
                "entry whose source `layer_range` differs from its output position "
                "makes mergekit hand another layer's weight to the method. "
                "LED-Merging reads scores by output position, so keep each source "
                "layer at its own position (or merge with `models:`)."
            )
        else:
            hint = (
                " Check that `importance`/`base_importance` point at the stores "
                "computed for this model."
            )
            if name.endswith(_VOCABULARY_WEIGHTS):
                hint += (
                    " For an embedding or output layer, vocabulary alignment "
                    "(`tokenizer_source`/`tokenizer`) also causes this: it re-orders "
                    "rows, so the scores no longer line up; merge without it."
                )
        raise FingerprintMismatch(
            f"Importance store {self.path} was computed on model "
            f"{self.manifest.model} (fingerprint {self.manifest.model_fingerprint}), "
            f"but weight {name!r} given for model {model} does not match that "
            f"model's weights.{hint}"
        )

    # internals -------------------------------------------------------------
    def _require(self, name: str, model: str) -> str:
        stored = self.resolve(name)
        if stored is None:
            raise StoreError(
                f"Weight {name!r} of model {model} is missing from importance store "
                f"{self.path} (scored model: {self.manifest.model}; "
                f"{len(self.manifest.files)} weights scored)."
            )
        return stored

    def _read(self, file_name: str, name: str) -> torch.Tensor:
        with self._lock, safe_open(
            os.path.join(self.path, file_name), framework="pt"
        ) as handle:
            return handle.get_tensor(name)

    def _read_sorted(self, file_name: str, name: str, position: int) -> float:
        """One element of a sorted thresholds tensor: the only bytes read."""
        with self._lock, safe_open(
            os.path.join(self.path, file_name), framework="pt"
        ) as handle:
            return float(handle.get_slice(name)[position : position + 1][0])

    def _fingerprint_samples(self) -> Dict[str, torch.Tensor]:
        if self._samples is None:
            samples: Dict[str, torch.Tensor] = {}
            if self.manifest.fingerprint_file:
                path = os.path.join(self.path, self.manifest.fingerprint_file)
                with safe_open(path, framework="pt") as handle:
                    samples = {k: handle.get_tensor(k) for k in handle.keys()}
            self._samples = samples
        return self._samples

    def _check_values(self, scores: torch.Tensor, name: str, model: str) -> None:
        if not scores.numel():
            return
        lo, hi = (float(v) for v in torch.aminmax(scores))
        where = f"weight {name!r} (model {model}, importance store {self.path})"
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise StoreError(f"Non-finite importance scores (nan or inf) for {where}.")
        if lo < 0:
            raise StoreError(
                f"Negative importance scores (min {lo:g}) for {where}; "
                "scores must be non-negative."
            )


def _read_manifest(path: str) -> Manifest:
    if not os.path.exists(path):
        raise StoreError(f"Importance store {path} does not exist.")
    if not os.path.isdir(path):
        raise StoreError(
            f"Importance store {path} is not a folder (a store is a folder "
            f"holding {MANIFEST_NAME} and *.safetensors files)."
        )
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        raise StoreError(
            f"Importance store {path} has no manifest {MANIFEST_NAME}; it is not a "
            "store, or its writing did not finish."
        )
    try:
        with open(manifest_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"Cannot read manifest {manifest_path}: {error}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise StoreError(
            f"Manifest {manifest_path} has unknown format {found!r}; expected "
            f"{FORMAT_NAME!r}."
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"Manifest {manifest_path} has format version "
            f"{raw.get('format_version')!r}; this mergekit-led ({__version__}) reads "
            f"version {FORMAT_VERSION}."
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        raise StoreError(f"Manifest {manifest_path} is malformed: {error}") from None


@lru_cache(maxsize=64)
def _open_cached(path: str, mtime_ns: int) -> ImportanceStore:
    return ImportanceStore(path)


def load_importance(path: str) -> ImportanceStore:
    """Open an importance store: a lazy read-only mapping of weight name -> scores.

    Opening the same unchanged store again returns the same object.
    """
    path = os.path.abspath(os.fspath(path))
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        return ImportanceStore(path)  # raises the precise error
    return _open_cached(path, os.stat(manifest_path).st_mtime_ns)
