"""Converting a store to another dtype or to the current format (``mergekit-led store convert``)."""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from mergekit_led.errors import StoreError
from mergekit_led.store.reader import ImportanceStore
from mergekit_led.store.values import check_score_values
from mergekit_led.store.writer import (
    DEFAULT_MAX_SHARD_SIZE,
    check_replaceable,
    rounded_scores,
    score_dtype_name,
    write_store,
)

# Manifest fields the writer sets itself.
_WRITTEN_FIELDS = {
    "format",
    "format_version",
    "dtype",
    "files",
    "shapes",
    "threshold_files",
    "fingerprint_file",
    "checksums",
    "created",
    "producer",
}


def convert_store(
    source: str,
    out: str,
    *,
    dtype: Optional[Union[str, torch.dtype]] = None,
    overwrite: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> str:
    """Write the store at ``source`` to ``out`` as a current-format store.

    ``dtype`` (default: the source's) is ``float32`` or ``bfloat16``; float32 to
    bfloat16 rounds each score once, to nearest even; bfloat16 to float32 is
    exact. A format-1 store's sorted copies are dropped. Model, fingerprint,
    dataset, aliases and metadata are kept; the manifest's ``metadata`` gains
    ``converted_from``. ``out`` may be ``source`` itself (with ``overwrite``):
    the source is read at the version opened here and replaced at the end.
    Returns ``out``.
    """
    store = ImportanceStore(source)
    target = score_dtype_name(dtype if dtype is not None else store.manifest.dtype)
    out = os.path.abspath(os.fspath(out))
    real_out, real_source = os.path.realpath(out), os.path.realpath(store.path)
    if real_out != real_source and os.path.commonpath([real_out, real_source]) in (
        real_out,
        real_source,
    ):
        relation = "holds" if os.path.commonpath([real_out, real_source]) == real_out else "is in"
        raise StoreError(
            f"{out} {relation} the source store {store.path}: a store is written (and "
            "replaced) as a whole folder, so converting there would write over its input. "
            "Choose another output folder (or the source itself, with --overwrite)."
        )
    if os.path.exists(out) and not overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it.")
    check_replaceable(out)

    def load(name: str) -> torch.Tensor:
        values = store.scores(name)
        where = f"weight {name!r} of importance store {store.path}"
        check_score_values(values, where=where)
        return rounded_scores(values.to(torch.float32), target, where=where)

    manifest = store.manifest
    fields = {
        key: value for key, value in manifest.model_dump().items() if key not in _WRITTEN_FIELDS
    }
    fields["dtype"] = target
    fields["metadata"] = dict(
        manifest.metadata,
        converted_from={
            "path": store.path,
            "format_version": manifest.format_version,
            "dtype": manifest.dtype,
            "created": manifest.created,
        },
    )
    return write_store(
        out,
        shapes={name: tuple(shape) for name, shape in manifest.shapes.items()},
        load=load,
        samples=store.fingerprint_samples(),
        fields=fields,
        max_shard_size=max_shard_size,
    )
