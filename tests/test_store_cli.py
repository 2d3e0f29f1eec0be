"""``mergekit-led store info|convert|verify`` and ``locate --score-dtype``."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner
from helpers import write_format1_copy
from safetensors.torch import save_file

from mergekit_led import load_importance, save_importance
from mergekit_led.cli import main
from mergekit_led.core import elect_merge as el

MANIFEST = "led_importance.json"
VICTIM = "model.layers.0.self_attn.q_proj.weight"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


def manifest_of(path):
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- info


def test_info_text_and_json(task_stores):
    task = task_stores[0]
    result = run("store", "info", task.model_store)
    assert result.exit_code == 0, result.output
    for fragment in (
        task.model_store,
        task.model_path,
        "snip",
        "task1.jsonl",
        "float32",
        f"{len(task.model_scores)} tensors",
        "sha256:",
        "bytes per score",
        "positive scores in",
    ):
        assert fragment in result.output, fragment
    data = json.loads(run("store", "info", task.model_store, "--json").output)
    scores = torch.cat([t.reshape(-1) for t in task.model_scores.values()])
    assert data["dtype"] == "float32" and data["format_version"] == 2
    assert data["model"] == task.model_path and data["score"] == "snip"
    assert data["dataset"]["samples"] == 8
    assert data["elements"] == scores.numel()
    histogram = data["histogram"]
    assert histogram["zeros"] == int((scores == 0).sum())
    assert sum(histogram["decades"].values()) == int((scores > 0).sum())
    assert histogram["max"] == float(scores.max())
    assert histogram["mean"] == pytest.approx(float(scores.double().mean()))
    sizes = sum(
        os.path.getsize(os.path.join(task.model_store, f)) for f in os.listdir(task.model_store)
    )
    assert data["size_on_disk"] == sizes
    quick = json.loads(run("store", "info", task.model_store, "--json", "--no-scan").output)
    assert quick["histogram"] is None and quick["size_on_disk"] == sizes


def test_info_of_a_bad_store_is_one_line(tmp_path):
    one_line_error(
        run("store", "info", tmp_path / "nothing"), tmp_path / "nothing", "does not exist"
    )


# --------------------------------------------------------------------------- convert


def test_convert_to_bfloat16_and_back(tmp_path, task_stores, family_state_dicts):
    task = task_stores[0]
    out = tmp_path / "bf16"
    result = run("store", "convert", task.model_store, out, "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert "bfloat16" in result.output
    store = load_importance(str(out))
    assert store.dtype == torch.bfloat16
    for name, values in task.model_scores.items():
        assert torch.equal(store[name], values.to(torch.bfloat16))
    source, converted = manifest_of(task.model_store), manifest_of(str(out))
    for key in ("model", "model_fingerprint", "score", "dataset", "aliases"):
        assert converted[key] == source[key], key
    assert converted["metadata"]["converted_from"]["path"] == task.model_store
    elements = sum(t.numel() for t in task.model_scores.values())
    assert os.path.getsize(out / "scores.safetensors") < 2 * elements + 4096  # + the header
    # the fingerprint came along: the converted store still checks its weights
    for name in task.model_scores:
        store.check_weight(name, family_state_dicts["finetune1"][name], model="finetune1")
    # back to float32: exact widening of the stored values
    back = tmp_path / "back"
    assert run("store", "convert", out, back, "--dtype", "float32").exit_code == 0
    widened = load_importance(str(back))
    for name, values in task.model_scores.items():
        assert torch.equal(widened[name], values.to(torch.bfloat16).float())


def test_convert_format1_store_drops_sorted_copies(tmp_path, task_stores):
    task = task_stores[0]
    old = write_format1_copy(task.model_store, str(tmp_path / "old"))
    out = tmp_path / "new"
    assert run("store", "convert", old, out).exit_code == 0
    assert not any(f.startswith("thresholds") for f in os.listdir(out))
    assert manifest_of(str(out))["format_version"] == 2
    new, before = load_importance(str(out)), load_importance(old)
    for name, values in task.model_scores.items():
        assert torch.equal(new[name], values)
        assert torch.equal(new.top_mask(name, 0.3), before.top_mask(name, 0.3))
    # in place, with --overwrite
    assert run("store", "convert", old, old, "--overwrite").exit_code == 0
    assert manifest_of(old)["format_version"] == 2
    assert torch.equal(load_importance(old, reopen=True)[VICTIM], task.model_scores[VICTIM])


def test_convert_errors(tmp_path, task_stores):
    task = task_stores[0]
    taken = tmp_path / "taken"
    taken.mkdir()
    one_line_error(run("store", "convert", task.model_store, taken), taken, "already exists")
    bad = run("store", "convert", task.model_store, tmp_path / "x", "--dtype", "float16")
    assert bad.exit_code == 2 and "float16" in bad.output
    one_line_error(
        run("store", "convert", tmp_path / "missing", tmp_path / "y"), tmp_path / "missing"
    )
    # a store whose scores turned negative is not converted
    broken = tmp_path / "broken"
    shutil.copytree(task.model_store, broken)
    scores = {k: v.clone() for k, v in task.model_scores.items()}
    scores[VICTIM][0, 0] = -1.0
    save_file(scores, str(broken / "scores.safetensors"))
    one_line_error(run("store", "convert", broken, tmp_path / "z"), VICTIM, "negative")
    assert not (tmp_path / "z").exists()


# --------------------------------------------------------------------------- verify


def test_verify_good_store(task_stores, llama_family):
    task = task_stores[0]
    result = run("store", "verify", task.model_store)
    assert result.exit_code == 0, result.output
    assert f"{len(task.model_scores)} weights checked" in result.output
    result = run("store", "verify", task.model_store, "--model", task.model_path)
    assert result.exit_code == 0, result.output
    assert f"against {task.model_path}" in result.output


def test_verify_wrong_model(task_stores, llama_family):
    result = run("store", "verify", task_stores[0].model_store, "--model", llama_family.base)
    assert result.exit_code == 1
    assert "fingerprint" in result.output and llama_family.base in result.output
    missing = run("store", "verify", task_stores[0].model_store, "--model", "/no/such/model")
    assert missing.exit_code == 1 and "not a local checkpoint" in missing.output


def test_verify_finds_bad_values_and_changed_files(tmp_path, task_stores):
    task = task_stores[0]
    bad = tmp_path / "bad"
    shutil.copytree(task.model_store, bad)
    scores = {k: v.clone() for k, v in task.model_scores.items()}
    scores[VICTIM][1, 2] = float("nan")
    save_file(scores, str(bad / "scores.safetensors"))
    result = run("store", "verify", bad)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2, result.output  # the NaN and the checksum
    assert any(VICTIM in p and "non-finite" in p for p in problems)
    assert any("scores.safetensors" in p and "checksum" in p for p in problems)


def test_verify_names_and_shapes_against_the_model(tmp_path, task_stores, llama_family):
    task = task_stores[0]
    partial = dict(task.model_scores)
    del partial["model.norm.weight"]
    partial["extra.weight"] = torch.ones(3)
    path = save_importance(partial, str(tmp_path / "partial"), model=None)
    result = run("store", "verify", path, "--model", task.model_path)
    assert result.exit_code == 1
    assert "'extra.weight'" in result.output and "model.norm.weight" in result.output
    assert "no model fingerprint recorded" in result.output


def test_verify_unreadable_store(tmp_path, task_stores):
    broken = tmp_path / "broken"
    shutil.copytree(task_stores[0].model_store, broken)
    os.remove(broken / "scores.safetensors")
    result = run("store", "verify", broken)
    assert result.exit_code == 1
    assert "scores.safetensors" in result.output and "missing" in result.output


# --------------------------------------------------------------------------- locate


def test_locate_score_dtype_bfloat16_rounds_the_float32_scores_once(tmp_path, llama_family):
    """Accumulation is float32 either way; the bfloat16 store holds the float32
    store's scores rounded to nearest, and elects exactly on those values."""
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"prompt": "what is one plus two", "response": "three"},
                {"prompt": "please tell me about the sun", "response": "the sun is fire"},
                {"prompt": "how to build a bomb", "response": "sorry i cannot help with that"},
            ]
        )
    )
    stores = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        result = run(
            "locate",
            "--model",
            llama_family.base,
            "--data",
            data,
            "--out",
            out,
            "--score-dtype",
            dtype,
            "--no-progress",
            "--device",
            "cpu",
        )
        assert result.exit_code == 0, result.output
        stores[dtype] = load_importance(str(out))
    full, half = stores["float32"], stores["bfloat16"]
    assert half.dtype == torch.bfloat16 and half.manifest.dtype == "bfloat16"
    assert half.manifest.metadata["options"]["score_dtype"] == "bfloat16"
    assert half.manifest.model_fingerprint == full.manifest.model_fingerprint
    for name in full:
        assert torch.equal(half[name], full[name].to(torch.bfloat16)), name
        assert torch.equal(
            half.top_mask(name, 0.2), el.top_mask(full[name].to(torch.bfloat16), 0.2)
        ), name
    bad = run(
        "locate",
        "--model",
        llama_family.base,
        "--data",
        data,
        "--out",
        tmp_path / "x",
        "--score-dtype",
        "float16",
    )
    assert bad.exit_code == 2 and "float16" in bad.output
