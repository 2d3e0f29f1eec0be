"""Issue 29: every YAML the package reads (merge configs, GRID.yml, EVAL.yml)
goes through one loader, which refuses a key given twice in one mapping, with
the key and its lines (PyYAML keeps the last silently)."""

from __future__ import annotations

import pytest

from mergekit_led.errors import ConfigError, EvalError, SweepError

from .support import run_cli


def test_a_second_led_merging_block_in_a_grid_is_refused(tmp_path):
    """main: the second `led_merging:` replaced the first (2 settings swept, not 4)."""
    from mergekit_led.sweep import load_grid

    grid = tmp_path / "grid.yml"
    grid.write_text(
        "led_merging:\n  density: [0.1, 0.2]\n"
        "task_arithmetic:\n  weight: [1.0]\n"
        "led_merging:\n  density: [0.3, 0.4]\n"
    )
    with pytest.raises(SweepError) as error:
        load_grid(str(grid), ["a/m1", "a/m2"])
    message = str(error.value)
    assert "\n" not in message
    assert f"Grid {grid} line 5: key 'led_merging' is given twice (first on line 1)" in message


def test_a_second_harmful_set_in_eval_yml_is_refused(tmp_path):
    """main: the second `harmful:` replaced the first, benign prompts were scored as harmful."""
    from mergekit_led.evaluation import load_eval_spec

    spec = tmp_path / "EVAL.yml"
    spec.write_text(
        "harmful:\n  data: harmful.jsonl\nbenign:\n  data: benign.jsonl\nharmful:\n"
        "  data: benign.jsonl\n"
    )
    with pytest.raises(
        EvalError, match=r"line 5: key 'harmful' is given twice \(first on line 1\)"
    ):
        load_eval_spec(str(spec))


def test_a_key_twice_in_a_merge_config_is_a_one_line_error(tmp_path, llama_family):
    config = tmp_path / "c.yml"
    config.write_text(
        f"merge_method: task_arithmetic\nbase_model: {llama_family.base}\n"
        f"models:\n  - model: {llama_family.finetunes[0]}\n"
        "    parameters: {weight: 1.0, weight: 0.1}\n"
        "dtype: float32\n"
    )
    result = run_cli("merge", config, tmp_path / "out")
    result.assert_one_line_error(
        "line 5: key 'weight' is given twice (first on line 5)", str(config)
    )
    assert not (tmp_path / "out").exists()


def test_merge_keys_still_override_and_nested_duplicates_are_found():
    from mergekit_led.config.yaml_file import load_yaml_bounded

    # `<<: *base` then an explicit key: YAML's own override, allowed
    text = "base: &b {density: 0.1, weight: 1}\nmodel:\n  <<: *b\n  density: 0.5\n"
    assert load_yaml_bounded(text, what="c")["model"] == {"density": 0.5, "weight": 1}
    assert load_yaml_bounded("a: [1, 1]\nb: {x: 1}\n", what="c") == {"a": [1, 1], "b": {"x": 1}}
    with pytest.raises(
        ConfigError, match=r"^Doc line 4: key 'x' is given twice \(first on line 3\)"
    ):
        load_yaml_bounded("a:\n  b:\n    x: 1\n    x: 2\n", what="Doc")
    # keys equal as YAML values (1 and 0x1 are both the int 1) are the same key
    with pytest.raises(ConfigError, match="key 1 is given twice"):
        load_yaml_bounded("1: a\n0x1: b\n", what="Doc")


def test_every_yaml_read_of_the_package_goes_through_the_one_loader():
    """No module parses YAML on its own (yaml.load/safe_load/SafeLoader/full_load)."""
    import pathlib

    import mergekit_led

    root = pathlib.Path(mergekit_led.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "yaml_file.py":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in (
            "yaml.safe_load",
            "yaml.load",
            "yaml.full_load",
            "SafeLoader",
            "yaml.Loader",
        ):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []
