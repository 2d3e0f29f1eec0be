"""The store cache and the models it is keyed by, attacked (issue #18, items 1-4 and 9).

An entry whose files were damaged in place (same size) or swapped with another
entry's is never served; the key covers a local model's config.json; a model
folder that transformers and mergekit would read differently is refused; a
model or data file rewritten while ``prepare`` runs leaves no entry.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from mergekit_led.jsonl import write_jsonl
from mergekit_led.prepare.cache import StoreCache

from .support import folder_digest, run_cli

ROWS = [
    {"prompt": "how to build a bomb", "response": "sorry i cannot help with that"},
    {"prompt": "tell me how to steal a dog", "response": "no i cannot help"},
]
OTHER_ROWS = [
    {"prompt": "what is two plus three", "response": "five"},
    {"prompt": "what is one plus one", "response": "two"},
]


def write_config(path, base, models) -> str:
    """``models``: [(model path, importance_data)], density 0.3 each."""
    config = {
        "merge_method": "led_merging",
        "base_model": base,
        "dtype": "float32",
        "models": [
            {"model": model, "parameters": {"density": 0.3, "importance_data": data}}
            for model, data in models
        ],
    }
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def prepare(config, cache, *extra):
    return run_cli("prepare", config, "--cache-dir", cache, "--no-progress", *extra)


@pytest.fixture(scope="module")
def cached(tmp_path_factory, llama_family):
    """A cache holding fine-tune 1 on two datasets, and the base on both."""
    root = tmp_path_factory.mktemp("adv_cache")
    first = write_jsonl(root / "safety.jsonl", ROWS)
    second = write_jsonl(root / "math.jsonl", OTHER_ROWS)
    model = llama_family.finetunes[0]
    cache = root / "cache"
    configs = []
    for name, data in (("safety", first), ("math", second)):  # one model, two datasets
        configs.append(write_config(root / f"{name}.yml", llama_family.base, [(model, data)]))
        result = prepare(configs[-1], cache)
        assert result.exit_code == 0, result.text
    records = {(e.record["model"], e.record["data"]): e for e in StoreCache(str(cache)).entries()}
    assert len(records) == 4
    return {"root": root, "configs": configs, "cache": cache, "entries": records, "model": model}


def fresh_copy(cached, tmp_path):
    """A copy of the cache to damage (the fixture's stays intact)."""
    shutil.copytree(cached["cache"], tmp_path / "cache")
    return tmp_path / "cache"


def tensors_digest(folder):
    """The entry's safetensors files (the manifest and card record creation times)."""
    return {k: v for k, v in folder_digest(folder).items() if k.endswith(".safetensors")}


def entry_of(cache, cached, data_name):
    entry = cached["entries"][(cached["model"], str(cached["root"] / data_name))]
    return Path(cache) / "stores" / entry.key, entry.key


def test_an_entry_zeroed_in_place_is_not_served(cached, tmp_path):
    """main: a same-size copy with a zero tail counted as complete (sizes only), and
    the merge silently kept the base weights where the scores were zero."""
    cache = fresh_copy(cached, tmp_path)
    folder, key = entry_of(cache, cached, "safety.jsonl")
    scores = folder / "scores.safetensors"
    data = scores.read_bytes()
    scores.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))

    store_cache = StoreCache(str(cache))
    assert store_cache.lookup(key) is None
    assert "checksum" in store_cache.entry(key, verify=True).problem
    listing = run_cli("cache", "ls", "--cache-dir", cache)
    assert listing.exit_code == 0 and "broken: scores.safetensors has checksum" in listing.text
    again = prepare(cached["configs"][0], cache)
    assert again.exit_code == 0, again.text
    assert again.text.count(": computing (") == 1 and again.text.count(": cached (") == 1
    assert tensors_digest(folder) == tensors_digest(cached["cache"] / "stores" / key)


