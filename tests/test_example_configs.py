"""The shipped example configs parse as mergekit configs and name everything LED needs."""

from pathlib import Path

import pytest
import yaml
from mergekit.config import MergeConfiguration

from mergekit_led.errors import StoreError
from mergekit_led.config.preflight import preflight

CONFIGS = sorted((Path(__file__).parents[1] / "example_configs").glob("*.yml"))


def test_there_are_example_configs():
    names = {path.name for path in CONFIGS}
    assert {
        "led-llama3-safety-math.yml",
        "led-llama3-safety-code.yml",
        "led-llama3-safety-math-code.yml",
        "led-mistral-safety-math.yml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_a_complete_led_config(path, tmp_path, monkeypatch):
    config = MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))
    assert config.merge_method == "led_merging"
    assert config.base_model is not None
    assert config.models and len(config.models) >= 2
    for model in config.models:
        parameters = model.parameters
        assert 0 < parameters["density"] <= 1
        assert parameters["importance"].startswith("scores/")
        assert parameters["base_importance"].startswith("scores/")
    # Everything but the (not yet computed) stores checks out: preflight gets as
    # far as opening the first store, relative to the working directory.
    monkeypatch.chdir(tmp_path)
    first_store = config.models[0].parameters["importance"]
    with pytest.raises(StoreError, match=f"{first_store}.* does not exist"):
        preflight(config)
