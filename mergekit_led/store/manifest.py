"""The manifest of an importance store (``led_importance.json``): its schema and reader.

Layout of a store folder, format version 2 (``docs/store.md``)::

    led_importance.json       manifest (format, dtype, model, fingerprint, dataset, files)
    scores.safetensors        scores (float32 or bfloat16), named and shaped like the weights
    fingerprint.safetensors   a few sampled values of each scored weight

Large stores are sharded like checkpoints (``scores-00001-of-00004.safetensors``).
Format version 1 stores also hold ``thresholds.safetensors`` (each score tensor
sorted in descending order); they are still read, and the sorted copies are
never trusted (see ``ImportanceStore.top_mask``).

A manifest is untrusted input: ``read_manifest`` refuses file entries that are
not plain file names in the store, shapes that do not match the files entries,
aliases to nothing, and unknown dtypes, each with a message naming the store.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from mergekit_led._version import __version__
from mergekit_led.errors import StoreError
from mergekit_led.store.files import FileIdentity, check_file_name, open_in_store

FORMAT_NAME = "mergekit-led-importance"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "led_importance.json"
FINGERPRINT_FILE = "fingerprint.safetensors"
SCORE_DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_MAX_MANIFEST = 256 * 1024 * 1024
_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")


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
    dtype: str = "float32"  # of every scores tensor; format 1 is always float32
    model: Optional[str] = None
    model_fingerprint: Optional[str] = None
    score: str
    dataset: Optional[DatasetInfo] = None
    files: Dict[str, str]
    shapes: Dict[str, List[int]]
    threshold_files: Dict[str, str] = {}  # format 1 only: sorted copies, never trusted
    fingerprint_file: Optional[str] = None
    aliases: Dict[str, str] = {}
    checksums: Dict[str, str] = {}  # file name -> "sha256:<hex>" of its bytes (format 2)
    created: Optional[str] = None
    producer: Dict[str, str] = {}
    metadata: Dict[str, Any] = {}

    @property
    def torch_dtype(self) -> torch.dtype:
        return SCORE_DTYPES[self.dtype]

    def referenced_files(self) -> Dict[str, str]:
        """Every file the manifest names -> its role (for messages)."""
        roles: Dict[str, str] = {}
        for file_name in self.files.values():
            roles.setdefault(file_name, "scores file")
        for file_name in self.threshold_files.values():
            roles.setdefault(file_name, "thresholds file")
        if self.fingerprint_file:
            roles.setdefault(self.fingerprint_file, "fingerprint file")
        return roles


def read_manifest(path: str) -> Manifest:
    """The validated manifest of the store at ``path``."""
    return read_manifest_pinned(path)[0]


def read_manifest_pinned(path: str) -> Tuple[Manifest, FileIdentity]:
    """The validated manifest and the identity of the manifest file that was read."""
    if not os.path.exists(path):
        raise StoreError(f"Importance store {path} does not exist.")
    if not os.path.isdir(path):
        raise StoreError(
            f"Importance store {path} is not a folder (a store is a folder "
            f"holding {MANIFEST_NAME} and *.safetensors files)."
        )
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.lexists(manifest_path):
        raise StoreError(
            f"Importance store {path} has no manifest {MANIFEST_NAME}; it is not a "
            "store, or its writing did not finish."
        )
    with os.fdopen(open_in_store(path, MANIFEST_NAME, role="manifest"), "rb") as f:
        status = os.fstat(f.fileno())
        if status.st_size > _MAX_MANIFEST:
            raise StoreError(
                f"Manifest {manifest_path} is implausibly large ({status.st_size} bytes)."
            )
        text = f.read()
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StoreError(f"Cannot read manifest {manifest_path}: {error}") from error
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise StoreError(
            f"Manifest {manifest_path} has unknown format {found!r}; expected {FORMAT_NAME!r}."
        )
    if raw.get("format_version") not in READABLE_VERSIONS:
        raise StoreError(
            f"Manifest {manifest_path} has format version "
            f"{raw.get('format_version')!r}; this mergekit-led ({__version__}) reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}."
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        raise StoreError(f"Manifest {manifest_path} is malformed: {error}") from error
    check_manifest(manifest, path)
    return manifest, FileIdentity.of(status)


def check_manifest(manifest: Manifest, path: str) -> None:
    """Refuse what a valid writer never produces; every message names the store."""
    where = f"Manifest of importance store {path}"
    if manifest.dtype not in SCORE_DTYPES:
        raise StoreError(
            f"{where} declares score dtype {manifest.dtype!r}; stores hold "
            f"{' or '.join(SCORE_DTYPES)} scores."
        )
    if manifest.format_version == 1 and manifest.dtype != "float32":
        raise StoreError(f"{where}: format version 1 stores hold float32 scores only.")
    if manifest.format_version >= 2 and manifest.threshold_files:
        raise StoreError(
            f"{where}: format version {manifest.format_version} stores have no "
            "threshold_files (sorted copies were dropped with format 1)."
        )
    if not manifest.files:
        raise StoreError(f"{where} lists no scores files.")
    for name, file_name in manifest.files.items():
        check_file_name(file_name, store=path, role=f"the files entry of weight {name!r}")
    for name, file_name in manifest.threshold_files.items():
        check_file_name(file_name, store=path, role=f"the threshold_files entry of {name!r}")
        if name not in manifest.files:
            raise StoreError(f"{where} has a thresholds entry for {name!r}, which has no scores.")
    if manifest.fingerprint_file is not None:
        check_file_name(manifest.fingerprint_file, store=path, role="fingerprint_file")
    if set(manifest.shapes) != set(manifest.files):
        odd = sorted(set(manifest.shapes) ^ set(manifest.files))[:3]
        raise StoreError(
            f"{where}: 'shapes' and 'files' list different weights (e.g. {', '.join(odd)})."
        )
    for name, shape in manifest.shapes.items():
        if any(isinstance(d, bool) or d < 0 for d in shape):
            raise StoreError(f"{where} gives weight {name!r} the invalid shape {shape}.")
    for alias, target in manifest.aliases.items():
        if target not in manifest.files:
            raise StoreError(f"{where}: alias {alias!r} points at {target!r}, which has no scores.")
    referenced = manifest.referenced_files()
    for file_name, checksum in manifest.checksums.items():
        if file_name not in referenced:
            raise StoreError(f"{where} has a checksum for {file_name!r}, a file it does not use.")
        if not isinstance(checksum, str) or not _CHECKSUM.match(checksum):
            raise StoreError(f"{where} has a malformed checksum for {file_name}: {checksum!r}.")
