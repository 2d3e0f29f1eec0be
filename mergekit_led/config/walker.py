"""The one walk over a mergekit config's inputs (``read_config`` -> ``ConfigView``),
read by every whole-config check and step.

mergekit configs name their inputs in three shapes (``models:``, ``slices:``,
``modules:`` holding either). Each input is listed with its parameters merged
in mergekit's own precedence (source > slice > module > config; see
``mergekit.config.ConfigReader.parameter_sources``) and with the base model
that applies to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from mergekit.common import ModelReference
from mergekit.config import (
    InputModelDefinition,
    InputSliceDefinition,
    MergeConfiguration,
    OutputSliceDefinition,
)

from mergekit_led.config.yaml_file import load_yaml_bounded
from mergekit_led.errors import ConfigError

# Where an input is written: an entry of a model list, or a source of an output slice.
InputDefinition = Union[InputModelDefinition, InputSliceDefinition]


@dataclass(frozen=True)
class ConfigInput:
    """One input model of a config, as one output slice or model list uses it."""

    model: ModelReference
    parameters: Dict[str, Any]  # merged: source > slice > module > config
    base: Optional[ModelReference]
    where: str  # "models", "slices[2]", "module 'x' slices[0]", ...
    # the config's own definition of this input (``prepare`` fills store paths in)
    definition: Optional[InputDefinition] = field(default=None, compare=False, repr=False)

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

    view = read_config(config)
    try:
        check_parameter_names(view)
        check_duplicate_inputs(view)
    except ConfigError as error:
        raise ConfigError(
            f"Merge config {config_file}: {error}"
        ) from None  # cause: the same error, prefixed
    return config, source


@dataclass(frozen=True)
class ParameterScope:
    """One ``parameters:`` mapping of the config as written, and where it sits."""

    where: str  # "parameters", "module 'x' models[0] (m)", "slices[1].sources[0] (m)", ...
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class InputGroup:
    """One model list or output slice: the models mergekit merges together."""

    where: str  # "models", "module 'x' slices[2]", ...
    models: Tuple[ModelReference, ...]


@dataclass(frozen=True)
class ConfigView:
    """A mergekit config walked once: everything the checks and steps read of its
    ``models:``, ``slices:`` and ``modules:``, in the config's order.

    ``read_config`` is the only code that knows the three shapes; the checks
    (``name_checks``, ``preflight``, the output-path checks), ``prepare`` and the
    card read this object instead of walking the config again.
    """

    config: MergeConfiguration
    inputs: Tuple[ConfigInput, ...]  # every input, base models included
    scopes: Tuple[ParameterScope, ...]  # every ``parameters:`` mapping
    groups: Tuple[InputGroup, ...]  # every model list and output slice
    slice_groups: Tuple[Tuple[OutputSliceDefinition, ...], ...]  # the config's and each module's

    @property
    def merge_method(self) -> str:
        return self.config.merge_method

    @property
    def fine_tuned(self) -> Tuple[ConfigInput, ...]:
        """The inputs that are not the base model of where they are used."""
        return tuple(item for item in self.inputs if not item.is_base)

    @property
    def has_base_model(self) -> bool:
        if self.config.base_model is not None:
            return True
        return any(s.base_model is not None for group in self.slice_groups for s in group)


# A config as mergekit parsed it, or its view already walked: what the checks take.
ConfigSource = Union[MergeConfiguration, ConfigView]


def read_config(config: ConfigSource) -> ConfigView:
    """The one walk over ``config``'s inputs (a ``ConfigView`` is returned as is).

    Parameters are merged in mergekit's precedence: source > slice > module >
    config. The view holds the config's own definitions, so a step that fills a
    parameter in (``prepare``) writes into the config it was read from.
    """
    if isinstance(config, ConfigView):
        return config
    inputs: List[ConfigInput] = []
    scopes: List[ParameterScope] = [ParameterScope("parameters", config.parameters or {})]
    groups: List[InputGroup] = []
    slice_groups: List[Tuple[OutputSliceDefinition, ...]] = []
    shared = dict(config.parameters or {})
    modules = [(None, None)] + [(name, module) for name, module in (config.modules or {}).items()]
    for module_name, module in modules:
        prefix = f"module {module_name!r} " if module_name is not None else ""
        if module is not None:
            scopes.append(ParameterScope(f"{prefix}parameters", module.parameters or {}))
        scope = {**shared, **((module.parameters or {}) if module else {})}
        models = module.models if module else config.models
        slices = module.slices if module else config.slices
        if models:
            groups.append(InputGroup(f"{prefix}models", tuple(m.model for m in models)))
        for index, model in enumerate(models or []):
            own = model.parameters or {}
            scopes.append(ParameterScope(f"{prefix}models[{index}] ({model.model})", own))
            inputs.append(
                ConfigInput(
                    model.model, {**scope, **own}, config.base_model, f"{prefix}models", model
                )
            )
        if slices:
            slice_groups.append(tuple(slices))
        for index, output_slice in enumerate(slices or []):
            where = f"{prefix}slices[{index}]"
            groups.append(InputGroup(where, tuple(s.model for s in output_slice.sources)))
            scopes.append(ParameterScope(f"{where} parameters", output_slice.parameters or {}))
            base = output_slice.base_model or config.base_model
            slice_scope = {**scope, **(output_slice.parameters or {})}
            for number, source in enumerate(output_slice.sources):
                own = source.parameters or {}
                scopes.append(ParameterScope(f"{where}.sources[{number}] ({source.model})", own))
                inputs.append(
                    ConfigInput(source.model, {**slice_scope, **own}, base, where, source)
                )
    return ConfigView(config, tuple(inputs), tuple(scopes), tuple(groups), tuple(slice_groups))
