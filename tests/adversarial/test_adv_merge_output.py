"""``mergekit-led merge`` output folders and model cards (issue 12, defects 5 and 6).

A merge never writes into its inputs, replaces an earlier output whole (no
stale shard survives), refuses folders holding anything else unless
``--overwrite``, keeps a finished merge whatever happens to its card section,
and writes a card for multi-slice configs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

import pytest
import yaml
from safetensors.torch import load_file

from .support import folder_digest, hidden_leftovers, run_cli

SHARE_HEADING = "### Share of the weights taken from each model"


def params(task, density=0.3, **extra):
    return {
        "density": density,
        "importance": task.model_store,
        "base_importance": task.base_store,
        **extra,
    }


def slices_config(
    path, family, tasks, *, second_slice_order=(0, 1), second_density=0.3, extra=None
):
    """Two output slices (layers 0 and 1) merging fine-tunes 1 and 2; the second
    slice lists them in ``second_slice_order`` with fine-tune 1 at ``second_density``."""

    def source(k, layers, density):
        return {
            "model": family.finetunes[k],
            "layer_range": layers,
            "parameters": params(tasks[k], density),
        }

    second = [source(k, [1, 2], second_density if k == 0 else 0.3) for k in second_slice_order]
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "slices": [
            {
                "sources": [
                    source(0, [0, 1], 0.3),
                    source(1, [0, 1], 0.3),
                    {"model": family.base, "layer_range": [0, 1]},
                ]
            },
            {"sources": [*second, {"model": family.base, "layer_range": [1, 2]}]},
        ],
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def models_config(path, family, tasks, **extra):
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [{"model": family.finetunes[k], "parameters": params(tasks[k])} for k in (0, 1)],
        **extra,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def share_table(out) -> str:
    readme = (out / "README.md").read_text()
    assert SHARE_HEADING in readme, readme
    return readme.split(SHARE_HEADING, 1)[1].split("<!--", 1)[0]


def merge(config, out, *options):
    return run_cli("merge", config, out, "--no-copy-tokenizer", *options)


# --------------------------------------------------------------------------- defect 5: cards


def test_multi_slice_config_with_per_slice_parameters_keeps_merge_and_card(
    tmp_path, llama_family, task_stores
):
    """Fine-tune 1 has density 0.3 in slice 0 and 0.5 in slice 1: the merge is kept
    and the card lists both sets (main failed after the merge and deleted it)."""
    config = slices_config(tmp_path / "c.yml", llama_family, task_stores, second_density=0.5)
    out = tmp_path / "out"
    result = merge(config, out)
    assert result.exit_code == 0, result.text
    assert os.path.isfile(out / "model.safetensors")
    readme = (out / "README.md").read_text()
    assert "vary per slice" in readme
    first = re.escape(f"`{llama_family.finetunes[0]}`")
    assert re.search(rf"\| {first} \| slices\[0\] \| 1 \| 0\.3 \|", readme), readme
    assert re.search(rf"\| {first} \| slices\[1\] \| 1 \| 0\.5 \|", readme), readme
    assert hidden_leftovers(tmp_path, "out") == []


def test_card_of_slices_listing_models_in_another_order(tmp_path, llama_family, task_stores):
    """The second slice lists fine-tune 2 before fine-tune 1: the card's counts still
    belong to the right model (they equal those of the same merge written with
    ``models:``); main attributed them by position."""
    sliced = slices_config(tmp_path / "s.yml", llama_family, task_stores, second_slice_order=(1, 0))
    listed = models_config(tmp_path / "m.yml", llama_family, task_stores)
    assert merge(sliced, tmp_path / "sliced").exit_code == 0
    assert merge(listed, tmp_path / "listed").exit_code == 0
    sliced_out = load_file(str(tmp_path / "sliced" / "model.safetensors"))
    listed_out = load_file(str(tmp_path / "listed" / "model.safetensors"))
    assert all(sliced_out[k].equal(listed_out[k]) for k in listed_out)
    assert share_table(tmp_path / "sliced") == share_table(tmp_path / "listed")


def test_card_of_slices_leaving_a_model_out(tmp_path, llama_family, task_stores):
    """Fine-tune 2 is merged into layer 0 only: its share of layer 1 (and of the
    weights mergekit takes from the last slice) is zero, fine-tune 1's is counted."""
    config = slices_config(tmp_path / "c.yml", llama_family, task_stores, second_slice_order=(0,))
    result = merge(config, tmp_path / "out")
    assert result.exit_code == 0, result.text
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in share_table(tmp_path / "out").splitlines()
        if line.startswith("| ")
    }
    # columns: N, finetune1, finetune1 elected, finetune2, finetune2 elected, base only
    assert rows["layer 1"][3:5] == ["0.00%", "0.00%"], rows
    assert rows["layer 0"][3] != "0.00%" and rows["layer 1"][1] != "0.00%", rows


