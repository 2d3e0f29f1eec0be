"""Bad inputs to ``mergekit-led merge``/``inspect``: refused before any work, in one line.

Non-numeric, boolean and non-finite densities and weights; devices the machine
does not have; a config that is not UTF-8; a truncated model file; a full disk
and other OS or safetensors errors escaping from the libraries.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch
import yaml

from .support import hidden_leftovers, run_cli


def write_config(path, family, tasks, *, density="0.3", weight=None, shared=None):
    """A one-model led_merging config; ``density`` and ``weight`` are YAML text,
    so the file holds them exactly as a user would type them."""
    parameters = {
        "density": "DENSITY",
        "importance": tasks[0].model_store,
        "base_importance": tasks[0].base_store,
    }
    if weight is not None:
        parameters["weight"] = "WEIGHT"
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [{"model": family.finetunes[0], "parameters": parameters}],
    }
    if shared:
        config["parameters"] = shared
    text = yaml.safe_dump(config, sort_keys=False)
    text = text.replace("DENSITY", density).replace("WEIGHT", weight or "")
    return path, text


def merge_refused(tmp_path, text, *fragments):
    config = tmp_path / "c.yml"
    config.write_text(text)
    result = run_cli("merge", config, tmp_path / "out", "--no-copy-tokenizer")
    line = result.assert_one_line_error(*fragments)
    assert "Executing graph" not in result.text  # refused before the merge started
    assert not (tmp_path / "out").exists()
    assert hidden_leftovers(tmp_path, "out") == []
    return line


@pytest.mark.parametrize(
    "key,raw,fragment",
    [
        ("density", "abc", "must be a number"),
        ("density", "true", "must be a number"),
        ("density", ".nan", "must be finite"),
        ("weight", ".inf", "must be finite"),
        ("weight", "-.inf", "must be finite"),
        ("weight", ".nan", "must be finite"),
        ("weight", "abc", "must be a number"),
        ("weight", "true", "must be a number"),
        ("weight", "[1.0, .inf]", "must be finite"),
    ],
)
def test_bad_numbers_refused_before_any_work(
    key, raw, fragment, tmp_path, llama_family, task_stores
):
    """main: `density: abc` and `weight: abc` were tracebacks, `density: true` merged
    at 1.0, `weight: .inf` wrote infinities with exit 0."""
    values = {"density": raw} if key == "density" else {"weight": raw}
    _, text = write_config(tmp_path / "c.yml", llama_family, task_stores, **values)
    assert f"{key}: {raw}\n" in text
    merge_refused(tmp_path, text, f"`{key}`", fragment, llama_family.finetunes[0])


def test_numeric_text_density_is_accepted(tmp_path, llama_family, task_stores):
    """YAML 1.1 reads `1e-1` as text; mergekit accepts it, so LED does too."""
    config, text = write_config(tmp_path / "c.yml", llama_family, task_stores, density="1e-1")
    assert yaml.safe_load(text)["models"][0]["parameters"]["density"] == "1e-1"
    config.write_text(text)
    result = run_cli("merge", config, tmp_path / "out", "--no-copy-tokenizer")
    assert result.exit_code == 0, result.text


def test_non_boolean_disjoint_refused(tmp_path, llama_family, task_stores):
    _, text = write_config(
        tmp_path / "c.yml", llama_family, task_stores, shared={"disjoint": "maybe"}
    )
    merge_refused(tmp_path, text, "`disjoint`", "maybe")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "flags", [["--cuda"], ["--device", "cuda"], ["--device", "cuda:3"], ["--read-to-gpu"]]
)
def test_cuda_without_cuda_refused_before_any_work(flags, tmp_path, llama_family, task_stores):
    """main: an AssertionError traceback from torch, after preflight."""
    config, text = write_config(tmp_path / "c.yml", llama_family, task_stores)
    config.write_text(text)
    result = run_cli("merge", config, tmp_path / "out", "--no-copy-tokenizer", *flags)
    result.assert_one_line_error("CUDA")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_inspect_device_without_cuda_refused(tmp_path, llama_family, task_stores):
    config, text = write_config(tmp_path / "c.yml", llama_family, task_stores)
    config.write_text(text)
    run_cli("inspect", config, "--device", "cuda").assert_one_line_error("--device cuda", "CUDA")


def test_config_that_is_not_utf8_names_the_line(tmp_path, llama_family, task_stores):
    config, text = write_config(tmp_path / "c.yml", llama_family, task_stores)
    lines = text.splitlines(keepends=True)
    raw = "".join(lines[:2]).encode() + b"# caf\xe9\n" + "".join(lines[2:]).encode()
    config.write_bytes(raw)
    result = run_cli("merge", config, tmp_path / "out")
    result.assert_one_line_error(str(config), "not UTF-8", "line 3")


def test_truncated_model_file_named_before_merging(tmp_path, llama_family, task_stores):
    """main: the merge started and failed with a safetensors traceback naming no file."""
    import shutil

    model = tmp_path / "finetune_copy"
    shutil.copytree(llama_family.finetunes[0], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _, text = write_config(tmp_path / "c.yml", llama_family, task_stores)
    text = text.replace(f"model: {llama_family.finetunes[0]}", f"model: {model}")
    assert str(model) in text
    merge_refused(tmp_path, text, str(weights))


def test_disk_full_is_one_line(tmp_path, llama_family, task_stores, monkeypatch):
    """ENOSPC while mergekit writes: one line saying the disk is full and where;
    nothing is left at OUT or beside it."""
    import mergekit_led.merge as merge_module

    config, text = write_config(tmp_path / "c.yml", llama_family, task_stores)
    config.write_text(text)

    def run_merge_on_full_disk(config, out_path, **kwargs):
        os.makedirs(out_path, exist_ok=True)
        with open(os.path.join(out_path, "model.safetensors"), "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(out_path, "model.safetensors")
        )

    monkeypatch.setattr(merge_module, "run_merge", run_merge_on_full_disk)
    result = run_cli("merge", config, tmp_path / "out", "--no-copy-tokenizer")
    result.assert_one_line_error("Disk full", "model.safetensors")
    assert not (tmp_path / "out").exists()
    assert hidden_leftovers(tmp_path, "out") == []


def test_safetensors_error_escaping_is_one_line(tmp_path, llama_family, task_stores, monkeypatch):
    from safetensors import SafetensorError

    import mergekit_led.merge as merge_module

    config, text = write_config(tmp_path / "c.yml", llama_family, task_stores)
    config.write_text(text)

    def run_merge_reading_a_bad_file(*args, **kwargs):
        raise SafetensorError("Error while deserializing header: header too large")

    monkeypatch.setattr(merge_module, "run_merge", run_merge_reading_a_bad_file)
    result = run_cli("merge", config, tmp_path / "out", "--no-copy-tokenizer")
    result.assert_one_line_error("safetensors", "header too large")
