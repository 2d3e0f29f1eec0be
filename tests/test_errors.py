"""Every bad input is refused with a message that says what and where."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
import yaml
from helpers import make_scores
from safetensors.torch import save_file

from mergekit_led import (
    ConfigError,
    FingerprintMismatch,
    LEDError,
    StoreError,
    load_importance,
    save_importance,
)
from mergekit_led.core import kth_largest

MANIFEST = "led_importance.json"
VICTIM = "model.layers.0.self_attn.q_proj.weight"


def merge_sd(models, base="base", **parameters):
    from mergekit.merge_methods import merge_state_dicts

    return merge_state_dicts(models, "led_merging", parameters=parameters, base=base)


def one_model_inputs(
    family_state_dicts,
    task_stores,
    *,
    importance=None,
    base_importance=None,
    density=0.3,
    model_key="finetune1",
):
    models = {"base": family_state_dicts["base"], model_key: family_state_dicts[model_key]}
    params = {
        "density": {model_key: density},
        "importance": {model_key: importance or task_stores[0].model_store},
        "base_importance": {model_key: base_importance or task_stores[0].base_store},
    }
    return models, params


def esc(text) -> str:
    return re.escape(str(text))


def hand_written_store(dst, src_store, scores, *, thresholds):
    """A store written by hand: safetensors + a manifest copied from a valid store."""
    os.makedirs(dst)
    save_file(
        {k: v.contiguous() for k, v in scores.items()}, os.path.join(dst, "scores.safetensors")
    )
    with open(os.path.join(src_store, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["files"] = {k: "scores.safetensors" for k in scores}
    manifest.pop("fingerprint_file", None)
    manifest.pop("checksums", None)
    if thresholds:
        save_file(
            {
                k: torch.sort(v.reshape(-1), descending=True).values.contiguous()
                for k, v in scores.items()
            },
            os.path.join(dst, "thresholds.safetensors"),
        )
        manifest["threshold_files"] = {k: "thresholds.safetensors" for k in scores}
        manifest["format_version"] = 1  # sorted copies exist in format 1 only
        manifest.pop("dtype", None)
    else:
        manifest.pop("threshold_files", None)
    with open(os.path.join(dst, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return str(dst)


# --------------------------------------------------------------------------- store on disk


def test_store_path_missing(tmp_path, family_state_dicts, task_stores):
    missing = tmp_path / "no_such_store"
    with pytest.raises(StoreError, match=f"{esc(missing)}.*does not exist"):
        load_importance(str(missing))
    models, params = one_model_inputs(family_state_dicts, task_stores, importance=str(missing))
    with pytest.raises(StoreError, match=esc(missing)):
        merge_sd(models, **params)


def test_store_path_is_a_file(tmp_path):
    f = tmp_path / "file.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(StoreError, match="not a folder"):
        load_importance(str(f))


def test_manifest_missing(tmp_path, task_stores):
    dst = tmp_path / "no_manifest"
    shutil.copytree(task_stores[0].model_store, dst)
    os.remove(dst / MANIFEST)
    with pytest.raises(StoreError, match=f"{esc(dst)}.*no manifest"):
        load_importance(str(dst))


def test_manifest_not_json(tmp_path, task_stores):
    dst = tmp_path / "bad_json"
    shutil.copytree(task_stores[0].model_store, dst)
    (dst / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match=esc(dst / MANIFEST)):
        load_importance(str(dst))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"format": "pickled-random-masks"}, "unknown format 'pickled-random-masks'"),
        ({"format": None}, "unknown format"),
        ({"format_version": 99}, "format version 99"),
        ({"format_version": None}, "format version"),
    ],
    ids=["format", "no-format", "version", "no-version"],
)
def test_unknown_format_or_version(tmp_path, task_stores, change, match):
    dst = tmp_path / "store"
    shutil.copytree(task_stores[0].model_store, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    for key, value in change.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (dst / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=match) as info:
        load_importance(str(dst))
    assert str(dst) in str(info.value)


@pytest.mark.parametrize("removed", ["scores.safetensors", "fingerprint.safetensors"])
def test_shard_file_missing(tmp_path, family_state_dicts, task_stores, removed):
    """An incomplete store is refused with a StoreError naming the missing file
    (at open, or at the latest when the merge reads it), not a bare OSError."""
    dst = tmp_path / "store"
    shutil.copytree(task_stores[0].model_store, dst)
    os.remove(dst / removed)
    models, params = one_model_inputs(family_state_dicts, task_stores, importance=str(dst))
    with pytest.raises(StoreError, match=esc(removed)) as info:
        load_importance(str(dst))
        merge_sd(models, **params)
    assert str(dst) in str(info.value)


def test_weight_missing_from_store(tmp_path, family_state_dicts, task_stores, llama_family):
    scores = dict(task_stores[0].model_scores)
    del scores["model.norm.weight"]
    path = save_importance(scores, str(tmp_path / "partial"), model=llama_family.finetunes[0])
    models, params = one_model_inputs(family_state_dicts, task_stores, importance=path)
    with pytest.raises(StoreError, match="missing") as info:
        merge_sd(models, **params)
    message = str(info.value)
    assert "model.norm.weight" in message
    assert "finetune1" in message
    assert path in message


def test_shape_mismatch(tmp_path, family_state_dicts, task_stores):
    scores = dict(task_stores[0].base_scores)
    scores[VICTIM] = torch.rand(32, 16)  # the weight is (32, 32)
    path = save_importance(scores, str(tmp_path / "wrong_shape"), model=None)
    models, params = one_model_inputs(family_state_dicts, task_stores, base_importance=path)
    with pytest.raises(StoreError, match="(?i)shape") as info:
        merge_sd(models, **params)
    message = str(info.value)
    assert VICTIM in message and path in message
    assert "(32, 32)" in message and "(32, 16)" in message
    assert "base" in message


def test_store_for_another_model_refused_by_the_method(family_state_dicts, task_stores):
    """finetune1's store configured for finetune2: per-weight fingerprint check."""
    models, params = one_model_inputs(family_state_dicts, task_stores, model_key="finetune2")
    with pytest.raises(FingerprintMismatch) as info:
        merge_sd(models, **params)
    message = str(info.value)
    assert task_stores[0].model_store in message
    assert "finetune2" in message
    assert task_stores[0].model_path in message  # the model the store was computed on
    assert re.search(r"model\.[\w.]+weight|lm_head\.weight", message)


