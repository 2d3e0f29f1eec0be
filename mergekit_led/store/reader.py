"""Reading an importance store: a lazy, read-only mapping of weight name -> scores.

A store is untrusted input. Opening one validates the manifest and every file it
names (plain file names inside the store, regular files, safetensors headers
that agree with the manifest's names, shapes and dtype) and records each file's
identity: every score read afterwards comes from the version that was opened,
or fails naming the store, file and weight (``files.PinnedFile``).

The threshold of a weight is selected exactly from its scores at merge time;
no derived file (format 1's sorted copies) can change a mask.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Dict, Iterator, Optional

import torch

from mergekit_led.core.kth_largest import top_mask
from mergekit_led.errors import FingerprintMismatch, ScoreDomainError, StoreError
from mergekit_led.store import fingerprint
from mergekit_led.store.files import FileIdentity, PinnedFile
from mergekit_led.store.manifest import MANIFEST_NAME, read_manifest_pinned
from mergekit_led.store.values import check_score_values, score_value_error

# Weights with a vocabulary axis, whose rows mergekit may re-order.
_VOCABULARY_WEIGHTS = ("embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_out.weight")


class ImportanceStore(Mapping):
    """A lazy, read-only mapping of weight name -> scores (float32 or bfloat16,
    the store's ``dtype``), pinned to the version of the store that was opened.

    Opening reads and validates the manifest and every file's header, never the
    score data; each lookup reads one tensor, from the version that was opened
    (or fails). Thread-safe (mergekit's multi-GPU executor merges in threads).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))
        self.manifest, self._manifest_identity = read_manifest_pinned(self.path)
        self._lock = threading.Lock()
        self._samples: Optional[Dict[str, torch.Tensor]] = None
        self._files: Dict[str, PinnedFile] = {
            file_name: PinnedFile(self.path, file_name, role=role)
            for file_name, role in self.manifest.referenced_files().items()
        }
        self._check_headers()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of every score tensor in this store."""
        return self.manifest.torch_dtype

    # Mapping interface -----------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        stored = self.resolve(name)
        if stored is None:
            raise KeyError(name)
        return self._read(stored)

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
        tensor = self._read(stored, model=model)
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
        # The scores do not outlive this call: read them into the thread's scratch.
        scores = self._read(stored, model=model, transient=True)
        if device is not None:
            scores = scores.to(device)
        # Always selected from the scores themselves: format 1's sorted copies
        # are derived data that a rewritten scores file would leave stale. The
        # value check rides along the selection's pass over the scores.
        try:
            return top_mask(scores, ratio, validate=True)
        except ScoreDomainError as error:
            where = f"weight {stored!r} (model {model}, importance store {self.path})"
            check_score_values(scores, where=where)  # the message with the offending value
            raise score_value_error(
                error, where=where
            ) from None  # cause: its text is in the message

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

    def _read(
        self, stored: str, *, model: Optional[str] = None, transient: bool = False
    ) -> torch.Tensor:
        pinned = self._files[self.manifest.files[stored]]
        weight = stored if model is None else f"{stored} (model {model})"
        return pinned.read(stored, weight=weight, transient=transient)

    def _check_headers(self) -> None:
        """Every file's tensors agree with the manifest: names, shapes, dtypes."""
        expected_dtype = self.manifest.torch_dtype
        by_file: Dict[str, Dict[str, tuple]] = {}
        for name, file_name in self.manifest.files.items():
            by_file.setdefault(file_name, {})[name] = tuple(self.manifest.shapes[name])
        for file_name, expected in by_file.items():
            self._check_file(file_name, expected, expected_dtype)
        by_file = {}
        for name, file_name in self.manifest.threshold_files.items():
            numel = 1
            for d in self.manifest.shapes[name]:
                numel *= d
            by_file.setdefault(file_name, {})[name] = (numel,)
        for file_name, expected in by_file.items():
            self._check_file(file_name, expected, torch.float32)
        if self.manifest.fingerprint_file:
            pinned = self._files[self.manifest.fingerprint_file]
            for name, entry in pinned.tensors.items():
                if (
                    name not in self.manifest.files
                    or entry.dtype != torch.float64
                    or len(entry.shape) != 1
                ):
                    raise StoreError(
                        f"The {pinned.where} holds {name!r} ({entry.dtype}, shape "
                        f"{entry.shape}); it may only hold 1-D float64 samples of the "
                        "scored weights."
                    )

    def _check_file(self, file_name: str, expected: Dict[str, tuple], dtype: torch.dtype) -> None:
        pinned = self._files[file_name]
        missing = [name for name in expected if name not in pinned.tensors]
        if missing:
            raise StoreError(
                f"The {pinned.where} holds no tensor {missing[0]!r}, which the manifest "
                f"places there ({len(missing)} missing)."
            )
        extra = [name for name in pinned.tensors if name not in expected]
        if extra:
            raise StoreError(
                f"The {pinned.where} holds tensor {extra[0]!r}, which the manifest does "
                f"not place there ({len(extra)} unlisted)."
            )
        for name, shape in expected.items():
            entry = pinned.tensors[name]
            if entry.shape != shape:
                raise StoreError(
                    f"The {pinned.where} holds {name!r} with shape {entry.shape}; the "
                    f"manifest says {shape}."
                )
            if entry.dtype != dtype:
                raise StoreError(
                    f"The {pinned.where} holds {name!r} in {entry.dtype}; the manifest "
                    f"says {dtype}."
                )

    def change_on_disk(self) -> Optional[str]:
        """How the files at this store's path differ from the opened version (or None)."""
        pinned = {MANIFEST_NAME: self._manifest_identity}
        pinned.update({name: f.identity for name, f in self._files.items()})
        for file_name, identity in pinned.items():
            try:
                now = FileIdentity.of(os.stat(os.path.join(self.path, file_name)))
            except OSError:
                return f"{file_name} is gone"
            difference = identity.difference(now)
            if difference is not None:
                return f"{file_name}: {difference}"
        return None

    def file_size(self, file_name: str) -> int:
        """Bytes of one of the store's files, as opened."""
        return self._files[file_name].identity.size

    def file_sha256(self, file_name: str) -> str:
        """``sha256:<hex>`` of one of the store's files, as opened."""
        return self._files[file_name].sha256()

    def fingerprint_samples(self) -> Dict[str, torch.Tensor]:
        """The stored fingerprint sample of each weight (empty without a fingerprint file)."""
        return dict(self._fingerprint_samples())

    def _fingerprint_samples(self) -> Dict[str, torch.Tensor]:
        with self._lock:
            if self._samples is None:
                samples: Dict[str, torch.Tensor] = {}
                if self.manifest.fingerprint_file:
                    pinned = self._files[self.manifest.fingerprint_file]
                    samples = {name: pinned.read(name) for name in pinned.tensors}
                self._samples = samples
            return self._samples


# Stores opened through ``load_importance``, by absolute path: one version per
# path for the life of the process, so a merge (which looks its stores up once
# per weight) reads each store at one version from start to end.
_open_lock = threading.Lock()
_open_stores: Dict[str, ImportanceStore] = {}


def load_importance(path: str, *, reopen: bool = False) -> ImportanceStore:
    """Open an importance store: a lazy read-only mapping of weight name -> scores.

    The first call for a path opens and validates the store and pins it; later
    calls return the same object while the store on disk is unchanged, and
    raise ``StoreError`` naming the store when it changed (a merge must not mix
    two versions). ``reopen=True`` opens the current version instead (for a
    long-lived process that knows the store was rewritten on purpose; stores
    written by ``save_importance`` in this process are reopened automatically).
    """
    path = os.path.abspath(os.fspath(path))
    with _open_lock:
        store = _open_stores.get(path)
        if store is not None and not reopen:
            change = store.change_on_disk()
            if change is None:
                return store
            raise StoreError(
                f"Importance store {path} changed on disk after this process opened it "
                f"({change}). A merge reads every store at one version from start to "
                "end; run it again on the finished store (in Python, "
                "load_importance(path, reopen=True) opens the new version)."
            )
        store = ImportanceStore(path)
        _open_stores[path] = store
        return store


def forget(path: str) -> None:
    """Drop the pinned store at ``path`` (its writer just replaced it)."""
    with _open_lock:
        _open_stores.pop(os.path.abspath(os.fspath(path)), None)