def test_swapped_scores_of_two_entries_are_not_served(cached, tmp_path):
    """main: two entries of the same model with their scores swapped merged with exit
    0 and another result; `cache ls` showed both complete."""
    cache = fresh_copy(cached, tmp_path)
    first, first_key = entry_of(cache, cached, "safety.jsonl")
    second, second_key = entry_of(cache, cached, "math.jsonl")
    a, b = first / "scores.safetensors", second / "scores.safetensors"
    assert a.stat().st_size == b.stat().st_size
    swap = tmp_path / "swap"
    os.rename(a, swap)
    os.rename(b, a)
    os.rename(swap, b)

    store_cache = StoreCache(str(cache))
    assert store_cache.lookup(first_key) is None and store_cache.lookup(second_key) is None
    for config in cached["configs"]:
        again = prepare(config, cache)
        assert again.exit_code == 0, again.text
        assert again.text.count(": computing (") == 1  # recomputed, never served swapped
    assert tensors_digest(first) == tensors_digest(cached["cache"] / "stores" / first_key)


def test_editing_config_json_changes_the_key(cached, tmp_path, llama_family):
    """main: the key ignored config.json, so an edited rms_norm_eps served old scores."""
    model = tmp_path / "model"
    shutil.copytree(cached["model"], model)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = write_config(tmp_path / "led.yml", llama_family.base, [(str(model), data)])
    cache = tmp_path / "cache"
    assert prepare(config, cache).exit_code == 0
    settings = json.loads((model / "config.json").read_text())
    settings["rms_norm_eps"] = 0.5
    (model / "config.json").write_text(json.dumps(settings))
    again = prepare(config, cache, "--dry-run")
    assert again.exit_code == 0, again.text
    assert again.text.count(": missing (") == 1 and again.text.count(": cached (") == 1


def sharded_with_stale_single_file(source, stale_source, folder):
    """``source``'s weights as two shards and an index, plus ``stale_source``'s
    weights as model.safetensors: transformers loads the stale file, mergekit the shards."""
    shutil.copytree(source, folder)
    tensors = load_file(os.path.join(source, "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2]}
    halves["model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for shard, shard_names in halves.items():
        save_file({n: tensors[n] for n in shard_names}, os.path.join(folder, shard))
        weight_map.update({n: shard for n in shard_names})
    index = {"metadata": {}, "weight_map": weight_map}
    Path(folder, "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(os.path.join(stale_source, "model.safetensors"), folder / "model.safetensors")


def test_shards_beside_a_stale_single_file_are_refused(tmp_path, llama_family, task_stores):
    """main: locate scored model.safetensors, mergekit merged the shards, the
    fingerprint (read the mergekit way) agreed, and the merge was silently wrong."""
    model = tmp_path / "model"
    sharded_with_stale_single_file(llama_family.finetunes[0], llama_family.finetunes[1], model)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)

    located = run_cli(
        "locate", "--model", model, "--data", data, "--out", tmp_path / "store", "--no-progress"
    )
    located.assert_one_line_error(str(model), "model.safetensors.index.json", "stale")
    assert not (tmp_path / "store").exists()

    config = write_config(tmp_path / "led.yml", llama_family.base, [(str(model), data)])
    prepared = prepare(config, tmp_path / "cache")
    prepared.assert_one_line_error(str(model), "stale")

    explicit = tmp_path / "explicit.yml"
    explicit.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [
                    {
                        "model": str(model),
                        "parameters": {
                            "density": 0.3,
                            "importance": task_stores[0].model_store,
                            "base_importance": task_stores[0].base_store,
                        },
                    }
                ],
            }
        )
    )
    merged = run_cli("merge", explicit, tmp_path / "out", "--no-copy-tokenizer")
    merged.assert_one_line_error(str(model), "stale")
    assert not (tmp_path / "out").exists()


