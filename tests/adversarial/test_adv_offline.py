"""Issue 29: a model path written like ``models/safety`` (one ``/``, a local
folder) is local, offline or not: mergekit's card asked the Hub whether it was a
repository, and a minute-long merge was lost at its last step."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from .support import run_cli


@pytest.fixture()
def relative_models(tmp_path, llama_family, monkeypatch):
    """The tiny family under ``tmp_path/models/``, a config naming them
    ``models/base`` ..., the working directory ``tmp_path``."""
    for name, source in (("base", llama_family.base), ("safety", llama_family.finetunes[0])):
        shutil.copytree(source, tmp_path / "models" / name)
    monkeypatch.chdir(tmp_path)
    config = {
        "merge_method": "task_arithmetic",
        "base_model": "models/base",
        "models": [{"model": "models/safety", "parameters": {"weight": 0.5}}],
        "dtype": "float32",
    }
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def _no_network(*args, **kwargs):
    raise OSError("[Errno -2] Name or service not known (test: no network)")


def test_merge_with_relative_local_paths_never_asks_the_hub(relative_models, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "repo_exists", _no_network)
    monkeypatch.setattr(huggingface_hub, "model_info", _no_network)
    result = run_cli("merge", "c.yml", "merged")
    assert result.exit_code == 0, result.text
    card = (relative_models / "merged" / "README.md").read_text()
    assert "models/safety" in card and "huggingface.co/models/safety" not in card
    assert os.path.isfile(relative_models / "merged" / "model.safetensors")


@pytest.mark.slow
def test_plain_mergekit_yaml_offline_with_relative_paths(
    relative_models, console_script, child_env
):
    """The plugin's start-up hook applies the same rule to plain mergekit-yaml."""
    env = child_env(HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run(
        [console_script("mergekit-yaml"), "c.yml", "merged", "--no-copy-tokenizer"],
        capture_output=True,
        text=True,
        env=env,
        cwd=relative_models,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "huggingface.co/models/safety" not in (relative_models / "merged" / "README.md").read_text()
    )
