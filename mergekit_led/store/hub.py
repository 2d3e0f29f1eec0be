"""Importance stores (and models to score) on the Hugging Face Hub.

A store is named like a mergekit model: ``org/repo`` or ``org/repo@revision``,
plus an optional folder inside the repo, ``org/repo/safety/instruct@v1``
(one repo can hold the stores of a whole merge). A name that exists as a local
path is always that path. Downloads go through ``huggingface_hub`` and its
cache, so ``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE``/``HF_HOME`` and the token
(``HF_TOKEN`` or ``hf auth login``) work as everywhere else.

Nothing here imports above the store layer, so the merge method itself can
open Hub stores.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

from mergekit_led.errors import StoreError
from mergekit_led.store import ImportanceStore, load_importance

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubReference:
    """``repo_id[/subfolder][@revision]``, split."""

    repo_id: str
    subfolder: Optional[str] = None
    revision: Optional[str] = None

    def __str__(self) -> str:
        text = self.repo_id + (f"/{self.subfolder}" if self.subfolder else "")
        return text + (f"@{self.revision}" if self.revision else "")


def parse_hub_reference(value: str) -> Optional[HubReference]:
    """The Hub reference ``value`` names, or ``None`` when it cannot name one
    (an absolute or explicitly relative path, more than one ``@``, ...)."""
    if not isinstance(value, str) or value.startswith(("/", ".", "~")) or "\\" in value:
        return None
    if value.count("@") > 1:
        return None
    path, _, revision = value.partition("@")
    parts = path.split("/")
    if len(parts) < 2 or not all(_NAME.match(part) for part in parts):
        return None
    if any(part in (".", "..") for part in parts) or (value.count("@") and not revision):
        return None
    return HubReference("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (huggingface_hub's span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def snapshot(
    repo_id: str,
    revision: Optional[str],
    allow_patterns: Optional[Sequence[str]],
    *,
    what: str,
) -> str:
    """The local folder of a Hub repo snapshot, downloaded into the Hub cache
    when needed; ``what`` names the thing wanted in the error."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=list(allow_patterns or []) or None
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        at = f" at revision {revision}" if revision else ""
        raise StoreError(
            f"{what} cannot be fetched from the Hugging Face Hub (repo {repo_id}{at}): "
            f"{one_line(error)}"
        ) from error


def commit_of(snapshot_folder: str) -> str:
    """The commit hash of a snapshot folder of the Hub cache (``.../snapshots/<commit>``)."""
    return os.path.basename(os.path.normpath(snapshot_folder))


@lru_cache(maxsize=256)
def store_path(value: str) -> str:
    """The local folder of store ``value``: itself when it exists, else the
    folder of its Hub snapshot (downloaded once per process and revision)."""
    value = os.fspath(value)
    if os.path.exists(value):
        return value
    reference = parse_hub_reference(value)
    if reference is None:
        return value  # load_importance says precisely what is wrong with the path
    patterns = [f"{reference.subfolder}/*"] if reference.subfolder else None
    folder = snapshot(
        reference.repo_id,
        reference.revision,
        patterns,
        what=f"Importance store {value} does not exist as a local folder and",
    )
    path = os.path.join(folder, reference.subfolder) if reference.subfolder else folder
    if not os.path.isdir(path):
        raise StoreError(
            f"Importance store {value}: the Hub repo {reference.repo_id} (commit "
            f"{commit_of(folder)}) has no folder {reference.subfolder!r}."
        )
    return path


def open_store(value: str) -> ImportanceStore:
    """``load_importance`` for a local path or a Hub store reference."""
    return load_importance(store_path(value))
