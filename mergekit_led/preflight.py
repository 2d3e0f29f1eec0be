"""Checks of a whole ``led_merging`` config before any tensor is merged.

The merge method itself checks every weight as mergekit hands it over (store,
shape, fingerprint), but only once execution reaches that weight. ``mergekit-led
merge`` runs these checks first, so a bad config fails in seconds with one clear
message instead of after part of the merge.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

from mergekit.common import ModelReference
from mergekit.config import InputSliceDefinition, MergeConfiguration

from mergekit_led import fingerprint as fp
from mergekit_led.errors import ConfigError, FingerprintMismatch
from mergekit_led.led_merging import METHOD_NAME, check_density, parse_election
from mergekit_led.store import ImportanceStore, load_importance

STORE_PARAMETERS = ("importance", "base_importance")


def preflight(config: MergeConfiguration) -> None:
    """Raise ``ConfigError``/``StoreError`` for anything that would make the merge
    wrong or fail; do nothing for configs of other merge methods."""
    if config.merge_method != METHOD_NAME:
        return
    if config.base_model is None and not _slice_bases(config):
        raise ConfigError(
            "led_merging requires a base model: set `base_model:` to the model the "
            "fine-tuned models were trained from."
        )
    if config.tokenizer_source is not None or config.tokenizer is not None:
        raise ConfigError(
            "led_merging cannot merge with `tokenizer_source`/`tokenizer`: vocabulary "
            "alignment re-indexes embedding and output rows, and the importance "
            "scores of those rows were computed in the original token order. Remove "
            "the tokenizer setting (the models must share one tokenizer)."
        )
    _check_slice_positions(config)
    shared = config.parameters or {}
    if _is_scalar(shared.get("election")):
        parse_election(shared["election"])

    checked_models: Dict[Tuple[str, str], None] = {}
    for model, parameters, base in _inputs(config):
        if model == base:
            continue
        label = str(model)
        merged = {**shared, **(parameters or {})}
        for required in ("density", *STORE_PARAMETERS):
            if required not in merged:
                raise ConfigError(
                    f"Model {label} has no `{required}` parameter; led_merging needs "
                    "density, importance and base_importance for every fine-tuned model."
                )
        if _is_scalar(merged["density"]):
            check_density(float(merged["density"]), model=label, weight="*")
        if _is_scalar(merged["importance"]):
            store = load_importance(merged["importance"])
            _check_fingerprint(store, model, checked_models)
        if _is_scalar(merged["base_importance"]):
            store = load_importance(merged["base_importance"])
            _check_fingerprint(store, base, checked_models)


def _is_scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool))


def _slice_bases(config: MergeConfiguration) -> List[ModelReference]:
    return [s.base_model for s in _all_slices(config) if s.base_model is not None]


def _all_slices(config: MergeConfiguration):
    if config.slices:
        yield from config.slices
    for module in (config.modules or {}).values():
        yield from module.slices or []


def _inputs(
    config: MergeConfiguration,
) -> Iterator[Tuple[ModelReference, Optional[dict], Optional[ModelReference]]]:
    for model in config.models or []:
        yield model.model, model.parameters, config.base_model
    for module in (config.modules or {}).values():
        for model in module.models or []:
            yield model.model, model.parameters, config.base_model
    for output_slice in _all_slices(config):
        base = output_slice.base_model or config.base_model
        for source in output_slice.sources:
            merged = {**(output_slice.parameters or {}), **(source.parameters or {})}
            yield source.model, merged, base


def _check_slice_positions(config: MergeConfiguration) -> None:
    """Scores are looked up by the output weight's name, so a source layer must
    sit at its own index in the output."""
    groups: List[List] = []
    if config.slices:
        groups.append(config.slices)
    for module in (config.modules or {}).values():
        if module.slices:
            groups.append(module.slices)
    for slices in groups:
        position = 0
        for output_slice in slices:
            for source in output_slice.sources:
                _check_source(source, position)
            start, end = output_slice.sources[0].layer_range
            position += end - start


def _check_source(source: InputSliceDefinition, position: int) -> None:
    start, end = source.layer_range
    if start != position:
        raise ConfigError(
            f"Slice source {source.model} layer_range [{start}, {end}] lands at "
            f"output layers [{position}, {position + end - start}]: led_merging "
            "reads each weight's scores under its output name, so it would use "
            "another layer's scores. Keep every source layer at its own position "
            "(layer_range starting where the slice starts in the output)."
        )


def _check_fingerprint(
    store: ImportanceStore,
    model: Optional[ModelReference],
    checked: Dict[Tuple[str, str], None],
) -> None:
    recorded = store.manifest.model_fingerprint
    if model is None or recorded is None or model.lora is not None:
        return
    path = model.model.path
    key = (store.path, path)
    if key in checked or not fp.is_local_checkpoint(path):
        return
    checked[key] = None
    actual = _checkpoint_digest(path)
    if actual != recorded:
        raise FingerprintMismatch(
            f"Importance store {store.path} was computed on model "
            f"{store.manifest.model} (fingerprint {recorded}), but it is configured "
            f"for model {path} (fingerprint {actual}). Point it at the store "
            "computed for this model, or recompute it with `mergekit-led locate`."
        )


_DIGESTS: Dict[str, str] = {}


def _checkpoint_digest(path: str) -> str:
    if path not in _DIGESTS:
        _DIGESTS[path] = fp.digest(
            fp.checkpoint_samples(path), fp.checkpoint_shapes(path)
        )
    return _DIGESTS[path]
