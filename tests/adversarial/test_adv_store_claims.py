"""Store headers that claim more than the file holds, and stores with odd shapes
(issue #18, items 8 and 9)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import yaml

from .support import run_cli

GIB = 1 << 30


def claiming_store(folder: Path, claimed_bytes: int, *, data_at_end: bool) -> Path:
    """A store whose one float32 tensor claims ``claimed_bytes``: a sparse file whose
    header agrees with its (apparent) size, so every header check passes."""
    folder.mkdir()
    numel = claimed_bytes // 4
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, numel * 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    scores = folder / "scores.safetensors"
    with open(scores, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + numel * 4)
        if data_at_end:
            f.seek(8 + len(header) + numel * 4 - 4096)
            f.write(b"\0\0\x80\x3f" * 1024)  # a few real scores of 1.0
    manifest = {
        "format": "mergekit-led-importance",
        "format_version": 2,
        "dtype": "float32",
        "score": "snip",
        "files": {"w": "scores.safetensors"},
        "shapes": {"w": [numel]},
    }
    (folder / "led_importance.json").write_text(json.dumps(manifest))
    return folder


def commands(store: Path, tmp_path: Path):
    return [
        ("store", "info", store),
        ("store", "verify", store),
        ("store", "convert", store, tmp_path / "converted", "--dtype", "bfloat16"),
    ]


def test_a_sparse_claim_is_refused_on_open(tmp_path):
    """main: `store info`, `verify` and `convert` allocated the claimed 64 GiB and ended in
    a traceback (and a claim just under RAM would have been allocated and filled)."""
    store = claiming_store(tmp_path / "store", 64 * GIB, data_at_end=False)
    if os.stat(store / "scores.safetensors").st_blocks * 512 >= 1 << 20:
        pytest.skip("this filesystem stores no sparse files")
    for args in commands(store, tmp_path):
        result = run_cli(*args)
        if args[1] == "verify":
            assert result.exit_code == 1 and "Traceback" not in result.text, result.text
            assert "stores no data there" in result.text
        else:
            result.assert_one_line_error("'w'", "stores no data there")
    assert not (tmp_path / "converted").exists()


def test_a_claim_beyond_memory_is_refused_before_allocating(tmp_path):
    """The tensor holds some data, so it is not a data-less claim; reading it would
    need more memory than the machine has: one line naming the tensor."""
    from mergekit_led.store.files import available_memory

    available = available_memory()
    if available is None:
        pytest.skip("this platform does not tell the memory available")
    claimed = (available // GIB + 8) * GIB
    store = claiming_store(tmp_path / "store", claimed, data_at_end=True)
    for args in commands(store, tmp_path)[::2]:  # info and convert read whole tensors
        run_cli(*args).assert_one_line_error("'w'", "bytes of memory available")
    verify = run_cli(*commands(store, tmp_path)[1])
    assert verify.exit_code == 1 and "bytes of memory available" in verify.text, verify.text
    assert "Traceback" not in verify.text


def transposed_copy(task_stores, tmp_path) -> Path:
    """The fine-tune 1 store with one 2-D weight's scores transposed: header,
    manifest and checksums agree, the shape does not fit the model."""
    import torch

    from mergekit_led import load_importance, save_importance

    store = load_importance(task_stores[0].model_store)
    scores = {name: store[name] for name in store}
    name = next(n for n, t in scores.items() if t.ndim == 2 and t.shape[0] != t.shape[1])
    scores[name] = scores[name].t().contiguous()
    out = tmp_path / "transposed"
    save_importance(scores, str(out), model=None, score="snip")
    assert isinstance(scores[name], torch.Tensor)
    return out


def test_a_transposed_store_is_refused_by_inspect_and_card(tmp_path, llama_family, task_stores):
    """main: merge refused it, but inspect and card crashed with a traceback."""
    transposed = transposed_copy(task_stores, tmp_path)
    config = tmp_path / "c.yml"
    models = []
    for k in (0, 1):
        models.append(
            {
                "model": llama_family.finetunes[k],
                "parameters": {
                    "density": 0.3,
                    "importance": str(transposed) if k == 0 else task_stores[1].model_store,
                    "base_importance": task_stores[k].base_store,
                },
            }
        )
    config.write_text(
        yaml.safe_dump(
            {"merge_method": "led_merging", "base_model": llama_family.base, "models": models}
        )
    )
    run_cli("inspect", config).assert_one_line_error(str(transposed), "shape")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(os.path.join(llama_family.base, "config.json"), out / "config.json")
    run_cli("card", config, out).assert_one_line_error(str(transposed), "shape")


# --------------------------------------------------------------------------- item 9: OS oddities


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_a_full_disk_names_what_was_being_written(kind, tmp_path, llama_family, monkeypatch):
    """main: `prepare` said "Disk full: no space left on the device while writing." with no
    file named when the library's error carried none (and read safetensors' own error as
    a damaged file)."""
    import errno

    from safetensors import SafetensorError

    import mergekit_led.store.writer as writer

    def full_disk(*args, **kwargs):
        if kind == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise SafetensorError(
            "Error while serializing: IoError(No space left on device (os error 28))"
        )

    monkeypatch.setattr(writer, "save_file", full_disk)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "how to hack", "response": "sorry no"}) + "\n")
    config = tmp_path / "c.yml"
    entry = {"density": 0.3, "importance_data": str(data)}
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [{"model": llama_family.finetunes[0], "parameters": entry}],
            }
        )
    )
    cache = tmp_path / "cache"
    result = run_cli("prepare", config, "--cache-dir", cache, "--no-progress")
    result.assert_one_line_error("Disk full", str(cache / "work"))
    assert not (cache / "stores").exists() or os.listdir(cache / "stores") == []


@pytest.mark.parametrize("what", ["fifo", "device"])
def test_fifos_and_devices_are_not_called_missing(what, tmp_path, llama_family):
    """main: a FIFO or a device given as data was reported as "does not exist"."""
    if what == "fifo":
        data = tmp_path / "data.jsonl"
        os.mkfifo(data)
    else:
        data = Path("/dev/null")
    result = run_cli(
        "locate", "--model", llama_family.finetunes[0], "--data", data,
        "--out", tmp_path / "store", "--no-progress",
    )  # fmt: skip
    line = result.assert_one_line_error(str(data), "not a regular file")
    assert "does not exist" not in line
    assert not (tmp_path / "store").exists()


def test_a_fifo_as_config_is_refused_without_blocking(tmp_path):
    config = tmp_path / "c.yml"
    os.mkfifo(config)
    run_cli("inspect", config).assert_one_line_error(str(config), "not a regular file")
