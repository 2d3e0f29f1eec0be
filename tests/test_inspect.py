"""``mergekit-led inspect`` and ``mergekit_led.analysis`` against hand-computed counts."""

import json
import os
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from mergekit_led import save_importance
from mergekit_led.analysis.config_analysis import analyze_config
from mergekit_led.config.walker import load_config
from mergekit_led.core.elect_merge import disjoint
from mergekit_led.core.statistics import aggregate, jaccard, layer_of, weight_stats, weight_type
from mergekit_led.errors import ConfigError

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.0.mlp.up_proj.weight"
Q1 = "model.layers.1.self_attn.q_proj.weight"
EMB = "model.embed_tokens.weight"


def _t(values, shape=(2, 4)):
    return torch.as_tensor(values, dtype=torch.float32).reshape(shape).clone()


@pytest.fixture
def stores(tmp_path):
    """Two fine-tuned models A and B (density 0.5) with hand-made scores.

    Base scores are all 1 (every element ties, so top(base, r) is everything
    with a positive score) except where noted, so N_i = top(I_i, 0.5) there.
    """
    ones = torch.ones(8)
    a = {
        Q: _t([8, 7, 6, 5, 4, 3, 2, 1]),  # N_A = {0,1,2,3}
        UP: _t([1, 2, 3, 4, 5, 6, 7, 8]),  # N_A = {4,5,6,7}
        Q1: _t([1, 1, 1, 1, 0, 0, 0, 0]),  # ties at the threshold: N_A = {0,1,2,3}
        EMB: _t([6, 5, 4, 3, 2, 1], (3, 2)),  # N_A = {0,1,2}
    }
    b = {
        Q: _t([8, 1, 7, 2, 6, 3, 5, 4]),  # top 4 = {0,2,4,6}
        UP: _t([1, 2, 3, 4, 5, 6, 7, 8]),  # same as A
        Q1: _t([0, 0, 0, 0, 1, 2, 3, 4]),  # {4,5,6,7}
        EMB: _t([1, 2, 3, 4, 5, 6], (3, 2)),  # {3,4,5}
    }
    base_a = {Q: _t(ones), UP: _t(ones), Q1: _t(ones), EMB: torch.ones(3, 2)}
    # B's base: zero at element 4 of q_proj, so B's elected set there is {0,2,6}
    base_b_q = _t(ones).reshape(-1).clone()
    base_b_q[4] = 0.0
    base_b = {Q: base_b_q.reshape(2, 4), UP: _t(ones), Q1: _t(ones), EMB: torch.ones(3, 2)}
    paths = {}
    for name, scores in (("a", a), ("base_a", base_a), ("b", b), ("base_b", base_b)):
        paths[name] = save_importance(
            scores,
            str(tmp_path / "scores" / name),
            model=None,
            score="snip",
            dataset={"name": f"data_{name}.jsonl", "samples": 3, "answer_tokens": 12},
        )
    return paths


def _config(tmp_path, stores, **shared):
    config = {
        "merge_method": "led_merging",
        "base_model": str(tmp_path / "base"),
        "models": [
            {
                "model": str(tmp_path / "A"),
                "parameters": {
                    "density": 0.5,
                    "weight": 1.0,
                    "importance": stores["a"],
                    "base_importance": stores["base_a"],
                },
            },
            {
                "model": str(tmp_path / "B"),
                "parameters": {
                    "density": 0.5,
                    "weight": 0.7,
                    "importance": stores["b"],
                    "base_importance": stores["base_b"],
                },
            },
        ],
        "dtype": "float32",
    }
    if shared:
        config["parameters"] = shared
    path = tmp_path / "led.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_pure_stats_by_hand():
    a = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    s = weight_stats("w", [a, b], disjoint([a, b]))
    assert s.elected == [4, 3]
    assert s.kept == [2, 1]  # {1,3} and {6}
    assert s.dropped == [2, 2]
    assert s.intersection[(0, 1)] == 2 and s.union[(0, 1)] == 5
    assert s.jaccard((0, 1)) == pytest.approx(2 / 5) == pytest.approx(jaccard(a, b))
    no_disjoint = weight_stats("w", [a, b], [a, b])
    assert no_disjoint.kept == [4, 3] and no_disjoint.dropped == [0, 0]
    total = aggregate([s, s], lambda _: "g")[0]
    assert (
        total.numel == 16
        and total.kept == [4, 2]
        and total.jaccard((0, 1)) == pytest.approx(4 / 10)
    )
    assert jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 0.0


