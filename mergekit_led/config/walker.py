"""The one walk over a mergekit config's inputs, shared by every whole-config check.

mergekit configs name their inputs in three shapes (``models:``, ``slices:``,
``modules:`` holding either). Each input is yielded with its parameters merged
in mergekit's own precedence (source > slice > module > config; see
``mergekit.config.ConfigReader.parameter_sources``) and with the base model
that applies to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration, OutputSliceDefinition

from mergekit_led.config.yaml_file import load_yaml_bounded
from mergekit_led.errors import ConfigError


@dataclass(frozen=True)
class ConfigInput:
    """One input model of a config, as one output slice or model list uses it."""

    model: ModelReference
    parameters: Dict[str, Any]  # merged: source > slice > module > config
    base: Optional[ModelReference]
    where: str  # "models", "slices[2]", "module 'x' slices[0]", ...

    @property
    def label(self) -> str:
        return str(self.model)

    @property
    def is_base(self) -> bool:
        return self.base is not None and self.model == self.base


def load_config(config_file: str) -> tuple[MergeConfiguration, str]:
    """Read and validate a mergekit YAML config; returns it and its source text."""
    try:
        # A FIFO or device would block or never end: only regular files are read.
        if os.path.exists(config_file) and not os.path.isfile(config_file):
            raise ConfigError(
                f"Merge config {config_file} is not a regular file (a folder, FIFO, socket "
                "or device); give the path of a YAML file."
            )
        with open(config_file, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise ConfigError(
            f"Cannot read merge config {config_file}: {error.strerror or error}"
        ) from error
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"Merge config {config_file} is not UTF-8 text: line {line} ({error.reason}). "
            "Save it as UTF-8."
        ) from error
    try:
        data = load_yaml_bounded(source, what=f"Merge config {config_file}")
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"Invalid merge config {config_file}: {error}") from error
    try:
        config = MergeConfiguration.model_validate(data)
    except Exception as error:
        raise ConfigError(f"Invalid merge config {config_file}: {error}") from error
    from mergekit_led.config.name_checks import check_duplicate_inputs, check_parameter_names

    try:
        check_parameter_names(config)
        check_duplicate_inputs(config)
    except ConfigError as error:
        raise ConfigError(
            f"Merge config {config_file}: {error}"
        ) from None  # cause: the same error, prefixed
    return config, source


def slice_groups(config: MergeConfiguration) -> List[Sequence[OutputSliceDefinition]]:
    """Every list of output slices: the config's own and each module's."""
    groups: List[Sequence[OutputSliceDefinition]] = []
    if config.slices:
        groups.append(config.slices)
    for module in (config.modules or {}).values():
        if module.slices:
            groups.append(module.slices)
    return groups


def config_inputs(config: MergeConfiguration) -> Iterator[ConfigInput]:
    """Every input of every model list and output slice, base models included."""
    shared = dict(config.parameters or {})
    modules = [(None, None)] + [(name, module) for name, module in (config.modules or {}).items()]
    for module_name, module in modules:
        prefix = f"module {module_name!r} " if module_name is not None else ""
        scope = {**shared, **((module.parameters or {}) if module else {})}
        models = module.models if module else config.models
        slices = module.slices if module else config.slices
        for model in models or []:
            yield ConfigInput(
                model.model,
                {**scope, **(model.parameters or {})},
                config.base_model,
                f"{prefix}models",
            )
        for index, output_slice in enumerate(slices or []):
            base = output_slice.base_model or config.base_model
            slice_scope = {**scope, **(output_slice.parameters or {})}
            for source in output_slice.sources:
                yield ConfigInput(
                    source.model,
                    {**slice_scope, **(source.parameters or {})},
                    base,
                    f"{prefix}slices[{index}]",
                )


def has_base_model(config: MergeConfiguration) -> bool:
    if config.base_model is not None:
        return True
    return any(s.base_model is not None for group in slice_groups(config) for s in group)
