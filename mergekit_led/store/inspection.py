"""What a store holds and whether it is sound (``mergekit-led store info|verify``)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from mergekit_led.errors import StoreError
from mergekit_led.store import fingerprint
from mergekit_led.store.manifest import MANIFEST_NAME
from mergekit_led.store.reader import ImportanceStore
from mergekit_led.store.values import check_score_values

# log10 decades a float32 score can fall in: 1e-45 (subnormal) .. 3.4e38
_LOWEST_DECADE = -46
_DECADES = 86


@dataclass
class ScoreHistogram:
    """Counts of every score of a store, by kind and by power of ten."""

    elements: int = 0
    zeros: int = 0
    negative: int = 0
    nonfinite: int = 0
    min_positive: Optional[float] = None
    max: Optional[float] = None
    total: float = 0.0  # sum of the finite scores
    decades: Dict[int, int] = field(default_factory=dict)  # floor(log10 s) -> count, s > 0

    @property
    def mean(self) -> Optional[float]:
        finite = self.elements - self.nonfinite
        return self.total / finite if finite else None

    def add(self, scores: torch.Tensor) -> None:
        values = scores.reshape(-1).to(torch.float32)
        self.elements += values.numel()
        finite = torch.isfinite(values)
        self.nonfinite += values.numel() - int(torch.count_nonzero(finite))
        values = values[finite]
        if not values.numel():
            return
        self.zeros += int(torch.count_nonzero(values == 0))
        self.negative += int(torch.count_nonzero(values < 0))
        self.total += float(values.to(torch.float64).sum())
        high = float(values.max())
        self.max = high if self.max is None else max(self.max, high)
        positive = values[values > 0]
        if not positive.numel():
            return
        low = float(positive.min())
        self.min_positive = low if self.min_positive is None else min(self.min_positive, low)
        decade = torch.floor(torch.log10(positive.to(torch.float64))).to(torch.int64)
        bins = (decade - _LOWEST_DECADE).clamp(0, _DECADES - 1)
        counts = torch.bincount(bins, minlength=_DECADES)
        for index in torch.nonzero(counts).reshape(-1).tolist():
            key = index + _LOWEST_DECADE
            self.decades[key] = self.decades.get(key, 0) + int(counts[index])


@dataclass
class StoreInfo:
    path: str
    format_version: int
    dtype: str
    model: Optional[str]
    model_fingerprint: Optional[str]
    score: str
    dataset: Optional[Dict[str, Any]]
    weights: int  # score tensors
    elements: int  # scores
    aliases: Dict[str, str]
    files: Dict[str, int]  # every file of the store (manifest included) -> bytes
    created: Optional[str]
    histogram: Optional[ScoreHistogram] = None

    @property
    def size_on_disk(self) -> int:
        return sum(self.files.values())

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["size_on_disk"] = self.size_on_disk
        if self.histogram is not None:
            data["histogram"]["mean"] = self.histogram.mean
        data["bytes_per_score"] = self.size_on_disk / self.elements if self.elements else None
        return data


def store_info(
    path: str, *, scan: bool = True, progress: Optional[Callable[[str], None]] = None
) -> StoreInfo:
    """What the store at ``path`` holds; with ``scan``, every score is read for the
    histogram."""
    store = ImportanceStore(path)
    manifest = store.manifest
    files = {MANIFEST_NAME: os.path.getsize(os.path.join(store.path, MANIFEST_NAME))}
    files.update({name: store.file_size(name) for name in manifest.referenced_files()})
    info = StoreInfo(
        path=store.path,
        format_version=manifest.format_version,
        dtype=manifest.dtype,
        model=manifest.model,
        model_fingerprint=manifest.model_fingerprint,
        score=manifest.score,
        dataset=manifest.dataset.model_dump() if manifest.dataset else None,
        weights=len(manifest.files),
        elements=sum(math.prod(shape) for shape in manifest.shapes.values()),
        aliases=dict(manifest.aliases),
        files=files,
        created=manifest.created,
    )
    if scan:
        info.histogram = ScoreHistogram()
        for name in manifest.files:
            if progress:
                progress(name)
            info.histogram.add(store.scores(name))
    return info


@dataclass
class Verification:
    path: str
    problems: List[str] = field(default_factory=list)  # one line each
    notes: List[str] = field(default_factory=list)
    weights_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(
    path: str,
    *,
    model: Optional[str] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Verification:
    """Every check a store can get: its files against the manifest (on open), the
    checksums, every tensor readable, finite and non-negative, and, with ``model``
    (a local checkpoint), names, shapes and fingerprint against that checkpoint."""
    report = Verification(os.path.abspath(path))
    try:
        store = ImportanceStore(path)
    except StoreError as error:
        report.problems.append(str(error))
        return report
    _verify_checksums(store, report)
    for name in store.manifest.files:
        if progress:
            progress(name)
        try:
            check_score_values(
                store.scores(name), where=f"weight {name!r} of importance store {store.path}"
            )
        except StoreError as error:
            report.problems.append(str(error))
        report.weights_checked += 1
    if model is not None:
        _verify_against_model(store, model, report)
    return report


def _verify_checksums(store: ImportanceStore, report: Verification) -> None:
    checksums = store.manifest.checksums
    if not checksums:
        report.notes.append("no checksums recorded (written before format 2 or by another tool)")
    for file_name in store.manifest.referenced_files():
        expected = checksums.get(file_name)
        if expected is None:
            continue
        actual = store.file_sha256(file_name)
        if actual != expected:
            report.problems.append(
                f"{file_name} of importance store {store.path} has checksum {actual[:23]}…, "
                f"the manifest records {expected[:23]}…: the file changed after it was written."
            )


def _verify_against_model(store: ImportanceStore, model: str, report: Verification) -> None:
    if not fingerprint.is_local_checkpoint(model):
        report.problems.append(
            f"--model {model} is not a local checkpoint folder (model.safetensors, "
            "pytorch_model.bin or their index)."
        )
        return
    manifest = store.manifest
    shapes = fingerprint.checkpoint_shapes(model)
    for name, shape in manifest.shapes.items():
        if name not in shapes:
            report.problems.append(
                f"Weight {name!r} of importance store {store.path} is not a tensor of {model}."
            )
        elif tuple(shapes[name]) != tuple(shape):
            report.problems.append(
                f"Weight {name!r}: the store holds scores of shape {tuple(shape)}, {model} "
                f"has shape {tuple(shapes[name])}."
            )
    covered = set(manifest.files) | set(manifest.aliases)
    unscored = sorted(name for name in shapes if name not in covered)
    if unscored:
        report.problems.append(
            f"{len(unscored)} tensors of {model} have no scores in importance store "
            f"{store.path} (e.g. {unscored[0]!r}); a merge stops at the first of them."
        )
    samples = fingerprint.checkpoint_samples(model)
    if manifest.model_fingerprint is None:
        report.notes.append("no model fingerprint recorded; checked names and shapes only")
    elif fingerprint.digest(samples, shapes) != manifest.model_fingerprint:
        stored = store.fingerprint_samples()
        differing = [
            name
            for name, sample in stored.items()
            if name in samples and not torch.equal(sample, samples[name])
        ]
        detail = f" (e.g. weight {differing[0]!r}; {len(differing)} differ)" if differing else ""
        report.problems.append(
            f"Importance store {store.path} was computed on model {manifest.model} "
            f"(fingerprint {manifest.model_fingerprint}); {model} has other weights{detail}."
        )
