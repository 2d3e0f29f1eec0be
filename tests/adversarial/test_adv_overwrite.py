"""``--overwrite`` deletes only what the command wrote, and no command writes over
its own inputs (issue #18, item 5)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from .support import folder_digest, run_cli


def models_config(path, family, tasks):
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [
            {
                "model": family.finetunes[0],
                "parameters": {
                    "density": 0.3,
                    "importance": tasks[0].model_store,
                    "base_importance": tasks[0].base_store,
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize("where", ["parent_of_source", "model_folder", "user_folder"])
def test_convert_overwrite_never_deletes_foreign_folders(
    where, tmp_path, task_stores, llama_family
):
    """main: `store convert SRC OUT --overwrite` with OUT the folder holding SRC (or a
    model folder) deleted the source store and the user's other files, exit 0."""
    work = tmp_path / "work"
    source = work / "store"
    shutil.copytree(task_stores[0].model_store, source)
    (work / "notes.txt").write_text("mine")
    out = {
        "parent_of_source": work,
        "model_folder": tmp_path / "model",
        "user_folder": tmp_path / "user",
    }[where]
    if where == "model_folder":
        shutil.copytree(llama_family.finetunes[0], out)
    elif where == "user_folder":
        out.mkdir()
        (out / "scores.safetensors.bak").write_text("mine")
    before = {"work": folder_digest(work), "out": folder_digest(out)}
    result = run_cli("store", "convert", source, out, "--overwrite", "--dtype", "bfloat16")
    result.assert_one_line_error(str(out))
    assert folder_digest(work) == before["work"]
    assert folder_digest(out) == before["out"]


def test_convert_into_a_folder_inside_the_source_is_refused(tmp_path, task_stores):
    source = tmp_path / "store"
    shutil.copytree(task_stores[0].model_store, source)
    before = folder_digest(source)
    result = run_cli("store", "convert", source, source / "bf16", "--dtype", "bfloat16")
    result.assert_one_line_error(str(source / "bf16"), "source store")
    assert folder_digest(source) == before


def test_convert_replaces_a_store_and_itself(tmp_path, task_stores):
    """What --overwrite is for keeps working: an earlier store, and the source itself."""
    source = tmp_path / "store"
    shutil.copytree(task_stores[0].model_store, source)
    out = tmp_path / "bf16"
    assert run_cli("store", "convert", source, out, "--dtype", "bfloat16").exit_code == 0
    again = run_cli("store", "convert", source, out, "--overwrite")
    assert again.exit_code == 0, again.text
    itself = run_cli("store", "convert", source, source, "--overwrite", "--dtype", "bfloat16")
    assert itself.exit_code == 0, itself.text


def test_locate_overwrite_of_a_folder_that_is_no_store_is_refused(tmp_path, llama_family):
    out = tmp_path / "user"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    result = run_cli(
        "locate", "--model", llama_family.finetunes[0], "--score", "magnitude", "--out", out,
        "--overwrite", "--no-progress",
    )  # fmt: skip
    result.assert_one_line_error(str(out), "thesis.tex")
    assert (out / "thesis.tex").read_text() == "mine"


def test_merge_overwrite_keeps_files_the_merge_does_not_write(tmp_path, llama_family, task_stores):
    """main: `merge OUT --overwrite` into a user folder deleted adapter_model.safetensors,
    optimizer_state.safetensors and vocab.txt, which the new merge does not write."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    out.mkdir()
    mine = {
        "adapter_model.safetensors": "adapter",
        "optimizer_state.safetensors": "optimizer",
        "vocab.txt": "a\nb\n",
        "notes.txt": "mine",
    }
    for name, text in mine.items():
        (out / name).write_text(text)
    result = run_cli("merge", config, out, "--overwrite", "--no-copy-tokenizer")
    assert result.exit_code == 0, result.text
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    assert (out / "model.safetensors").is_file()

    # a second merge replaces what the first one wrote, and still nothing else
    again = run_cli("merge", config, out, "--no-copy-tokenizer", "--out-shard-size", "20K")
    assert again.exit_code == 0, again.text
    weights = sorted(n for n in os.listdir(out) if n.startswith("model"))
    assert "model.safetensors" not in weights and "model.safetensors.index.json" in weights
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    record = json.loads((out / ".mergekit-led-output.json").read_text())
    assert not set(mine) & set(record["files"])


def test_merge_overwrite_into_a_folder_with_foreign_weights_is_refused(
    tmp_path, llama_family, task_stores
):
    """A downloaded sharded model as OUT: merging there would leave its shards beside
    the merge's (a folder read differently by transformers and mergekit), and deleting
    them would delete what the merge did not write: refused, nothing touched."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "downloaded"
    shutil.copytree(llama_family.finetunes[2], out)
    os.rename(out / "model.safetensors", out / "model-00001-of-00001.safetensors")
    before = folder_digest(out)
    result = run_cli("merge", config, out, "--overwrite", "--no-copy-tokenizer")
    result.assert_one_line_error(str(out), "model-00001-of-00001.safetensors")
    assert folder_digest(out) == before


def test_prepare_never_writes_over_its_config(tmp_path, llama_family):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    config = tmp_path / "led.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [
                    {
                        "model": llama_family.finetunes[0],
                        "parameters": {"density": 0.3, "importance_data": str(data)},
                    }
                ],
            }
        )
    )
    before = config.read_text()
    for target in (config, data):
        result = run_cli("prepare", config, "-o", target, "--cache-dir", tmp_path / "cache")
        result.assert_one_line_error(str(target), "never writes over its inputs")
    assert config.read_text() == before
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("which", ["base", "store"])
def test_card_never_writes_into_an_input(which, tmp_path, llama_family, task_stores):
    """main: `card CONFIG BASE_MODEL` wrote the LED section into the base model's README."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    target = llama_family.base if which == "base" else task_stores[0].model_store
    before = folder_digest(target)
    result = run_cli("card", config, target)
    result.assert_one_line_error(str(target), "never writes into its inputs")
    assert folder_digest(target) == before


def test_a_record_never_drops_a_folder(tmp_path):
    """A merge writes no folder: one its record names (a hand-edited record) is carried."""
    from mergekit_led.merge import MERGE_RECORD, MERGE_RECORD_FORMAT, carry_over

    old, new = tmp_path / "out", tmp_path / "staged"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "step-1.bin").write_bytes(b"mine")
    (old / "model.safetensors").write_bytes(b"old weights")
    listed = ["checkpoints", "model.safetensors", MERGE_RECORD]
    record = {"format": MERGE_RECORD_FORMAT, "files": listed}
    (old / MERGE_RECORD).write_text(json.dumps(record))
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"new weights")
    assert carry_over(str(old), str(new)) == ["checkpoints"]