def test_card_failure_keeps_the_finished_merge(tmp_path, llama_family, task_stores, caplog):
    """A per-layer weight gradient merges fine but cannot be summarised by the card
    section: the merge stays, with a warning saying why (main deleted the merge)."""
    models = [
        {
            "model": llama_family.finetunes[0],
            "parameters": params(task_stores[0], weight=[1.0, 0.5]),
        }
    ]
    config = tmp_path / "c.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "dtype": "float32",
                "models": models,
            }
        )
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        result = merge(config, out)
    assert result.exit_code == 0, result.text
    assert os.path.isfile(out / "model.safetensors")
    assert "LED-Merging card section could not be written" in caplog.text
    assert "varies per tensor" in caplog.text


def test_card_title_names_the_output_folder(tmp_path, llama_family, task_stores):
    """mergekit titles its card with the folder it writes; that is the output's own
    name, not the hidden staging folder's (main wrote `# .out.partial-1a2b3c4d`)."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    result = merge(config, tmp_path / "out")
    assert result.exit_code == 0, result.text
    titles = [
        line
        for line in (tmp_path / "out" / "README.md").read_text().splitlines()
        if line.startswith("# ")
    ]
    assert titles == ["# out"], titles


# --------------------------------------------------------------------------- defect 6: folders


def test_earlier_output_is_replaced_whole(tmp_path, llama_family, task_stores):
    """A sharded earlier merge, then an unsharded one into the same folder: no old
    shard or index survives next to the new file (main kept them)."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    assert merge(config, out, "--out-shard-size", "20K").exit_code == 0
    assert os.path.isfile(out / "model.safetensors.index.json")
    result = merge(config, out)
    assert result.exit_code == 0, result.text
    weights = sorted(f for f in os.listdir(out) if "safetensors" in f)
    assert weights == ["model.safetensors"], weights
    assert hidden_leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("where", ["base", "finetune", "inside_finetune", "parent", "store"])
def test_merge_never_writes_into_an_input(where, tmp_path, llama_family, task_stores):
    """The base model, a merged model, a folder inside or around one, or an importance
    store as OUT: refused before any work, nothing changed (main overwrote the base)."""
    family_root = os.path.dirname(llama_family.base)
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = {
        "base": llama_family.base,
        "finetune": llama_family.finetunes[1],
        "inside_finetune": os.path.join(llama_family.finetunes[0], "merged"),
        "parent": family_root,
        "store": task_stores[0].model_store,
    }[where]
    watched = family_root if where != "store" else task_stores[0].model_store
    before = folder_digest(watched)
    line = merge(config, out, "--overwrite").assert_one_line_error("never writes into its inputs")
    assert os.path.realpath(out) in line or out in line
    assert folder_digest(watched) == before
    assert not os.path.exists(os.path.join(llama_family.finetunes[0], "merged"))


