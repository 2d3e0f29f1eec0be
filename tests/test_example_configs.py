"""The shipped example configs parse as mergekit configs and name everything LED needs:
store paths, or (the ``-data`` variants) each task's location data and valid locate options."""

from pathlib import Path

import pytest
import yaml
from mergekit.config import MergeConfiguration

from mergekit_led.config.preflight import preflight
from mergekit_led.config.walker import read_config
from mergekit_led.errors import ConfigError, StoreError
from mergekit_led.prepare.config_options import locate_options_from

CONFIGS = sorted((Path(__file__).parents[1] / "example_configs").glob("*.yml"))
STORE_CONFIGS = [path for path in CONFIGS if not path.stem.endswith("-data")]
DATA_CONFIGS = [path for path in CONFIGS if path.stem.endswith("-data")]


def load(path: Path) -> MergeConfiguration:
    return MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))


def test_there_are_example_configs():
    names = {path.name for path in CONFIGS}
    setups = {
        "led-llama3-safety-math",
        "led-llama3-safety-code",
        "led-llama3-safety-math-code",
        "led-mistral-safety-math",
    }
    assert {f"{name}.yml" for name in setups} <= names
    assert {f"{name}-data.yml" for name in setups} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_an_led_config(path):
    config = load(path)
    assert config.merge_method == "led_merging"
    assert config.base_model is not None
    assert config.models and len(config.models) >= 2
    for model in config.models:
        assert 0 < model.parameters["density"] <= 1


@pytest.mark.parametrize("path", STORE_CONFIGS, ids=lambda p: p.name)
def test_store_config_names_both_stores(path, tmp_path, monkeypatch):
    config = load(path)
    for model in config.models:
        assert model.parameters["importance"].startswith("scores/")
        assert model.parameters["base_importance"].startswith("scores/")
    # Everything but the (not yet computed) stores checks out: preflight gets as
    # far as opening the first store, relative to the working directory.
    monkeypatch.chdir(tmp_path)
    first_store = config.models[0].parameters["importance"]
    with pytest.raises(StoreError, match=f"{first_store}.* does not exist"):
        preflight(config)


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_config_names_task_data_and_valid_locate_options(path):
    config = load(path)
    assert f"mergekit-led merge example_configs/{path.name} merged/" in path.read_text()
    for item in read_config(config).inputs:
        if item.is_base:
            continue
        assert "importance" not in item.parameters and "base_importance" not in item.parameters
        assert item.parameters["importance_data"].startswith("data/")
        locate_options_from(item.parameters, model=item.label)  # names, types and values
    # the same setup as its store-path twin: models, densities, weights, election
    twin = load(path.with_name(path.name.replace("-data.yml", ".yml")))
    assert config.base_model == twin.base_model and config.dtype == twin.dtype
    assert [m.model for m in config.models] == [m.model for m in twin.models]
    for mine, theirs in zip(config.models, twin.models):
        for key in ("density", "weight"):
            assert mine.parameters[key] == theirs.parameters[key]
    shared = {k: v for k, v in config.parameters.items() if not k.startswith("locate_")}
    assert shared == twin.parameters
    # whoever merges without computing the stores is told how
    with pytest.raises(ConfigError, match=r"importance_data.*mergekit-led merge CONFIG OUT"):
        preflight(config)


def test_example_sweep_grid_and_eval_spec_fit_their_config():
    from mergekit_led.evaluation import load_eval_spec
    from mergekit_led.sweep import load_grid, setting_config
    from mergekit_led.sweep.sweeper import model_names

    folder = Path(__file__).parents[1] / "example_configs"
    config = yaml.safe_load((folder / "led-llama3-safety-math-code-data.yml").read_text())
    settings = load_grid(
        str(folder / "sweep" / "grid-llama3-safety-math-code.yml"), model_names(config)
    )
    assert len(settings) == 17 and sum(s.method == "led_merging" for s in settings) == 9
    for setting in settings:
        MergeConfiguration.model_validate(setting_config(config, setting))
    spec = load_eval_spec(str(folder / "sweep" / "eval-safety-math-code.yml"))
    assert spec.harmful and spec.benign and set(spec.tasks) == {"math", "code"}
