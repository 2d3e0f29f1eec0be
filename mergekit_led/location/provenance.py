"""What a locate run records in its store's manifest: data, options, software, hardware."""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional

import torch

from mergekit_led.core.locate_options import LocateOptions
from mergekit_led.environment import package_versions
from mergekit_led.location import data as location_data
from mergekit_led.location.distributed import Distributed
from mergekit_led.location.weight_names import ScoredParameters
from mergekit_led.store import save_importance
from mergekit_led.store.store_card import write_store_card


def dataset_info(
    rows, selection: location_data.SelectedSamples, counts, data, opts
) -> Dict[str, Any]:
    fingerprint = selection.fingerprint
    used = selection.samples
    if counts["nonfinite"]:
        dropped = set(counts["nonfinite"])
        used = [s for s in used if s.index not in dropped]
        fingerprint = location_data.fingerprint_of(
            rows,
            location_data.Fields(opts.prompt_field, opts.response_field, opts.messages_field),
            selection.data_format,
            [s.index for s in used],
        )
    skipped = Counter(selection.skipped)
    skipped_indices = {k: list(v) for k, v in selection.skipped_indices.items()}
    if counts["nonfinite"]:
        skipped[location_data.SKIP_NONFINITE] += len(counts["nonfinite"])
        skipped_indices[location_data.SKIP_NONFINITE] = counts["nonfinite"]
    info: Dict[str, Any] = {
        "name": rows.name,
        "fingerprint": fingerprint,
        "samples": counts["samples"],
        "answer_tokens": counts["answer_tokens"],
        "tokens": counts["tokens"],
        "rows": len(rows.rows),
        "format": selection.data_format,
        "skipped": dict(skipped),
        "skipped_samples": {k: v[:1000] for k, v in skipped_indices.items()},
        "sample_indices": [s.index for s in used][:100000],
    }
    if isinstance(data, (str, os.PathLike)) and os.path.exists(data):
        info["path"] = os.path.abspath(data)
    if opts.split is not None:
        info["split"] = opts.split
    return info


def _device_description(dist: Distributed, opts: LocateOptions) -> Dict[str, Any]:
    description: Dict[str, Any] = {
        "device": str(dist.device),
        "world_size": dist.world_size,
        "device_map": opts.device_map,
    }
    if dist.device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(dist.device)
    return description


def save_importance_for_run(
    scores: Mapping[str, torch.Tensor],
    out: str,
    *,
    model: str,
    opts: LocateOptions,
    scored: ScoredParameters,
    dataset: Optional[Dict[str, Any]],
    details: Dict[str, Any],
    dist: Distributed,
    seconds: float,
) -> str:
    path = save_importance(
        scores,
        out,
        model=model,
        score=opts.score,
        dataset=dataset,
        aliases=scored.aliases,
        overwrite=opts.overwrite,
        dtype=opts.score_dtype,
        options=asdict(opts),
        names_verified_against_checkpoint=scored.verified,
        checkpoint_tensors_not_scored=scored.not_scored,
        weights_without_gradient=sorted(scored.no_gradient),
        weight_samples=scored.samples,
        trust_remote_code=opts.trust_remote_code,
        versions=package_versions(),
        compute=_device_description(dist, opts),
        seconds_before_writing=round(seconds, 3),
        command=" ".join(sys.argv) if sys.argv and sys.argv[0].endswith("mergekit-led") else None,
        **details,
    )
    write_store_card(path)  # README.md, so the store folder renders on the Hub
    return path
