"""What makes two sweep runs the same sweep: ``sweep.json``'s identity.

A resumed sweep keeps the rows an earlier run wrote, so it must prove it would
have written the same rows: the same config, grid, evaluation spec and rule,
the same options that change a row (the seed, the device, the batch size, the
tokenization check), the same evaluation prompts (a digest of the rows as
loaded, so an edited file or a moved Hub dataset counts), the same location
data (a digest of each ``importance_data`` file or folder) and the same models
(the fingerprint the store cache keys stores by: sampled weights, shapes and
the files that change scores; a Hub model's commit). Each part is recorded
separately, so a refused resume names the part that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional

from pydantic import BaseModel, ConfigDict

from mergekit_led.core.parameters import DATA_PARAMETER
from mergekit_led.errors import ConfigError, SweepError

# The sections in the order a changed one is named; each maps to words.
_SECTIONS = {
    "config": "the config",
    "settings": "the grid's settings",
    "eval": "the evaluation spec",
    "rule": "the selection rule",
    "options": "an option",
    "eval_data": "the evaluation data",
    "location_data": "the location data (importance_data)",
    "models": "a model's weights or files",
}


class SweepIdentity(BaseModel):
    """Everything a row depends on, by part."""

    model_config = ConfigDict(extra="forbid")

    config: Dict[str, Any]
    settings: List[Dict[str, Any]]
    eval: Dict[str, Any]
    rule: Dict[str, Any]
    options: Dict[str, Any]  # seed, device, batch_size, allow_bad_tokenization
    eval_data: Dict[str, str]  # set name -> digest of its rows as loaded
    location_data: Dict[str, str]  # model -> digest of its importance_data
    models: Dict[str, str]  # model -> its fingerprint (base included)

    def as_json(self) -> Dict[str, Any]:
        # through JSON: tuples become lists, as they read back from sweep.json
        return json.loads(json.dumps(self.model_dump(), sort_keys=True, default=str))

    def digest(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def what_changed(old: Mapping[str, Any], new: SweepIdentity) -> Optional[str]:
    """Words naming the first part of ``new`` that differs from ``old`` (an
    earlier run's identity, from ``sweep.json``); None when they agree."""
    now = new.as_json()
    for section, words in _SECTIONS.items():
        before, after = old.get(section), now[section]
        if before == after:
            continue
        if isinstance(before, dict) and section in (
            "options",
            "eval_data",
            "location_data",
            "models",
        ):
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    return _named(section, name, before.get(name), after.get(name))
        return f"{words} changed"
    return None


def _named(section: str, name: str, before: Any, after: Any) -> str:
    if section == "options":
        return f"--{name.replace('_', '-')} is {after!r}, the earlier run had {before!r}"
    if section == "eval_data":
        return f"the rows of evaluation set {name} changed"
    if section == "location_data":
        return f"the importance_data of model {name} changed"
    return f"model {name} changed (its weights or files)"


def eval_data_digests(sets) -> Dict[str, str]:
    """``{set name: sha256 of its rows}`` of an ``Evaluator``'s loaded sets: the
    prompts and references as evaluated, wherever they came from."""
    digests = {}
    for prepared in sets:
        digest = hashlib.sha256()
        for item in prepared.set.items:
            digest.update(json.dumps([item.index, item.prompt, item.reference]).encode())
            digest.update(b"\n")
        digests[prepared.set.name] = "sha256:" + digest.hexdigest()
    return digests


def location_data_digests(config: Mapping[str, Any]) -> Dict[str, str]:
    """``{model: digest}`` of each model's ``importance_data``: a local file or
    folder by its content, a Hub dataset by its name."""
    digests = {}
    for entry in config.get("models") or []:
        data = (entry.get("parameters") or {}).get(DATA_PARAMETER)
        if data is None:
            data = (config.get("parameters") or {}).get(DATA_PARAMETER)
        if isinstance(data, str):
            digests[str(entry["model"])] = _path_digest(data)
    return digests


def _path_digest(data: str) -> str:
    from mergekit_led.prepare.cache import file_sha256

    if os.path.isfile(data):
        return file_sha256(data)
    if os.path.isdir(data):  # a save_to_disk folder: every file, by name and content
        digest = hashlib.sha256()
        for root, folders, files in os.walk(data):
            folders.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                digest.update(f"{os.path.relpath(path, data)}\0{file_sha256(path)}\n".encode())
        return "sha256:" + digest.hexdigest()
    return f"name:{data}"


def model_fingerprints(config: Mapping[str, Any], trust_remote_code: bool) -> Dict[str, str]:
    """``{model: fingerprint}`` of the base and every model, as the store cache
    identifies them (``prepare.models.resolve_model``)."""
    from mergekit_led.prepare.models import resolve_model

    names = [config["base_model"], *(entry["model"] for entry in config.get("models") or [])]
    fingerprints = {}
    for name in dict.fromkeys(str(n) for n in names):
        try:
            model = resolve_model(name, trust_remote_code=trust_remote_code)
        except ConfigError:  # a LoRA reference: the cache cannot fingerprint it
            fingerprints[name] = f"reference:{name}"
            continue
        fingerprints[name] = f"{model.identity} {model.files_digest or ''}".strip()
    return fingerprints


def check_same_sweep(path: str, old: Mapping[str, Any], new: SweepIdentity) -> None:
    """Refuse to resume into ``path``'s folder when ``old`` (its ``sweep.json``)
    is another sweep's, naming what changed."""
    identity = old.get("identity")
    changed = what_changed(identity, new) if isinstance(identity, dict) else None
    if isinstance(identity, dict) and changed is None and old.get("digest") == new.digest():
        return
    why = changed or "it was written by an earlier version, which recorded less"
    raise SweepError(
        f"{os.path.dirname(path)} holds another sweep ({path}): {why}; its rows would mix "
        "with this run's. Sweep into another folder to keep both."
    )
