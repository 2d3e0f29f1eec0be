"""The manifest of an importance store (``led_importance.json``): its schema and reader.

Layout of a store folder (``LED_SPEC.md`` section 5)::

    led_importance.json                 manifest (format, model, fingerprint, dataset, files)
    scores.safetensors                  float32 scores, named and shaped like the weights
    thresholds.safetensors              each score tensor sorted in descending order
    fingerprint.safetensors             a few sampled values of each scored weight

Large stores are sharded like checkpoints (``scores-00001-of-00004.safetensors``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from mergekit_led._version import __version__
from mergekit_led.errors import StoreError

FORMAT_NAME = "mergekit-led-importance"
FORMAT_VERSION = 1
MANIFEST_NAME = "led_importance.json"
FINGERPRINT_FILE = "fingerprint.safetensors"


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


def read_manifest(path: str) -> Manifest:
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
