"""The models of a config, resolved to a local folder and an identity for the cache key.

A local checkpoint is identified by the fingerprint its stores record
(``store.fingerprint``: names, shapes and sampled values of every weight, read
from the files mergekit merges, which must be the ones transformers loads) and
by a hash of the other files that change its scores (``config.json``, remote
code: ``fingerprint.scoring_files_digest``); a Hub model by its repo id and the commit its revision resolves to, so a moved
branch gets new stores and a pinned commit never recomputes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

from mergekit.common import ModelReference

from mergekit_led.errors import ConfigError, LEDError, LocateError
from mergekit_led.store import fingerprint
from mergekit_led.store.hub import commit_of, one_line, parse_hub_reference, snapshot

# What scoring needs besides the weights: configs, tokenizer files, chat templates.
METADATA_PATTERNS = ("*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken")
WEIGHT_PATTERNS = (("*.safetensors",), ("*.bin",))


@dataclass(frozen=True)
class ResolvedModel:
    label: str  # as the config names it
    path: str  # a local folder: the checkpoint, or the Hub snapshot
    identity: str  # the cache key's share: "sha256:..." or "hub:org/repo@<commit>"
    repo_id: Optional[str] = None  # Hub models only
    commit: Optional[str] = None
    # Local checkpoints: the hash of config.json and remote code, which change the
    # scores as much as the weights do (a Hub commit covers them already).
    files_digest: Optional[str] = None

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None


def model_reference(model: Union[ModelReference, str, object]) -> ModelReference:
    if isinstance(model, ModelReference):
        return model
    if isinstance(model, (str, os.PathLike)):
        return ModelReference.parse(os.fspath(model))
    raise ConfigError(
        f"Model {model!r} is not a model path or Hub id; importance_data needs the models "
        "of a mergekit config."
    )


def resolve_model(
    model: Union[ModelReference, str], *, trust_remote_code: bool = False
) -> ResolvedModel:
    """A config's model as a local folder with its identity (Hub models: their
    configs and tokenizer files only; ``with_weights`` fetches the rest)."""
    reference = model_reference(model)
    label = str(reference)
    if reference.lora is not None:
        raise ConfigError(
            f"Model {label} is a LoRA adapter applied to a model; importance_data cannot "
            "score it. Merge the adapter into a checkpoint first (e.g. with "
            "`mergekit-yaml` and merge_method passthrough) and name that checkpoint."
        )
    path, revision = reference.model.path, reference.model.revision
    if os.path.exists(path):
        if revision:
            raise ConfigError(
                f"Model {label}: {path} is a local folder, which has no revision "
                f"{revision!r}; remove @{revision}."
            )
        return ResolvedModel(
            label,
            os.path.abspath(path),
            local_identity(label, path),
            files_digest=local_files_digest(label, path),
        )
    hub = parse_hub_reference(path)
    if hub is None or hub.subfolder is not None:
        raise LocateError(f"Model {label} cannot be loaded: no such folder, and not a Hub repo id.")
    patterns = METADATA_PATTERNS + (("*.py",) if trust_remote_code else ())
    try:
        folder = snapshot(hub.repo_id, revision, patterns, what=f"Model {label}")
    except LEDError as error:
        raise LocateError(f"{error}") from None  # cause: the same message, as a LocateError
    commit = commit_of(folder)
    return ResolvedModel(label, folder, f"hub:{hub.repo_id}@{commit}", hub.repo_id, commit)


def with_weights(model: ResolvedModel) -> ResolvedModel:
    """The model with its weights present locally (Hub models are fetched at the
    commit their identity names)."""
    if not model.is_hub or fingerprint.is_local_checkpoint(model.path):
        return model
    for patterns in WEIGHT_PATTERNS:
        try:
            folder = snapshot(
                model.repo_id,
                model.commit,
                METADATA_PATTERNS + patterns,
                what=f"Model {model.label}",
            )
        except LEDError as error:
            raise LocateError(f"{error}") from None  # cause: the same message, as a LocateError
        if fingerprint.is_local_checkpoint(folder):
            return ResolvedModel(model.label, folder, model.identity, model.repo_id, model.commit)
    raise LocateError(
        f"Model {model.label} cannot be loaded: the Hub repo {model.repo_id} (commit "
        f"{model.commit}) has no model.safetensors or pytorch_model.bin weights."
    )


_IDENTITIES: Dict[Tuple[str, Tuple[Tuple[str, int, int, int, int], ...]], str] = {}
_IDENTITY_LOCK = threading.Lock()


def local_files_digest(label: str, path: str) -> str:
    try:
        return fingerprint.scoring_files_digest(path)
    except OSError as error:
        raise LocateError(
            f"Model {label} cannot be loaded from {path}: {error.strerror or error}"
        ) from error


def local_identity(label: str, path: str) -> str:
    if not fingerprint.is_local_checkpoint(path):
        raise LocateError(
            f"Model {label} cannot be loaded: {path} holds no checkpoint (no "
            "model.safetensors, model.safetensors.index.json, pytorch_model.bin or its index)."
        )
    path = os.path.abspath(path)
    # A checkpoint rewritten in place gets a new size or time, hence a new fingerprint;
    # the inode and ctime also catch a copy that keeps the size and mtime (`cp -p`).
    stamp = tuple(
        (name, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        for name, status in sorted((e.name, e.stat()) for e in os.scandir(path) if e.is_file())
    )
    with _IDENTITY_LOCK:
        known = _IDENTITIES.get((path, stamp))
    if known is not None:
        return known
    try:
        identity = fingerprint.digest(
            fingerprint.checkpoint_samples(path), fingerprint.checkpoint_shapes(path)
        )
    except Exception as error:  # safetensors, torch and mergekit raise many types here
        raise LocateError(
            f"Model {label} cannot be loaded from {path}: {one_line(error)}"
        ) from error
    with _IDENTITY_LOCK:
        _IDENTITIES[(path, stamp)] = identity
    return identity
