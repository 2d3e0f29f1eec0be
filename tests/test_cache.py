"""The content-addressed store cache: complete entries only, one writer per key,
leftovers of killed runs, ``mergekit-led cache ls / rm / prune``, and two real
``mergekit-led prepare`` processes racing for the same stores."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import mergekit_led
from mergekit_led.errors import CacheError
from mergekit_led.prepare.cache import (
    RECORD_NAME,
    StoreCache,
    default_store_cache_dir,
)

KEY = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def write_store(folder: str, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    mergekit_led.save_importance(
        {"w": torch.rand(4, 4, generator=generator)}, folder, model=None, score="snip"
    )


def cli(*args):
    from mergekit_led.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MERGEKIT_LED_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_cache_dir() == str(tmp_path / "xdg" / "mergekit-led")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_cache_dir() == str(tmp_path / "home" / ".cache" / "mergekit-led")
    monkeypatch.setenv("MERGEKIT_LED_CACHE", str(tmp_path / "moved"))
    assert default_store_cache_dir() == str(tmp_path / "moved")
    assert StoreCache().root == str(tmp_path / "moved")
    assert StoreCache(str(tmp_path / "explicit")).root == str(tmp_path / "explicit")


def test_compute_writes_once_and_records_every_file(tmp_path):
    cache = StoreCache(str(tmp_path))
    calls = []

    def write(folder):
        calls.append(folder)
        write_store(folder)

    entry, computed = cache.compute(KEY, {"model": "m", "score": "snip"}, write)
    assert computed and len(calls) == 1
    assert entry.path == os.path.join(str(tmp_path), "stores", KEY) and entry.complete
    record = json.loads(Path(entry.path, RECORD_NAME).read_text())
    assert record["key"] == KEY and record["model"] == "m"
    assert set(record["files"]) == set(os.listdir(entry.path)) - {RECORD_NAME}
    assert mergekit_led.load_importance(entry.path)["w"].shape == (4, 4)

    again, computed = cache.compute(KEY, {"model": "m"}, write)
    assert not computed and len(calls) == 1 and again.path == entry.path
    assert os.listdir(cache.work) == []


def test_a_failed_run_leaves_no_entry_and_its_leftovers_are_cleared(tmp_path):
    cache = StoreCache(str(tmp_path))

    def dies_half_way(folder):
        os.makedirs(folder)
        Path(folder, "scores.safetensors").write_bytes(b"half")
        Path(folder + ".locate-checkpoint").mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.compute(KEY, {}, dies_half_way)
    assert cache.entry(KEY) is None and cache.lookup(KEY) is None
    assert sorted(os.path.basename(p) for p in cache.leftovers()) == [
        KEY,
        f"{KEY}.locate-checkpoint",
    ]
    entry, computed = cache.compute(KEY, {}, write_store)
    assert computed and entry.complete
    # the dead run's folder was replaced; its progress checkpoint is kept for a resume
    assert [os.path.basename(p) for p in cache.leftovers()] == [f"{KEY}.locate-checkpoint"]


@pytest.mark.parametrize("damage", ["truncate", "no_record", "other_key", "extra_missing"])
def test_damaged_entries_are_not_complete_and_get_replaced(tmp_path, damage):
    cache = StoreCache(str(tmp_path))
    entry, _ = cache.compute(KEY, {}, write_store)
    record_path = Path(entry.path, RECORD_NAME)
    record = json.loads(record_path.read_text())
    if damage == "truncate":
        scores = Path(entry.path, "scores.safetensors")
        scores.write_bytes(scores.read_bytes()[:-3])
    elif damage == "no_record":
        record_path.unlink()
    elif damage == "other_key":
        record_path.write_text(json.dumps({**record, "key": OTHER}))
    else:
        record_path.write_text(
            json.dumps(
                {
                    **record,
                    "files": {
                        **record["files"],
                        "x.safetensors": {"size": 4, "sha256": "sha256:0"},
                    },
                }
            )
        )
    damaged = cache.entry(KEY)
    assert damaged is not None and not damaged.complete and damaged.problem
    assert cache.lookup(KEY) is None
    replaced, computed = cache.compute(KEY, {}, lambda folder: write_store(folder, seed=1))
    assert computed and replaced.complete


def test_one_writer_per_key_across_threads(tmp_path):
    cache = StoreCache(str(tmp_path))
    writes, results = [], []
    started = threading.Barrier(4)

    def slow_write(folder):
        writes.append(folder)
        time.sleep(0.3)
        write_store(folder)

    def worker():
        started.wait()
        results.append(StoreCache(str(tmp_path)).compute(KEY, {}, slow_write))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(writes) == 1
    assert sum(computed for _, computed in results) == 1
    assert {entry.path for entry, _ in results} == {cache.entry_path(KEY)}


def test_entries_in_use_are_not_removed(tmp_path):
    cache = StoreCache(str(tmp_path))
    cache.compute(KEY, {}, write_store)
    with cache.locked(KEY):
        with pytest.raises(CacheError, match=f"{KEY} is in use by another mergekit-led process"):
            cache.remove(KEY)
        assert cache.prune(older_than_days=0) == []
    assert cache.lookup(KEY) is not None
    cache.remove(KEY)
    assert cache.entries() == [] and cache.leftovers() == []


def test_key_prefixes(tmp_path):
    cache = StoreCache(str(tmp_path))
    cache.compute(KEY, {}, write_store)
    cache.compute("0123" + OTHER[4:], {}, write_store)
    assert cache.match("01234567").key == KEY
    with pytest.raises(CacheError, match="matches 2 cache entries"):
        cache.match("0123")
    with pytest.raises(CacheError, match="No cache entry"):
        cache.match("abcd")
    with pytest.raises(CacheError, match="not a cache key"):
        cache.match("../x")


def test_prune_removes_broken_entries_leftovers_and_old_entries(tmp_path):
    cache = StoreCache(str(tmp_path))
    cache.compute(KEY, {}, write_store)
    cache.compute(OTHER, {}, write_store)
    os.remove(os.path.join(cache.entry_path(OTHER), RECORD_NAME))
    held = "aaaaaaaabbbbbbbbccccccccdddddddd"
    os.makedirs(os.path.join(cache.work, f"{held}.locate-checkpoint"))
    os.makedirs(os.path.join(cache.work, f".{KEY}.partial-1234abcd"))
    with cache.locked(held):  # a live run's checkpoint is left alone
        removed = cache.prune()
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        [OTHER, f".{KEY}.partial-1234abcd"]
    )
    assert [os.path.basename(p) for p in cache.leftovers()] == [f"{held}.locate-checkpoint"]
    assert [e.key for e in cache.entries()] == [KEY]
    assert cache.prune(older_than_days=1) == [os.path.join(cache.work, f"{held}.locate-checkpoint")]
    old = time.time() - 3 * 86400
    os.utime(os.path.join(cache.entry_path(KEY), RECORD_NAME), (old, old))
    assert cache.prune(older_than_days=2) == [cache.entry_path(KEY)]
    assert cache.entries() == []


def test_cache_command_line(tmp_path):
    cache = StoreCache(str(tmp_path))
    cache.compute(
        KEY,
        {"model": "org/model", "data": "safety.jsonl", "score": "snip", "samples": 3},
        write_store,
    )
    cache.compute(
        OTHER,
        {"model": "org/base", "data": "math.jsonl", "score": "snip", "samples": 2},
        write_store,
    )
    os.makedirs(os.path.join(cache.work, f".{KEY}.partial-00000000"))

    listing = cli("cache", "ls", "--cache-dir", tmp_path)
    assert listing.exit_code == 0, listing.output
    assert f"store cache {tmp_path}" in listing.output
    assert KEY[:12] in listing.output and "org/model" in listing.output
    assert "safety.jsonl" in listing.output and "math.jsonl" in listing.output
    assert "2 entries" in listing.output and "1 leftovers of interrupted runs" in listing.output

    removed = cli("cache", "rm", KEY[:6], "--cache-dir", tmp_path)
    assert removed.exit_code == 0 and f"removed {KEY}" in removed.output
    assert [e.key for e in cache.entries()] == [OTHER]

    bad = cli("cache", "rm", "--cache-dir", tmp_path)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: Give the keys")
    bad = cli("cache", "rm", "beef", "--cache-dir", tmp_path)
    assert bad.exit_code == 1 and "No cache entry" in bad.stderr

    pruned = cli("cache", "prune", "--cache-dir", tmp_path)
    assert pruned.exit_code == 0 and "1 removed" in pruned.output
    everything = cli("cache", "rm", "--all", "--cache-dir", tmp_path)
    assert everything.exit_code == 0 and cache.entries() == []


@pytest.mark.slow
def test_two_prepare_processes_race_for_the_same_stores(
    llama_family, tmp_path, console_script, child_env
):
    data = tmp_path / "code.jsonl"
    data.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "print one", "response": "def print return one"},
                {"prompt": "code for two", "response": "return two"},
            ]
        )
    )
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
    cache = tmp_path / "cache"
    command = [
        console_script("mergekit-led"),
        "prepare",
        str(config),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    runs = [
        subprocess.Popen(
            command + ["-o", str(tmp_path / f"resolved{i}.yml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    logs = "".join(err for _, err in outputs)
    assert logs.count("  done in ") == 2  # the fine-tuned and the base store, once each
    resolved = [yaml.safe_load((tmp_path / f"resolved{i}.yml").read_text()) for i in range(2)]
    assert resolved[0] == resolved[1]
    entries = StoreCache(str(cache)).entries()
    assert len(entries) == 2 and all(e.complete for e in entries)
    assert StoreCache(str(cache)).leftovers() == []
