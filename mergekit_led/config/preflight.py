"""Checks of a whole ``led_merging`` config before any tensor is merged.

The merge method itself checks every weight as mergekit hands it over (store,
shape, fingerprint), but only once execution reaches that weight. ``mergekit-led
merge`` runs these checks first, so a bad config fails in seconds with one clear
message instead of after part of the merge.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from mergekit.common import ModelReference
from mergekit.config import InputSliceDefinition

from mergekit_led.config.walker import ConfigSource, ConfigView, read_config
from mergekit_led.core.parameters import (
    BASE_REQUIRED,
    METHOD_NAME,
    STORE_PARAMETERS,
    check_density,
    is_scalar,
    number_leaves,
    parse_election,
    parse_number,
    require_parameters,
)
from mergekit_led.errors import ConfigError, FingerprintMismatch
from mergekit_led.store import ImportanceStore, fingerprint, load_importance


def preflight(config: ConfigSource) -> None:
    """Raise ``ConfigError``/``StoreError`` for anything that would make the merge
    wrong or fail; do nothing for configs of other merge methods."""
    view = read_config(config)
    config = view.config
    if config.merge_method != METHOD_NAME:
        return
    if not view.has_base_model:
        raise ConfigError(f"{BASE_REQUIRED}.")
    if config.tokenizer_source is not None or config.tokenizer is not None:
        raise ConfigError(
            "led_merging cannot merge with `tokenizer_source`/`tokenizer`: vocabulary "
            "alignment re-indexes embedding and output rows, and the importance "
            "scores of those rows were computed in the original token order. Remove "
            "the tokenizer setting (the models must share one tokenizer)."
        )
    _check_slice_positions(view)
    shared = config.parameters or {}
    if is_scalar(shared.get("election")):
        parse_election(shared["election"])
    disjoint = shared.get("disjoint", True)
    if is_scalar(disjoint) and not isinstance(disjoint, bool):
        raise ConfigError(f"`disjoint` must be true or false, got {disjoint!r}.")

    checked_models: Dict[Tuple[str, str], None] = {}
    for item in view.fine_tuned:
        parameters = item.parameters
        require_parameters(parameters, model=item.label)
        _check_numbers(parameters, item.label, item.where)
        for key, scored in zip(STORE_PARAMETERS, (item.model, item.base)):
            if is_scalar(parameters[key]):
                store = load_importance(parameters[key])
                _check_fingerprint(store, scored, checked_models)


def _check_numbers(parameters, model: str, where: str) -> None:
    """Every density and weight value (scalars, gradient points, filtered values)
    is a finite number, densities in (0, 1]: before mergekit coerces them."""
    label = f"{model} (in {where})"
    for value in number_leaves(parameters["density"]):
        density = parse_number(value, parameter="density", model=label)
        check_density(density, model=label, weight="*")
    for value in number_leaves(parameters.get("weight", 1.0)):
        parse_number(value, parameter="weight", model=label)


def _check_slice_positions(view: ConfigView) -> None:
    """Scores are looked up by the output weight's name, so a source layer must
    sit at its own index in the output."""
    for slices in view.slice_groups:
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
    if key in checked or not fingerprint.is_local_checkpoint(path):
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
        _DIGESTS[path] = fingerprint.digest(
            fingerprint.checkpoint_samples(path), fingerprint.checkpoint_shapes(path)
        )
    return _DIGESTS[path]
