"""Writing an importance store from a mapping of weight name -> scores."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

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
    SCORE_DTYPES,
    DatasetInfo,
    Manifest,
)
from mergekit_led.store.reader import forget
from mergekit_led.store.values import check_score_values

DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3


def score_dtype_name(dtype: Union[str, torch.dtype]) -> str:
    """``"float32"`` or ``"bfloat16"`` for a torch dtype or its name; else StoreError."""
    for name, torch_dtype in SCORE_DTYPES.items():
        if dtype in (name, torch_dtype):
            return name
    raise StoreError(
        f"Unsupported importance store dtype {dtype!r}; choose float32 (exact, 4 bytes "
        "per weight) or bfloat16 (2 bytes per weight)."
    )


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
    dtype: Union[str, torch.dtype] = torch.float32,
    weight_samples: Optional[Mapping[str, torch.Tensor]] = None,
    trust_remote_code: bool = False,
    **metadata: Any,
) -> str:
    """Write a valid importance store from a mapping of weight name to scores.

    Args:
        scores: weight name (as mergekit asks the merge method for it) -> non-negative
            scores of that weight's shape, checked in float32.
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
        dtype: ``torch.float32`` (4 bytes per weight) or ``torch.bfloat16`` (2 bytes
            per weight: each score rounded once, to nearest, here).
        weight_samples: fingerprint samples of converted weights, already taken
            (locate samples the loaded parameters); others are read from the checkpoint.
        trust_remote_code: read the model's config with its own code (for mergekit's
            architecture of a custom model).
        **metadata: anything JSON-serialisable, kept in the manifest.

    Returns the store path.
    """
    if "thresholds" in metadata:
        raise TypeError(
            "save_importance() no longer takes 'thresholds': stores (format 2) hold no "
            "sorted copies; the merge selects each threshold exactly from the scores."
        )
    out_dir = os.path.abspath(out_dir)
    dtype_name = score_dtype_name(dtype)
    if os.path.exists(out_dir) and not overwrite:
        raise StoreError(
            f"Importance store {out_dir} already exists; pass overwrite=True "
            "(--overwrite) to replace it."
        )
    check_replaceable(out_dir)
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
        prepared[name] = _checked_scores(name, tensor, out_dir, model, ckpt_shapes, dtype_name)
    for alias, target in (aliases or {}).items():
        if target not in prepared:
            raise StoreError(
                f"Alias {alias!r} of importance store {out_dir} points at {target!r}, "
                "which has no scores."
            )
    return write_store(
        out_dir,
        shapes={name: tuple(t.shape) for name, t in prepared.items()},
        load=prepared.__getitem__,
        samples={name: samples[name] for name in prepared if name in samples},
        fields=dict(
            dtype=dtype_name,
            model=model,
            model_fingerprint=model_fingerprint,
            score=score,
            dataset=DatasetInfo(**dataset) if dataset is not None else None,
            aliases=dict(aliases or {}),
            metadata=metadata,
        ),
        max_shard_size=max_shard_size,
    )


def write_store(
    out_dir: str,
    *,
    shapes: Dict[str, Tuple[int, ...]],
    load: Callable[[str], torch.Tensor],
    samples: Dict[str, torch.Tensor],
    fields: Dict[str, Any],
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> str:
    """Write a format-2 store at ``out_dir`` (replacing what is there) from
    ``load(name)``, called once per name, shard by shard, returning scores
    already in ``fields["dtype"]`` and checked. The manifest is written last."""
    itemsize = SCORE_DTYPES[fields["dtype"]].itemsize
    check_replaceable(out_dir)
    with staged_directory(out_dir) as staging:
        sizes = {name: _numel(shape) * itemsize for name, shape in shapes.items()}
        files = _write_sharded(sizes, load, staging, "scores", max_shard_size)
        fingerprint_file = None
        if samples:
            save_file(
                {name: sample.contiguous() for name, sample in samples.items()},
                os.path.join(staging, FINGERPRINT_FILE),
            )
            fingerprint_file = FINGERPRINT_FILE
        referenced = set(files.values()) | ({fingerprint_file} if fingerprint_file else set())
        manifest = Manifest(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            files=files,
            shapes={name: list(shape) for name, shape in shapes.items()},
            fingerprint_file=fingerprint_file,
            checksums={f: _sha256(os.path.join(staging, f)) for f in sorted(referenced)},
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            producer=package_versions(),
            **fields,
        )
        # The manifest is written last: a folder without it is never a store.
        manifest_path = os.path.join(staging, MANIFEST_NAME)
        with open(manifest_path, "w", encoding="utf-8") as f:
            f.write(manifest.model_dump_json(indent=2, exclude={"threshold_files"}))
        # safetensors creates its files owner-only (0600); stores are meant to be
        # shared, so give them the mode the umask gave the manifest.
        mode = os.stat(manifest_path).st_mode & 0o777
        for file_name in referenced:
            os.chmod(os.path.join(staging, file_name), mode)
    forget(out_dir)  # a store pinned at this path in this process is now stale
    return out_dir


# What a store writer puts in a store folder: the manifest, the card, score
# shards (format 1 also thresholds) and the fingerprint samples.
STORE_FILE_PATTERN = re.compile(
    r"^(led_importance\.json|README\.md|fingerprint\.safetensors"
    r"|(scores|thresholds)(-\d+-of-\d+)?\.safetensors)$"
)


def check_replaceable(out_dir: str) -> None:
    """Refuse to replace anything at ``out_dir`` but an importance store: a store
    is replaced whole, so ``--overwrite`` on a model folder, a folder holding the
    source store or any other files would delete what no store writer wrote."""
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        raise StoreError(
            f"Importance store path {out_dir} is a file or a link, not a store folder; "
            "choose another path."
        )
    foreign = sorted(n for n in os.listdir(out_dir) if not STORE_FILE_PATTERN.match(n))
    if foreign:
        raise StoreError(
            f"{out_dir} is not an importance store: it holds {foreign[0]!r}"
            + (f" and {len(foreign) - 1} more entries" if len(foreign) > 1 else "")
            + ", which no store writer wrote. A store is replaced as a whole folder, so "
            "--overwrite replaces only an importance store; choose another folder."
        )


def _numel(shape: Tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _checked_scores(
    name: str,
    tensor: torch.Tensor,
    out_dir: str,
    model: Optional[str],
    ckpt_shapes: Optional[Dict[str, Tuple[int, ...]]],
    dtype_name: str,
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
    values = tensor.detach().to("cpu", torch.float32)
    check_score_values(values, where=f"the {where}")
    return rounded_scores(values, dtype_name, where=f"the {where}").contiguous()


def rounded_scores(values: torch.Tensor, dtype_name: str, *, where: str) -> torch.Tensor:
    """Checked scores in the store dtype: rounded once, to nearest even, for bfloat16."""
    target = SCORE_DTYPES[dtype_name]
    if values.dtype == target:
        return values
    rounded = values.to(target)
    if target == torch.bfloat16:
        # float32 values above bfloat16's largest finite value round to inf.
        check_score_values(rounded, where=f"{where} after rounding to bfloat16")
    return rounded


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