def test_base_store_swapped_with_model_store_refused(family_state_dicts, task_stores):
    models, params = one_model_inputs(
        family_state_dicts,
        task_stores,
        importance=task_stores[0].base_store,
        base_importance=task_stores[0].model_store,
    )
    with pytest.raises(FingerprintMismatch):
        merge_sd(models, **params)


def test_store_for_another_model_refused_through_yaml(
    tmp_path, llama_family, task_stores, yaml_writer
):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = yaml_writer(
        tmp_path / "c.yml",
        base=llama_family.base,
        models=[
            (
                llama_family.finetunes[1],
                {
                    "density": 0.3,
                    "importance": task_stores[0].model_store,
                    "base_importance": task_stores[1].base_store,
                },
            )
        ],
    )
    cfg = MergeConfiguration.model_validate(yaml.safe_load(open(config)))
    with pytest.raises(FingerprintMismatch) as info:
        run_merge(cfg, str(tmp_path / "out"), options=MergeOptions(quiet=True))
    message = str(info.value)
    assert task_stores[0].model_store in message
    assert llama_family.finetunes[1] in message


@pytest.mark.parametrize("kind", ["negative", "nan", "inf"])
@pytest.mark.parametrize("thresholds", [False, True])
@pytest.mark.parametrize("fused", [False, True], ids=["checked-apart", "checked-in-selection"])
def test_bad_scores_in_hand_written_store(
    tmp_path, monkeypatch, family_state_dicts, task_stores, kind, thresholds, fused
):
    """Scores safetensors + a manifest copied from a valid store (with or without
    the sorted copies, written consistently with the scores). ``fused``: through
    the selection pass that checks values as it goes (large weights), forced here
    on the tiny family's weights."""
    if fused:
        monkeypatch.setattr(kth_largest, "_DIRECT_MAX_NUMEL", 0)
        monkeypatch.setattr(kth_largest, "_CHUNK", 7)
    scores = {k: v.clone() for k, v in task_stores[0].model_scores.items()}
    scores[VICTIM][2, 3] = {"negative": -1.0, "nan": float("nan"), "inf": float("inf")}[kind]
    # save_importance itself refuses these scores
    with pytest.raises(StoreError, match="negative" if kind == "negative" else "non-finite"):
        save_importance(scores, str(tmp_path / "refused"), model=None)
    assert not (tmp_path / "refused").exists()
    path = hand_written_store(
        str(tmp_path / "hand"), task_stores[0].model_store, scores, thresholds=thresholds
    )
    models, params = one_model_inputs(family_state_dicts, task_stores, importance=path)
    match = "(?i)negative" if kind == "negative" else "(?i)non-finite"
    with pytest.raises(StoreError, match=match) as info:
        merge_sd(models, **params)
    message = str(info.value)
    assert VICTIM in message and path in message and "finetune1" in message