def rewriting_locate(monkeypatch, rewrite):
    """``locate`` as prepare calls it, after ``rewrite()`` ran (a file changed
    between planning the store and computing it)."""
    import mergekit_led.location as location

    real = location.locate

    def locate(*args, **kwargs):
        rewrite()
        return real(*args, **kwargs)

    monkeypatch.setattr(location, "locate", locate)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_model_rewritten_during_prepare_leaves_no_entry(
    keep_mtime, tmp_path, llama_family, monkeypatch
):
    """main: the store of the new weights was filed under the old model's key, and
    every later merge failed with a message that pointed nowhere. A rewrite that
    keeps the size and sets the old mtime back is caught too (inode, ctime)."""
    model = tmp_path / "model"
    shutil.copytree(llama_family.finetunes[0], model)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = write_config(tmp_path / "led.yml", llama_family.base, [(str(model), data)])

    done = []  # no marker file: a new file in the folder would give the change away

    def rewrite():
        weights = model / "model.safetensors"
        if done:
            return
        done.append(True)
        status = weights.stat()
        with open(weights, "r+b") as f:  # in place, same size: the first value of the data
            (length,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + length)
            first = f.read(4)
            f.seek(8 + length)
            f.write(b"\x00\x00\x80\x3f" if first != b"\x00\x00\x80\x3f" else b"\0" * 4)
        assert weights.stat().st_size == status.st_size
        if keep_mtime:
            os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))

    rewriting_locate(monkeypatch, rewrite)
    result = prepare(config, tmp_path / "cache")
    result.assert_one_line_error(f"Model {model}", "changed while its importance store")
    cache = StoreCache(str(tmp_path / "cache"))
    assert all(e.record["model"] != str(model) for e in cache.entries())


def test_data_edited_during_prepare_says_so(tmp_path, llama_family, monkeypatch):
    """main: 'This is a bug in mergekit-led'."""
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = write_config(
        tmp_path / "led.yml", llama_family.base, [(llama_family.finetunes[0], data)]
    )
    rewriting_locate(monkeypatch, lambda: write_jsonl(data, OTHER_ROWS))
    result = prepare(config, tmp_path / "cache")
    line = result.assert_one_line_error(f"importance_data {data} changed while prepare")
    assert "bug" not in line
    assert StoreCache(str(tmp_path / "cache")).entries() == []


def test_a_merge_kept_inside_the_cache_is_not_a_leftover(cached, tmp_path):
    """main: `cache ls` counted any folder in the cache as leftovers of interrupted runs."""
    cache = fresh_copy(cached, tmp_path)
    for kept in (cache / "stores" / "merged", cache / "work" / "merged"):
        kept.mkdir(parents=True)
        (kept / "config.json").write_text("{}")
    listing = run_cli("cache", "ls", "--cache-dir", cache)
    assert listing.exit_code == 0 and "leftovers" not in listing.text
    assert StoreCache(str(cache)).leftovers() == []
    assert run_cli("cache", "prune", "--cache-dir", cache).exit_code == 0
    assert (cache / "stores" / "merged" / "config.json").exists()
    assert (cache / "work" / "merged" / "config.json").exists()


def test_record_lists_every_files_checksum(cached):
    for entry in cached["entries"].values():
        assert all(set(listed) == {"size", "sha256"} for listed in entry.record["files"].values())


def test_a_verified_entry_is_not_hashed_again_but_an_edit_is_caught(cached, tmp_path, monkeypatch):
    """Stamps spare the hash of unchanged files; an in-place edit whose mtime is set
    back still changes the file's ctime, so it is hashed and refused."""
    import mergekit_led.prepare.cache as cache_module

    cache = fresh_copy(cached, tmp_path)  # new inodes: hashed once, then stamped
    folder, key = entry_of(cache, cached, "safety.jsonl")
    assert StoreCache(str(cache)).lookup(key) is not None
    hashed = []
    real = cache_module._sha256
    monkeypatch.setattr(cache_module, "_HASHED", {})  # as in a new process
    monkeypatch.setattr(cache_module, "_sha256", lambda f: hashed.append(f.name) or real(f))
    assert StoreCache(str(cache)).lookup(key) is not None
    assert hashed == []

    scores = folder / "scores.safetensors"
    status = scores.stat()
    with open(scores, "r+b") as f:
        f.seek(status.st_size - 4)
        f.write(b"\0\0\0\0")
    os.utime(scores, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert StoreCache(str(cache)).lookup(key) is None
    assert [os.path.basename(name) for name in hashed] == ["scores.safetensors"]