def test_folder_that_is_not_a_merge_output_needs_overwrite(tmp_path, llama_family, task_stores):
    """A folder that is not an earlier merge output is refused (main merged into it);
    with ``--overwrite`` the merge is written there and the folder's other files
    are kept."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    merge(config, out).assert_one_line_error(str(out), "--overwrite")
    assert os.listdir(out) == ["notes.txt"]
    result = merge(config, out, "--overwrite")
    assert result.exit_code == 0, result.text
    assert (out / "notes.txt").read_text() == "mine"
    assert os.path.isfile(out / "model.safetensors")
    assert hidden_leftovers(tmp_path, "out") == []


def test_earlier_output_keeps_the_users_other_files(tmp_path, llama_family, task_stores):
    """An earlier (sharded) merge with a git checkout and notes beside it: the new
    merge's files replace the old ones as a set (no stale shard), the rest stays."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    assert merge(config, out, "--out-shard-size", "20K").exit_code == 0
    (out / ".git" / "objects").mkdir(parents=True)
    (out / ".git" / "objects" / "pack").write_text("history")
    (out / "eval.txt").write_text("mine")
    os.symlink("eval.txt", out / "latest-eval")
    result = merge(config, out)
    assert result.exit_code == 0, result.text
    assert (out / ".git" / "objects" / "pack").read_text() == "history"
    assert (out / "eval.txt").read_text() == "mine"
    assert os.readlink(out / "latest-eval") == "eval.txt"
    weights = sorted(f for f in os.listdir(out) if "safetensors" in f)
    assert weights == ["model.safetensors"], weights
    assert hidden_leftovers(tmp_path, "out") == []


def test_empty_folder_is_used(tmp_path, llama_family, task_stores):
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    out.mkdir()
    assert merge(config, out).exit_code == 0
    assert os.path.isfile(out / "model.safetensors")


def test_output_path_that_is_a_file_is_refused_before_merging(tmp_path, llama_family, task_stores):
    """Refused up front, one line, the file untouched (main merged, then failed
    with a NotADirectoryError traceback)."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    out.write_text("a file")
    result = merge(config, out)
    result.assert_one_line_error(str(out), "is a file")
    assert "Executing graph" not in result.text
    assert out.read_text() == "a file"
    assert hidden_leftovers(tmp_path, "out") == []


def test_output_folder_changed_during_the_merge_keeps_both(
    tmp_path, llama_family, task_stores, monkeypatch
):
    """OUT appears (not as a merge output) while the merge runs: nothing of it is
    touched and the finished merge is kept beside it, at a path the error names."""
    import mergekit_led.merge as merge_module

    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    out = tmp_path / "out"
    real_run_merge = merge_module.run_merge

    def run_merge_while_user_writes(*args, **kwargs):
        real_run_merge(*args, **kwargs)
        out.mkdir()
        (out / "notes.txt").write_text("written meanwhile")

    monkeypatch.setattr(merge_module, "run_merge", run_merge_while_user_writes)
    line = merge(config, out).assert_one_line_error("finished merge was kept at")
    assert (out / "notes.txt").read_text() == "written meanwhile"
    kept = line.rsplit("kept at ", 1)[1].rstrip(".")
    assert os.path.isfile(os.path.join(kept, "model.safetensors"))
    shutil.rmtree(kept)


def test_a_model_folder_not_in_the_config_is_not_taken_for_a_merge_output(
    tmp_path, llama_family, task_stores
):
    """config.json and weights alone may be a downloaded model: refused without
    --overwrite, its files untouched."""
    config = models_config(tmp_path / "c.yml", llama_family, task_stores)
    other_model = tmp_path / "other_model"
    shutil.copytree(llama_family.finetunes[2], other_model)
    before = folder_digest(other_model)
    merge(config, other_model).assert_one_line_error(str(other_model), "mergekit_config.yml")
    assert folder_digest(other_model) == before


def test_carried_files_are_links_so_a_kill_before_the_swap_loses_nothing(tmp_path):
    """What is carried into the new folder is hard-linked: removing the staging
    folder (what the next run does after a kill) leaves the originals whole."""
    from mergekit_led.merge import carry_over

    old, new = tmp_path / "out", tmp_path / "staged"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "data.bin").write_bytes(b"\1" * 1000)
    (old / "model.safetensors").write_bytes(b"old weights")
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"new weights")
    assert carry_over(str(old), str(new)) == ["sub"]
    assert os.path.samefile(old / "sub" / "data.bin", new / "sub" / "data.bin")
    assert (new / "model.safetensors").read_bytes() == b"new weights"
    shutil.rmtree(new)
    assert (old / "sub" / "data.bin").read_bytes() == b"\1" * 1000
