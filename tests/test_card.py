"""The LED-Merging section of the merged model's card."""

import os

import pytest
import yaml
from click.testing import CliRunner

from mergekit_led import save_importance
from mergekit_led.analysis.model_card import END, START, add_led_section
from mergekit_led.config.walker import load_config
from mergekit_led.testing import build_family, synthetic_scores


@pytest.fixture(scope="module")
def family_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    family = build_family(
        str(root / "family"), finetunes=2, seed=3, hidden=16, layers=2, vocab=96, heads=2
    )
    from mergekit_led.store.fingerprint import checkpoint_shapes

    shapes = checkpoint_shapes(family.base)
    models = []
    for index, path in enumerate(family.finetunes):
        stores = {}
        for role, scored in (("model", path), ("base", family.base)):
            stores[role] = save_importance(
                synthetic_scores(shapes, seed=10 * index + len(role)),
                str(root / "scores" / f"task{index}" / role),
                model=scored,
                score="snip",
                dataset={
                    "name": f"task{index}.jsonl",
                    "fingerprint": "abc123",
                    "samples": 7,
                    "answer_tokens": 42,
                },
            )
        models.append(
            {
                "model": path,
                "parameters": {
                    "weight": [1.0, 0.5][index],
                    "density": [0.1, 0.4][index],
                    "importance": stores["model"],
                    "base_importance": stores["base"],
                },
            }
        )
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "models": models,
        "dtype": "float32",
    }
    config_path = root / "led.yml"
    config_path.write_text(yaml.safe_dump(config))
    return root, str(config_path), family


def _check_section(text, family, config_path):
    assert text.count(START) == 1 and text.count(END) == 1
    assert "## LED-Merging" in text
    assert "https://arxiv.org/abs/2502.16770" in text
    config, _ = load_config(config_path)
    for model in config.models:
        assert f"`{model.model}`" in text
        assert f"`{model.parameters['importance']}`" in text
        assert f"`{model.parameters['base_importance']}`" in text
    assert "| 0.1 |" in text and "| 0.4 |" in text and "| 0.5 |" in text  # densities / weight
    assert "`task0.jsonl`" in text and "`task1.jsonl`" in text
    assert "| 7 | 42 |" in text  # samples, answer tokens
    assert "snip" in text
    assert "| layer 0 |" in text and "| layer 1 |" in text and "**all weights**" in text
    assert "embed_tokens" in text and "lm_head" in text


def test_merge_writes_section(family_config, tmp_path):
    from mergekit.options import MergeOptions

    from mergekit_led.merge import merge_config

    root, config_path, family = family_config
    config, source = load_config(config_path)
    out = merge_config(
        config,
        str(tmp_path / "merged"),
        options=MergeOptions(copy_tokenizer=True, lazy_unpickle=False, quiet=True),
        config_source=source,
    )
    text = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "mergekit" in text.split(START)[0]  # mergekit's own card is kept above
    _check_section(text, family, config_path)


def test_shares_match_analysis(family_config, tmp_path):
    from mergekit_led.analysis.config_analysis import analyze_config

    root, config_path, family = family_config
    config, _ = load_config(config_path)
    analysis = analyze_config(config)
    total = analysis.overall()
    # with disjoint, shares of the models and of the base add up to 1
    assert sum(total.kept) <= total.numel
    out = tmp_path / "plain"
    out.mkdir()
    (out / "README.md").write_text("# merged\n\nsome card\n")
    add_led_section(config, str(out), analysis)
    text = (out / "README.md").read_text()
    assert text.startswith("# merged\n\nsome card\n")
    assert f"{total.share(0):.2%}" in text and f"{total.share(1):.2%}" in text
    base_share = 1 - sum(total.kept) / total.numel
    assert f"{base_share:.2%}" in text
    # adding it again replaces the section
    add_led_section(config, str(out), analysis)
    assert (out / "README.md").read_text() == text


def test_card_command(family_config, tmp_path):
    from mergekit_led.cli import main

    root, config_path, family = family_config
    out = tmp_path / "from_mergekit_yaml"
    out.mkdir()
    result = CliRunner().invoke(main, ["card", config_path, str(out)])
    assert result.exit_code == 0, result.output
    _check_section((out / "README.md").read_text(), family, config_path)

    missing = CliRunner().invoke(main, ["card", config_path, str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "not a folder" in missing.output