@pytest.mark.parametrize("kind", ["negative", "nan"])
def test_bad_scores_in_copied_store_with_stale_thresholds(
    tmp_path, family_state_dicts, task_stores, kind
):
    """A valid store copied whole, then its scores file replaced by hand: the store now
    holds negative / non-finite scores (spec 5: non-negative float32 scores) and must be
    refused, even though its sorted copies still describe the old, valid scores."""
    dst = tmp_path / "copied"
    shutil.copytree(task_stores[0].model_store, dst)
    scores = {k: v.clone() for k, v in task_stores[0].model_scores.items()}
    scores[VICTIM][1, 1] = -1.0 if kind == "negative" else float("nan")
    save_file(scores, str(dst / "scores.safetensors"))
    models, params = one_model_inputs(family_state_dicts, task_stores, importance=str(dst))
    match = "(?i)negative" if kind == "negative" else "(?i)non-finite"
    with pytest.raises(StoreError, match=match) as info:
        merge_sd(models, **params)
    assert VICTIM in str(info.value) and str(dst) in str(info.value)


def test_bad_scores_in_base_store_name_the_base_model(tmp_path, family_state_dicts, task_stores):
    scores = {k: v.clone() for k, v in task_stores[0].base_scores.items()}
    scores[VICTIM][0, 0] = -3.0
    path = hand_written_store(
        str(tmp_path / "hand"), task_stores[0].base_store, scores, thresholds=False
    )
    models, params = one_model_inputs(family_state_dicts, task_stores, base_importance=path)
    with pytest.raises(StoreError, match="(?i)negative") as info:
        merge_sd(models, **params)
    message = str(info.value)
    assert VICTIM in message and path in message and "base" in message


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_unit_interval(family_state_dicts, task_stores, density):
    models, params = one_model_inputs(family_state_dicts, task_stores, density=density)
    with pytest.raises(ConfigError, match=r"density.*\(0, 1\]") as info:
        merge_sd(models, **params)
    assert "finetune1" in str(info.value)
    assert repr(density) in str(info.value) or str(density) in str(info.value)


def test_density_one_is_allowed(family_state_dicts, task_stores):
    """density 1 elects every element scored above zero in both stores (spec 2)."""
    models, params = one_model_inputs(family_state_dicts, task_stores, density=1.0)
    out = merge_sd(models, **params)
    task = task_stores[0]
    for name, merged in out.items():
        elected = (task.model_scores[name] > 0) & (task.base_scores[name] > 0)
        expected = torch.where(elected, models["finetune1"][name], models["base"][name])
        assert torch.equal(merged, expected), name


def test_unknown_election(family_state_dicts, task_stores):
    models, params = one_model_inputs(family_state_dicts, task_stores)
    with pytest.raises(ConfigError, match="(?i)unknown election 'either'") as info:
        merge_sd(models, election="either", **params)
    for choice in ("both", "model_only", "base_only"):
        assert choice in str(info.value)


def test_missing_importance_parameter(family_state_dicts, task_stores):
    models, params = one_model_inputs(family_state_dicts, task_stores)
    del params["importance"]
    with pytest.raises(Exception, match="importance"):
        merge_sd(models, **params)


def test_no_base_merge_state_dicts(family_state_dicts, task_stores):
    models, params = one_model_inputs(family_state_dicts, task_stores)
    with pytest.raises(LEDError, match="(?i)requires a base model"):
        merge_sd(models, base=None, **params)


def test_no_base_model_in_yaml(tmp_path, llama_family, task_stores, yaml_writer):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = yaml_writer(
        tmp_path / "c.yml",
        base=None,
        models=[
            (
                llama_family.finetunes[0],
                {
                    "density": 0.3,
                    "importance": task_stores[0].model_store,
                    "base_importance": task_stores[0].base_store,
                },
            ),
            (llama_family.base, None),
        ],
    )
    cfg = MergeConfiguration.model_validate(yaml.safe_load(open(config)))
    with pytest.raises(Exception, match="(?i)base.model"):
        run_merge(cfg, str(tmp_path / "out"), options=MergeOptions(quiet=True))
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------- slices


