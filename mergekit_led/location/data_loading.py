"""Location data read into rows: a JSONL/JSON/CSV/Parquet file, a ``save_to_disk``
folder, a Hugging Face Hub dataset, a ``datasets.Dataset`` or a list of dicts.

``load_rows`` is the I/O of location data; ``location.data`` reads the rows it
returns as (prompt, answer) pairs and tokenises them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

from mergekit_led.console import datasets_bars_off
from mergekit_led.errors import LocateError

FILE_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


@dataclass
class LocationRows:
    """The raw rows of a location dataset and where they came from."""

    rows: Any  # a datasets.Dataset or a list of dicts: indexable, len(), rows are dicts
    name: str  # the path or hub name as given, or a description of in-memory data
    columns: List[str]


def load_rows(data: Any, *, split: Optional[str] = None) -> LocationRows:
    """Rows of a JSONL/JSON/CSV/Parquet file, a ``save_to_disk`` folder, a hub
    dataset, a ``datasets.Dataset`` or a list of dicts."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        return _from_dataset(
            _pick_split(data, split, "the given DatasetDict"), "<in-memory DatasetDict>"
        )
    if isinstance(data, datasets.Dataset):
        return _from_dataset(data, "<in-memory datasets.Dataset>")
    if isinstance(data, (list, tuple)):
        rows = list(data)
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        if bad is not None:
            raise LocateError(
                f"In-memory location data must be a list of dicts; sample {bad} is a "
                f"{type(rows[bad]).__name__}."
            )
        columns = sorted({key for row in rows for key in row})
        return _checked_not_empty(LocationRows(rows, "<in-memory list>", columns))
    if not isinstance(data, (str, os.PathLike)):
        raise LocateError(
            f"Location data must be a path, a hub dataset name, a datasets.Dataset or "
            f"a list of dicts, not {type(data).__name__}."
        )
    name = os.fspath(data)
    if os.path.isdir(name):
        return _from_dataset(_load_from_disk(name, split), name)
    if os.path.isfile(name):
        return _from_dataset(_load_file(name), name)
    if os.path.exists(name):  # a FIFO, socket or device: reading it may never end
        raise LocateError(
            f"Location data {name} is not a regular file or folder (a FIFO, socket or "
            "device); give a data file or a save_to_disk folder."
        )
    if _looks_like_a_path(name):
        raise LocateError(f"Location data file {name} does not exist.")
    return _from_dataset(_load_hub(name, split), name)


def _looks_like_a_path(name: str) -> bool:
    extension = os.path.splitext(name)[1].lower()
    # Hub names are "name" or "owner/name"; anything else path-like is a path.
    return (
        extension in FILE_BUILDERS
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def _load_file(path: str):
    import datasets

    extension = os.path.splitext(path)[1].lower()
    builder = FILE_BUILDERS.get(extension)
    if builder is None:
        raise LocateError(
            f"Location data file {path} has an unknown extension {extension!r}; "
            f"use one of {', '.join(sorted(FILE_BUILDERS))}, or a datasets save_to_disk folder."
        )
    if os.path.getsize(path) == 0:
        raise LocateError(f"Location data file {path} is empty (no samples).")
    if builder in ("json", "csv"):
        _check_utf8(path)
    try:
        with datasets_bars_off():
            return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as error:  # the datasets library raises many types here
        raise LocateError(f"Cannot read location data file {path}: {error}") from error


def _check_utf8(path: str) -> None:
    """Refuse a text file that is not UTF-8, naming the line (the json and csv
    readers would fail later with no line, or in the middle of the run)."""
    decoder_error = None
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                decoder_error = (number, error)
                break
    if decoder_error is not None:
        number, error = decoder_error
        raise LocateError(
            f"Location data file {path} is not UTF-8 text: line {number}, byte "
            f"{error.start + 1} ({error.reason}). Save it as UTF-8."
        )


def _load_from_disk(path: str, split: Optional[str]):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as error:
        raise LocateError(
            f"Cannot read location data folder {path} (expected a datasets "
            f"save_to_disk folder): {error}"
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(loaded, split, f"location data folder {path}")
    return loaded


def _load_hub(name: str, split: Optional[str]):
    import datasets

    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as error:
        raise LocateError(
            f"Cannot load location dataset {name!r} (split {split or 'train'!r}) from the "
            f"Hugging Face Hub, and no file or folder of that name exists: {error}"
        ) from error


def _pick_split(dataset_dict, split: Optional[str], where: str):
    wanted = split or "train"
    if wanted not in dataset_dict:
        raise LocateError(
            f"The {where} has no split {wanted!r}; its splits are "
            f"{', '.join(sorted(dataset_dict))}. Pass --split."
        )
    return dataset_dict[wanted]


def _from_dataset(dataset, name: str) -> LocationRows:
    return _checked_not_empty(LocationRows(dataset, name, list(dataset.column_names)))


def _checked_not_empty(rows: LocationRows) -> LocationRows:
    if len(rows.rows) == 0:
        raise LocateError(f"Location data {rows.name} is empty (no samples).")
    return rows
