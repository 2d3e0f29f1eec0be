"""``mergekit-led merge CONFIG OUT``: mergekit-yaml with whole-config checks first and
an atomic output folder."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import reference as ref
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

ARXIV = "https://arxiv.org/abs/2502.16770"


def read_output(out_dir):
    tensors = {}
    for f in sorted(glob.glob(os.path.join(out_dir, "*.safetensors"))):
        tensors.update(load_file(f))
    return tensors


def run_cli(*args):
    from mergekit_led.cli import main

    return CliRunner().invoke(main, ["merge", *map(str, args)], catch_exceptions=True)


def output_text(result) -> str:
    text = result.output or ""
    try:
        text += result.stderr or ""
    except (ValueError, AttributeError):
        pass
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\n{type(result.exception).__name__}: {result.exception}"
    return text


def assert_no_output(parent, name):
    assert not os.path.exists(os.path.join(parent, name)), "output folder left behind"
    stray = [p for p in os.listdir(parent) if name in p]
    assert stray == [], f"partial output left behind: {stray}"


def reference_check(
    out, family_state_dicts, task_stores, count, weights, election="both", disjoint=True
):
    ids = [f"finetune{i}" for i in range(1, count + 1)]
    expected = ref.led_merge_state_dict(
        family_state_dicts["base"],
        [family_state_dicts[i] for i in ids],
        [t.model_scores for t in task_stores[:count]],
        [t.base_scores for t in task_stores[:count]],
        [0.3, 0.5, 0.2][:count],
        weights,
        election,
        disjoint,
    )
    assert set(out) == set(family_state_dicts["base"])
    for name, (_, sets) in expected.items():
        ref.assert_matches_reference(
            out[name],
            family_state_dicts["base"][name],
            [family_state_dicts[i][name] for i in ids],
            sets,
            weights or [1.0] * count,
            exact=disjoint or count == 1,
            name=name,
        )


# --------------------------------------------------------------------------- success


def test_merge_without_card_matches_reference(
    tmp_path, llama_family, family_state_dicts, task_stores, yaml_writer, led_model_entries
):
    weights = [0.9, 1.1, 0.5]
    config = yaml_writer(
        tmp_path / "led.yml",
        base=llama_family.base,
        models=led_model_entries(task_stores, 3, weights=weights),
        parameters={"election": "model_only", "disjoint": True},
    )
    result = run_cli(config, tmp_path / "out", "--no-write-model-card", "--no-copy-tokenizer")
    assert result.exit_code == 0, output_text(result)
    out = read_output(str(tmp_path / "out"))
    reference_check(out, family_state_dicts, task_stores, 3, weights, election="model_only")
    stray = [p for p in os.listdir(tmp_path) if p not in ("led.yml", "out")]
    assert stray == [], stray


def test_merge_with_card(
    tmp_path, llama_family, family_state_dicts, task_stores, yaml_writer, led_model_entries
):
    """Default options: the model card names LED-Merging and the paper."""
    config = yaml_writer(
        tmp_path / "led.yml", base=llama_family.base, models=led_model_entries(task_stores, 2)
    )
    result = run_cli(config, tmp_path / "out")
    assert result.exit_code == 0, output_text(result)
    out = read_output(str(tmp_path / "out"))
    reference_check(out, family_state_dicts, task_stores, 2, None)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "LED-Merging" in readme
    assert ARXIV in readme
    stray = [p for p in os.listdir(tmp_path) if p not in ("led.yml", "out")]
    assert stray == [], stray


def test_slices_at_their_own_position_are_accepted(
    tmp_path, llama_family, family_state_dicts, task_stores
):
    params = {
        "density": 0.3,
        "importance": task_stores[0].model_store,
        "base_importance": task_stores[0].base_store,
    }
    config = {
        "merge_method": "led_merging",
        "base_model": llama_family.base,
        "dtype": "float32",
        "slices": [
            {
                "sources": [
                    {
                        "model": llama_family.finetunes[0],
                        "layer_range": [0, 1],
                        "parameters": params,
                    },
                    {"model": llama_family.base, "layer_range": [0, 1]},
                ]
            },
            {
                "sources": [
                    {
                        "model": llama_family.finetunes[0],
                        "layer_range": [1, 2],
                        "parameters": params,
                    },
                    {"model": llama_family.base, "layer_range": [1, 2]},
                ]
            },
        ],
    }
    path = tmp_path / "slices.yml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli(path, tmp_path / "out", "--no-write-model-card", "--no-copy-tokenizer")
    assert result.exit_code == 0, output_text(result)
    out = read_output(str(tmp_path / "out"))
    reference_check(out, family_state_dicts, task_stores, 1, None)


# --------------------------------------------------------------------------- refusals


def _base_models(llama_family, task_stores):
    return [
        (
            llama_family.finetunes[0],
            {
                "density": 0.3,
                "importance": task_stores[0].model_store,
                "base_importance": task_stores[0].base_store,
            },
        ),
        (
            llama_family.finetunes[1],
            {
                "density": 0.5,
                "importance": task_stores[1].model_store,
                "base_importance": task_stores[1].base_store,
            },
        ),
    ]


def _refusal_cases():
    def tokenizer_source(c, fam, ts):
        c["tokenizer_source"] = "base"
        return "tokenizer"

    def tokenizer(c, fam, ts):
        c["tokenizer"] = {"source": "base"}
        return "tokenizer"

    def fingerprint(c, fam, ts):
        # finetune1's store configured for finetune2
        c["models"][1]["parameters"]["importance"] = ts[0].model_store
        return "(?s)" + ts[0].model_store.replace(".", r"\.") + ".*" + fam.finetunes[1]

    def base_fingerprint(c, fam, ts):
        c["models"][0]["parameters"]["base_importance"] = ts[0].model_store
        return "(?s)" + ts[0].model_store.replace(".", r"\.") + ".*" + fam.base

    def missing_store(c, fam, ts):
        c["models"][0]["parameters"]["importance"] = "/nonexistent/led/store"
        return "/nonexistent/led/store.*does not exist"

    def missing_density(c, fam, ts):
        del c["models"][1]["parameters"]["density"]
        return "(?s)" + fam.finetunes[1] + ".*density"

    def missing_base_importance(c, fam, ts):
        del c["models"][0]["parameters"]["base_importance"]
        return "base_importance"

    def density(value):
        def case(c, fam, ts):
            c["models"][0]["parameters"]["density"] = value
            return r"density.*\(0, 1\]"

        return case

    def election(c, fam, ts):
        c["parameters"] = {"election": "both_and_more"}
        return "(?i)unknown election"

    def no_base(c, fam, ts):
        del c["base_model"]
        c["models"].append({"model": fam.base})
        return "(?i)base.model"

    def shifted_slices(c, fam, ts):
        params = c["models"][0]["parameters"]
        del c["models"]
        c["slices"] = [
            {
                "sources": [
                    {"model": fam.finetunes[0], "layer_range": [1, 2], "parameters": params},
                    {"model": fam.base, "layer_range": [1, 2]},
                ]
            },
            {
                "sources": [
                    {"model": fam.finetunes[0], "layer_range": [0, 1], "parameters": params},
                    {"model": fam.base, "layer_range": [0, 1]},
                ]
            },
        ]
        return "layer_range"

    return {
        "tokenizer_source": tokenizer_source,
        "tokenizer": tokenizer,
        "fingerprint": fingerprint,
        "base_fingerprint": base_fingerprint,
        "missing_store": missing_store,
        "missing_density": missing_density,
        "missing_base_importance": missing_base_importance,
        "density_zero": density(0.0),
        "density_negative": density(-0.2),
        "density_large": density(1.5),
        "election": election,
        "no_base": no_base,
        "shifted_slices": shifted_slices,
    }


REFUSALS = _refusal_cases()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_before_merging_and_no_output(
    case, tmp_path, llama_family, task_stores, yaml_writer
):
    path = yaml_writer(
        tmp_path / "led.yml", base=llama_family.base, models=_base_models(llama_family, task_stores)
    )
    config = yaml.safe_load(open(path))
    match = REFUSALS[case](config, llama_family, task_stores)
    (tmp_path / "led.yml").write_text(yaml.safe_dump(config))
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    result = run_cli(path, out_parent / "merged", "--no-copy-tokenizer")
    text = output_text(result)
    assert result.exit_code != 0, text
    import re

    assert re.search(match, text), f"{match!r} not in {text!r}"
    assert "Traceback" not in text
    assert_no_output(str(out_parent), "merged")


@pytest.mark.slow
def test_console_script_refusal_is_one_line(
    tmp_path, llama_family, task_stores, yaml_writer, console_script, child_env
):
    """The installed `mergekit-led` script: a preflight refusal prints one clear error,
    exit status 1, no traceback, no output folder."""
    models = _base_models(llama_family, task_stores)
    models[1][1]["importance"] = task_stores[0].model_store  # finetune1's store for finetune2
    path = yaml_writer(tmp_path / "led.yml", base=llama_family.base, models=models)
    proc = subprocess.run(
        [console_script("mergekit-led"), "merge", path, str(tmp_path / "merged")],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert task_stores[0].model_store in proc.stderr
    assert llama_family.finetunes[1] in proc.stderr
    assert_no_output(str(tmp_path), "merged")


def test_existing_output_folder_untouched_on_refusal(
    tmp_path, llama_family, task_stores, yaml_writer
):
    models = _base_models(llama_family, task_stores)
    models[0][1]["density"] = 2.0
    path = yaml_writer(tmp_path / "led.yml", base=llama_family.base, models=models)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    result = run_cli(path, out)
    assert result.exit_code != 0
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "previous"


def test_failure_during_merge_leaves_no_output(tmp_path, llama_family, task_stores, yaml_writer):
    """A store that passes preflight but fails on one weight (negative scores found
    only when the weight is read): no output folder, no partial folder."""
    import json
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "bad_store"
    shutil.copytree(task_stores[0].model_store, bad)
    scores = {k: v.clone() for k, v in task_stores[0].model_scores.items()}
    scores["model.layers.1.mlp.down_proj.weight"][0, 0] = -1.0
    save_file(scores, str(bad / "scores.safetensors"))
    manifest = json.loads((bad / "led_importance.json").read_text())
    for f in manifest.get("threshold_files", {}).values():
        os.remove(bad / f) if (bad / f).exists() else None
    manifest["threshold_files"] = {}
    (bad / "led_importance.json").write_text(json.dumps(manifest))

    models = _base_models(llama_family, task_stores)
    models[0][1]["importance"] = str(bad)
    path = yaml_writer(tmp_path / "led.yml", base=llama_family.base, models=models)
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    result = run_cli(path, out_parent / "merged", "--no-write-model-card", "--no-copy-tokenizer")
    text = output_text(result)
    assert result.exit_code != 0, text
    assert "negative" in text.lower(), text
    assert_no_output(str(out_parent), "merged")
