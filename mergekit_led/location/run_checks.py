"""The checks made before a locate run starts: its options against its inputs and output."""

from __future__ import annotations

import os
from typing import Any, Optional

from mergekit_led.core.locate_options import (
    CHECKPOINT_SUFFIX,
    MODEL_DTYPES,
    LocateOptions,
)
from mergekit_led.environment import DEVICE_CHOICES
from mergekit_led.errors import LocateError
from mergekit_led.location.score_kinds import score_kind


def check_options(opts: LocateOptions, data: Any, out: str, model: Optional[str] = None) -> None:
    kind = score_kind(opts.score)
    if kind.needs_data and data is None:
        raise LocateError(f"The {opts.score} score needs location data (--data).")
    if opts.base is not None and not kind.takes_base:
        raise LocateError("--base is only used by --score magnitude (|θ − θ_base|).")
    if opts.dtype not in MODEL_DTYPES:
        raise LocateError(
            f"Unknown --dtype {opts.dtype!r}; choose one of {', '.join(MODEL_DTYPES)}."
        )
    if opts.score_dtype not in ("float32", "bfloat16"):
        raise LocateError(f"Unknown --score-dtype {opts.score_dtype!r}; use float32 or bfloat16.")
    if opts.device not in DEVICE_CHOICES:
        raise LocateError(
            f"Unknown --device {opts.device!r}; choose one of {', '.join(DEVICE_CHOICES)}."
        )
    if opts.memory is not None:
        from mergekit_led.location.memory_budget import parse_memory

        parse_memory(opts.memory)  # a bad size is refused before anything runs
    if opts.checkpoint_every is not None and opts.checkpoint_every < 1:
        raise LocateError(f"--checkpoint-every must be at least 1, not {opts.checkpoint_every}.")
    _check_out_is_not_an_input(model, opts, data, out)
    if os.path.exists(out) and not opts.overwrite:
        raise LocateError(f"Importance store {out} already exists; pass --overwrite to replace it.")
    from mergekit_led.errors import StoreError
    from mergekit_led.store.writer import check_replaceable

    try:
        check_replaceable(out)  # before the scoring, not when the store is written
    except StoreError as error:
        raise LocateError(str(error)) from None  # cause: the same message, as a LocateError
    checkpoint = out + CHECKPOINT_SUFFIX
    if os.path.exists(checkpoint) and not opts.resume:
        raise LocateError(
            f"A locate checkpoint exists at {checkpoint}; pass --resume to continue "
            "from it, or delete it to start over."
        )


def _check_out_is_not_an_input(
    model: Optional[str], opts: LocateOptions, data: Any, out: str
) -> None:
    """The store (replaced whole by --overwrite) must not be, hold or sit inside
    the model, its base, the tokenizer or the data."""
    real_out = os.path.realpath(out)
    inputs = (
        ("model", model),
        ("data", data),
        ("base model", opts.base),
        ("tokenizer", opts.tokenizer),
    )
    for role, path in inputs:
        if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
            continue
        real_input = os.path.realpath(path)
        for folder, inner in ((real_out, real_input), (real_input, real_out)):
            if os.path.commonpath([folder, inner]) == folder:
                raise LocateError(
                    f"Importance store path {out} overlaps the {role} {real_input}: a store "
                    "is written (and replaced with --overwrite) as a whole folder. Choose "
                    "an --out outside it."
                )