def test_names():
    assert (
        layer_of(Q) == "layer 0"
        and layer_of(EMB) == "embed_tokens"
        and layer_of("lm_head.weight") == "lm_head"
    )
    assert weight_type(Q) == "self_attn.q_proj" and weight_type(UP) == "mlp.up_proj"


def test_analyze_config_hand_computed(tmp_path, stores):
    config, _ = load_config(_config(tmp_path, stores))
    analysis = analyze_config(config)
    by_name = {s.name: s for s in analysis.weights}
    q = by_name[Q]  # N_A={0,1,2,3}, N_B={0,2,6}
    assert q.elected == [4, 3] and q.kept == [2, 1] and q.dropped == [2, 2]
    assert q.jaccard((0, 1)) == pytest.approx(2 / 5)
    up = by_name[UP]  # identical sets: everything dropped
    assert up.elected == [4, 4] and up.kept == [0, 0] and up.jaccard((0, 1)) == 1.0
    q1 = by_name[Q1]  # disjoint sets
    assert q1.elected == [4, 4] and q1.kept == [4, 4] and q1.jaccard((0, 1)) == 0.0
    emb = by_name[EMB]  # 6 elements, k=3
    assert emb.elected == [3, 3] and emb.kept == [3, 3]

    layers = {g.name: g for g in analysis.by_layer()}
    assert list(layers) == ["embed_tokens", "layer 0", "layer 1"]
    layer0 = layers["layer 0"]
    assert layer0.numel == 16 and layer0.elected == [8, 7] and layer0.kept == [2, 1]
    assert layer0.jaccard((0, 1)) == pytest.approx((2 + 4) / (5 + 4))
    total = analysis.overall()
    assert total.numel == 30 and total.kept == [9, 8]
    assert [m.weight for m in analysis.models] == [1.0, 0.7]

    layers_idx, types, values = analysis.grid((0, 1))
    assert layers_idx == [0, 1] and types == ["self_attn.q_proj", "mlp.up_proj"]
    assert values[0] == [pytest.approx(0.4), 1.0] and values[1][0] == 0.0
    assert values[1][1] != values[1][1]  # NaN: layer 1 has no up_proj

    no_disjoint, _ = load_config(_config(tmp_path, stores, disjoint=False))
    assert {s.name: s for s in analyze_config(no_disjoint).weights}[UP].kept == [4, 4]
    # the paper's overlap analysis at another ratio
    wide = analyze_config(config, density_override=1.0)
    assert {s.name: s for s in wide.weights}[Q].elected == [8, 7]


def test_inspect_cli(tmp_path, stores):
    from mergekit_led.cli import main

    config = _config(tmp_path, stores)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["inspect", config, "--json", str(tmp_path / "o.json"), "--plot", str(tmp_path / "o.png")],
    )
    assert result.exit_code == 0, result.output
    assert "layer 0" in result.output and "all weights" in result.output
    assert "J(A,B)" in result.output and "0.667" in result.output  # layer 0: 6/9
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["overall"]["models"][os.path.join(str(tmp_path), "A")]["kept"] == 9
    assert os.path.getsize(tmp_path / "o.png") > 1000

    per_weight = runner.invoke(main, ["inspect", config, "--per-weight"])
    assert per_weight.exit_code == 0 and Q in per_weight.output

    as_json = runner.invoke(main, ["inspect", config, "--json", "-"])
    assert json.loads(as_json.stdout)["election"] == "both"


def test_inspect_plot_without_matplotlib_fails_before_the_analysis(tmp_path, stores, monkeypatch):
    from mergekit_led.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    config = _config(tmp_path, stores)
    result = CliRunner().invoke(
        main,
        ["inspect", config, "--json", str(tmp_path / "o.json"), "--plot", str(tmp_path / "o.png")],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: The Jaccard heatmap (--plot) is drawn with matplotlib, which is not installed: "
        "pip install 'mergekit-led[plot]'."
    ]
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.png").exists()


def test_inspect_refuses_other_methods(tmp_path):
    from mergekit_led.cli import main

    path = tmp_path / "ta.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": "b",
                "models": [{"model": "a", "parameters": {"weight": 1}}],
            }
        )
    )
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 1 and "led_merging" in result.output
    config, _ = load_config(str(path))
    with pytest.raises(ConfigError):
        analyze_config(config)