@pytest.fixture(scope="module")
def four_layer_family(tmp_path_factory):
    """Base + one fine-tune with 4 layers, and stores for them."""
    from helpers import checkpoint_shapes

    from mergekit_led.testing import build_family

    root = tmp_path_factory.mktemp("four_layers")
    family = build_family(str(root / "models"), finetunes=1, seed=4, layers=4)
    shapes = checkpoint_shapes(family.base)
    model_store = save_importance(
        make_scores(shapes, 1), str(root / "ft"), model=family.finetunes[0]
    )
    base_store = save_importance(make_scores(shapes, 2), str(root / "base"), model=family.base)
    return family, model_store, base_store


def shifted_slices_config(path, family, model_store, base_store):
    """Output layers 2-3 are copies of source layers 0-1 (a common 'frankenmerge')."""
    params = {"density": 0.5, "importance": model_store, "base_importance": base_store}
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "slices": [
            {
                "sources": [
                    {"model": family.finetunes[0], "layer_range": [0, 2], "parameters": params},
                    {"model": family.base, "layer_range": [0, 2]},
                ]
            },
            {
                "sources": [
                    {"model": family.finetunes[0], "layer_range": [0, 2], "parameters": params},
                    {"model": family.base, "layer_range": [0, 2]},
                ]
            },
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return str(path)


def test_shifted_slices_refused_by_plain_mergekit_yaml(tmp_path, four_layer_family):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    family, model_store, base_store = four_layer_family
    config = shifted_slices_config(tmp_path / "c.yml", family, model_store, base_store)
    cfg = MergeConfiguration.model_validate(yaml.safe_load(open(config)))
    with pytest.raises(FingerprintMismatch) as info:
        run_merge(cfg, str(tmp_path / "out"), options=MergeOptions(quiet=True))
    message = str(info.value)
    assert "slices" in message and "layer_range" in message
    assert re.search(r"model\.layers\.[23]\.", message), message


def test_shifted_slices_refused_by_mergekit_led_preflight(tmp_path, four_layer_family):
    from click.testing import CliRunner

    from mergekit_led.cli import main

    family, model_store, base_store = four_layer_family
    config = shifted_slices_config(tmp_path / "c.yml", family, model_store, base_store)
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    result = CliRunner().invoke(
        main, ["merge", config, str(out_parent / "merged"), "--no-copy-tokenizer"]
    )
    assert result.exit_code != 0
    text = result.output + (str(result.exception) if result.exception else "")
    assert "layer_range" in text, text
    assert "Traceback" not in text
    assert os.listdir(out_parent) == []


# --------------------------------------------------------------------------- the hierarchy


def test_every_error_class_is_defined_in_errors_and_is_an_led_error():
    """One hierarchy: every class of ``mergekit_led.errors`` is an ``LEDError`` (and so a
    ``ValueError``), and no other module of the package defines an exception class."""
    import ast
    import inspect
    import pathlib

    from mergekit_led import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)]
    assert classes and all(
        c.__module__ == errors.__name__ and issubclass(c, LEDError) for c in classes
    ), classes
    assert issubclass(LEDError, ValueError)
    package = pathlib.Path(errors.__file__).parent
    defined_elsewhere = []
    for path in package.rglob("*.py"):
        if path.name == "errors.py" and path.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Mismatch")) for b in bases):
                    defined_elsewhere.append(f"{path.relative_to(package)}: {node.name}")
    assert defined_elsewhere == []


def _cli_output_of(error: BaseException):
    import click
    from click.testing import CliRunner

    from mergekit_led.cli import run_cli_errors_cleanly

    @click.command()
    @run_cli_errors_cleanly
    def command():
        raise error

    return CliRunner().invoke(command, [])


def test_cli_prints_one_line_for_a_real_safetensors_error(tmp_path):
    from safetensors import SafetensorError, safe_open

    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SafetensorError) as caught:
        safe_open(str(damaged), framework="pt")
    result = _cli_output_of(caught.value)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Cannot read a safetensors file ("), lines


def test_cli_prints_one_line_for_torch_out_of_memory():
    result = _cli_output_of(torch.OutOfMemoryError("CUDA out of memory\nTried to allocate 2 GiB"))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == ["Error: Out of memory: CUDA out of memory."]


def test_a_class_named_like_a_library_error_is_not_taken_for_one():
    """Errors are matched by class, not by name: an unknown error keeps its traceback."""
    SafetensorError = type("SafetensorError", (Exception,), {})
    result = _cli_output_of(SafetensorError("something else"))
    assert result.exit_code == 1 and isinstance(result.exception, SafetensorError)
