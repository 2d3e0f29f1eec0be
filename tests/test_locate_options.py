"""``LocateOptions`` is the one source of locate's options: the signature of
``locate()`` and ``plan_locate()``, both CLIs' options and the config keys."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from mergekit_led.core.locate_options import (
    LOCATE_CONFIG_OPTIONS,
    RUN_OPTIONS,
    LocateOptions,
    option_fields,
    options_from,
)
from mergekit_led.location import locate, plan_locate


@pytest.mark.parametrize("function", [locate, plan_locate])
def test_the_signature_lists_every_option_with_its_default(function):
    parameters = inspect.signature(function).parameters
    for spec in dataclasses.fields(LocateOptions):
        parameter = parameters[spec.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default == spec.default
    assert "options" in parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def test_keywords_replace_the_fields_of_an_options_object():
    opts = options_from(LocateOptions(seed=3, score="wanda"), {"seed": 5}, caller="locate")
    assert (opts.seed, opts.score) == (5, "wanda")
    assert options_from(None, {}, caller="locate") == LocateOptions()
    with pytest.raises(TypeError, match="locate\\(\\) got unknown options: sead"):
        options_from(None, {"sead": 1}, caller="locate")
    with pytest.raises(TypeError, match="unknown options: sead"):
        locate("model", None, "out", sead=1)


def test_both_clis_take_their_options_from_the_fields():
    from mergekit_led.cli.locate import command as locate_command
    from mergekit_led.cli.prepare import command as prepare_command

    on_locate = {p.name: p for p in locate_command.params}
    for spec in option_fields():
        assert on_locate[spec.name].opts == ["--" + spec.name.replace("_", "-")]
        if not spec.metadata.get("flag"):
            assert on_locate[spec.name].default == spec.default
    on_prepare = {p.name for p in prepare_command.params}
    assert set(RUN_OPTIONS) <= on_prepare
    assert not (on_prepare & set(LOCATE_CONFIG_OPTIONS))  # scores come from the config


def test_the_config_keys_are_the_fields_marked_for_configs():
    marked = [f.name for f in dataclasses.fields(LocateOptions) if f.metadata["config"]]
    assert list(LOCATE_CONFIG_OPTIONS) == marked
    assert LOCATE_CONFIG_OPTIONS["max_samples"] is int
    assert LOCATE_CONFIG_OPTIONS["skip_nonfinite"] is bool
