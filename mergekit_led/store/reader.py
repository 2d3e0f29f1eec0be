"""Reading an importance store: a lazy, read-only mapping of weight name -> scores.

The thresholds files are what makes the merge fast and exact: the k-th
largest score of a weight is one element of its sorted copy, read with a
one-element slice, so electing the top ``r`` of a weight is a single comparison
instead of a selection over the whole tensor. Stores written without them (by
other tools) still merge, with an exact selection at merge time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Dict, Iterator, Optional

import torch
from safetensors import safe_open

from mergekit_led.core.election import elected_count, top_mask, top_mask_from_threshold
from mergekit_led.errors import FingerprintMismatch, StoreError
from mergekit_led.store import fingerprint
from mergekit_led.store.manifest import MANIFEST_NAME, read_manifest
from mergekit_led.store.values import check_score_values

# Weights with a vocabulary axis, whose rows mergekit may re-order.
_VOCABULARY_WEIGHTS = ("embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_out.weight")


class ImportanceStore(Mapping):
    """A lazy, read-only mapping of weight name -> float32 scores.

    Nothing but the manifest is read on open; each lookup reads one tensor from
    its shard. Thread-safe (mergekit's multi-GPU executor merges in threads).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.manifest = read_manifest(self.path)
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
        check_score_values(
            scores, where=f"weight {stored!r} (model {model}, importance store {self.path})"
        )
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
        if stored not in samples or fingerprint.matches(samples[stored], weight):
            return
        twin = next(
            (
                other
                for other, sample in samples.items()
                if other != stored
                and sample.shape == samples[stored].shape
                and self.manifest.shapes.get(other) == list(expected_shape)
                and fingerprint.matches(sample, weight)
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
