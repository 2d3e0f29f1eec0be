"""The importance store: save_importance / load_importance (LED_SPEC.md section 5)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import reference as ref
from helpers import make_scores
from mergekit_led import ImportanceStore, StoreError, load_importance, save_importance
from mergekit_led.core import election as el

MANIFEST = "led_importance.json"


def read_manifest(path):
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def leftovers(parent, name):
    """Anything in ``parent`` other than the final folder that mentions ``name``."""
    return [p for p in os.listdir(parent) if name in p and p != name]


# --------------------------------------------------------------------------- round trip


def test_round_trip_names_shapes_values_float32(tmp_path):
    scores = {
        "a.weight": torch.rand(5, 7, dtype=torch.float64),
        "b.weight": torch.rand(11).to(torch.bfloat16),
        "c.bias": torch.tensor([0.0, 1.0, 2.0, 2.0]),
        "d.weight": torch.randint(0, 4, (3, 2, 2)).to(torch.float16),
    }
    path = save_importance(scores, str(tmp_path / "store"), model=None)
    store = load_importance(path)
    assert isinstance(store, Mapping)
    assert set(store) == set(scores)
    assert len(store) == len(scores)
    for name, tensor in scores.items():
        got = store[name]
        assert got.dtype == torch.float32
        assert tuple(got.shape) == tuple(tensor.shape)
        assert torch.equal(got, tensor.to(torch.float32)), name
        assert name in store
    assert "missing.weight" not in store
    assert 3 not in store
    with pytest.raises(KeyError):
        store["missing.weight"]
    # the files on disk are plain safetensors with float32 tensors named like the weights
    manifest = read_manifest(path)
    for name, file_name in manifest["files"].items():
        with safe_open(os.path.join(path, file_name), framework="pt") as f:
            assert f.get_tensor(name).dtype == torch.float32


def test_round_trip_family_scores(llama_family, weight_shapes, task_stores):
    task = task_stores[0]
    store = load_importance(task.model_store)
    assert set(store) == set(weight_shapes)
    for name, shape in weight_shapes.items():
        assert tuple(store[name].shape) == shape
        assert torch.equal(store[name], task.model_scores[name])


def test_store_is_read_only(tmp_path):
    path = save_importance({"w": torch.rand(3, 3)}, str(tmp_path / "s"), model=None)
    store = load_importance(path)
    before = store["w"].clone()
    with pytest.raises(TypeError):
        store["w"] = torch.zeros(3, 3)
    with pytest.raises(TypeError):
        del store["w"]
    # mutating a returned tensor does not change the store
    t = store["w"]
    t.zero_()
    assert torch.equal(store["w"], before)


def test_store_is_lazy(tmp_path):
    """Opening reads the manifest only: a damaged shard breaks only its own lookups."""
    scores = {f"w{i}": torch.rand(64, 64) for i in range(4)}
    path = save_importance(scores, str(tmp_path / "s"), model=None,
                           max_shard_size=64 * 64 * 4)
    manifest = read_manifest(path)
    files = sorted(set(manifest["files"].values()))
    assert len(files) == 4
    damaged_name = next(n for n, f in manifest["files"].items() if f == files[0])
    with open(os.path.join(path, files[0]), "wb") as f:
        f.write(b"not a safetensors file")
    store = load_importance(path)  # must not read the shards
    assert len(store) == 4
    for name, tensor in scores.items():
        if name != damaged_name:
            assert torch.equal(store[name], tensor)
    with pytest.raises(Exception):
        store[damaged_name]


def test_sharding(tmp_path, weight_shapes):
    scores = make_scores(weight_shapes, seed=5)
    largest = max(t.numel() * 4 for t in scores.values())
    path = save_importance(scores, str(tmp_path / "sharded"), model=None,
                           max_shard_size=largest)
    manifest = read_manifest(path)
    score_files = sorted(set(manifest["files"].values()))
    assert len(score_files) > 1
    on_disk = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    for f in score_files:
        assert f in on_disk
    store = load_importance(path)
    assert set(store) == set(scores)
    for name, tensor in scores.items():
        assert torch.equal(store[name], tensor)
        ratio = 0.37
        assert torch.equal(store.top_mask(name, ratio), ref.top_set_fast(tensor, ratio))
    # every file holds only tensors assigned to it
    for f in score_files:
        with safe_open(os.path.join(path, f), framework="pt") as h:
            assert set(h.keys()) == {n for n, g in manifest["files"].items() if g == f}


# --------------------------------------------------------------------------- atomic write


@pytest.mark.parametrize("bad", ["negative", "nan", "inf"])
def test_failed_save_leaves_no_folder(tmp_path, bad):
    scores = {f"w{i}": torch.rand(8, 8) for i in range(5)}
    value = {"negative": -0.5, "nan": float("nan"), "inf": float("inf")}[bad]
    scores["w4"][3, 3] = value  # the last tensor: the failure comes "midway"
    out = tmp_path / "store"
    match = {"negative": "negative", "nan": "non-finite", "inf": "non-finite"}[bad]
    with pytest.raises(StoreError, match=match) as info:
        save_importance(scores, str(out), model=None, max_shard_size=8 * 8 * 4)
    assert "w4" in str(info.value)
    assert not out.exists()
    assert leftovers(str(tmp_path), "store") == []


def test_existing_store_not_replaced_without_overwrite(tmp_path):
    out = str(tmp_path / "store")
    save_importance({"w": torch.ones(4)}, out, model=None)
    with pytest.raises(StoreError, match="already exists"):
        save_importance({"w": torch.full((4,), 2.0)}, out, model=None)
    assert torch.equal(load_importance(out)["w"], torch.ones(4))
    # a failing overwrite leaves the old store whole
    with pytest.raises(StoreError, match="negative"):
        save_importance({"w": torch.full((4,), -2.0)}, out, model=None, overwrite=True)
    assert torch.equal(load_importance(out)["w"], torch.ones(4))
    # a successful overwrite replaces it (and a re-open sees the new content)
    save_importance({"w": torch.full((4,), 3.0), "v": torch.ones(2)}, out, model=None,
                    overwrite=True)
    store = load_importance(out)
    assert set(store) == {"w", "v"}
    assert torch.equal(store["w"], torch.full((4,), 3.0))
    assert leftovers(str(tmp_path), "store") == []


def test_existing_non_store_folder_not_replaced(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="already exists"):
        save_importance({"w": torch.ones(4)}, str(out), model=None)
    assert (out / "precious.txt").read_text() == "keep me"


def test_save_refuses_bad_scores(tmp_path, llama_family, weight_shapes):
    out = str(tmp_path / "s")
    with pytest.raises(StoreError, match="negative"):
        save_importance({"w": torch.tensor([1.0, -1e-9])}, out, model=None)
    with pytest.raises(StoreError, match="non-finite"):
        save_importance({"w": torch.tensor([1.0, float("nan")])}, out, model=None)
    with pytest.raises(StoreError, match="non-finite"):
        save_importance({"w": torch.tensor([float("inf"), 1.0])}, out, model=None)
    with pytest.raises(StoreError):
        save_importance({}, out, model=None)
    # a local checkpoint: names and shapes are checked against it
    good = make_scores(weight_shapes, seed=1)
    wrong_name = dict(good)
    wrong_name["model.layers.7.mlp.up_proj.weight"] = torch.rand(64, 32)
    with pytest.raises(StoreError, match="model.layers.7.mlp.up_proj.weight"):
        save_importance(wrong_name, out, model=llama_family.base)
    wrong_shape = dict(good)
    wrong_shape["model.norm.weight"] = torch.rand(33)
    with pytest.raises(StoreError, match="shape"):
        save_importance(wrong_shape, out, model=llama_family.base)
    assert not os.path.exists(out)


# --------------------------------------------------------------------------- manifest


def test_manifest_fields(task_stores, llama_family):
    task = task_stores[0]
    m = read_manifest(task.model_store)
    assert isinstance(m["format"], str) and m["format"]
    assert isinstance(m["format_version"], int)
    assert m["model"] == task.model_path
    assert isinstance(m["model_fingerprint"], str) and len(m["model_fingerprint"]) >= 16
    assert m["score"] == "snip"
    ds = m["dataset"]
    assert ds["name"] == "task1.jsonl"
    assert ds["fingerprint"] == f"sha256:{1:064d}"
    assert ds["samples"] == 8
    assert ds["answer_tokens"] == 40
    assert set(m["files"]) == set(task.model_scores)
    for name, f in m["files"].items():
        assert os.path.isfile(os.path.join(task.model_store, f))
    store = load_importance(task.model_store)
    assert store.manifest.model == task.model_path
    assert store.manifest.score == "snip"


def test_model_fingerprint_identifies_the_checkpoint(task_stores, llama_family, tmp_path):
    fps = {}
    for task in task_stores:
        fps[task.model_path] = read_manifest(task.model_store)["model_fingerprint"]
        fps.setdefault(llama_family.base, read_manifest(task.base_store)["model_fingerprint"])
        # every base store carries the same base fingerprint
        assert read_manifest(task.base_store)["model_fingerprint"] == fps[llama_family.base]
    assert len(set(fps.values())) == 4, "fine-tunes and base must have distinct fingerprints"
    # deterministic for the same checkpoint
    again = save_importance(task_stores[1].model_scores, str(tmp_path / "again"),
                            model=task_stores[1].model_path)
    assert read_manifest(again)["model_fingerprint"] == fps[task_stores[1].model_path]


def test_manifest_hub_model_and_metadata(tmp_path):
    path = save_importance({"w": torch.ones(3)}, str(tmp_path / "s"),
                           model="meta-llama/Meta-Llama-3-8B", score="magnitude",
                           note="hello", seed=3)
    m = read_manifest(path)
    assert m["model"] == "meta-llama/Meta-Llama-3-8B"
    assert m["model_fingerprint"] in (None, "")
    assert m["score"] == "magnitude"
    blob = json.dumps(m)
    assert '"note": "hello"' in blob and '"seed": 3' in blob


# --------------------------------------------------------------------------- thresholds


def _threshold_test_scores():
    g = torch.Generator().manual_seed(3)
    tied = torch.randint(0, 5, (40, 30), generator=g).to(torch.float32)
    cont = torch.rand(40, 30, generator=g)
    cont[torch.rand(40, 30, generator=g) < 0.3] = 0.0
    sparse = torch.zeros(50, 20)
    sparse[torch.rand(50, 20, generator=g) < 0.05] = 1.0
    return {
        "tied": tied,
        "continuous": cont,
        "sparse": sparse,
        "zeros": torch.zeros(17, 3),
        "constant": torch.full((9, 9), 0.5),
        "single": torch.tensor([0.7]),
        "single_zero": torch.tensor([0.0]),
        "vector": torch.tensor([3.0, 2.0, 2.0, 1.0, 0.0, 0.0]),
        "cube": torch.randint(0, 3, (4, 5, 6), generator=g).to(torch.float32),
    }


@pytest.mark.parametrize("thresholds", [True, False])
def test_store_top_mask_matches_election_and_reference(tmp_path, thresholds):
    scores = _threshold_test_scores()
    path = save_importance(scores, str(tmp_path / "s"), model=None, thresholds=thresholds,
                           max_shard_size=4000)
    store = load_importance(path)
    g = torch.Generator().manual_seed(11)
    for name, s in scores.items():
        n = s.numel()
        ratios = [0.0, 1.0, 1 / n, 0.5, min(1.0, 2 / n), (n - 1) / n]
        ratios += torch.rand(40, generator=g).tolist()
        ratios += (torch.rand(10, generator=g) * 0.01).tolist()
        if n <= 64:
            ratios += [k / n for k in range(n + 1)]
        for ratio in ratios:
            got = store.top_mask(name, ratio)
            assert got.dtype == torch.bool and got.shape == s.shape
            assert torch.equal(got, el.top_mask(s, ratio)), (name, ratio)
            assert torch.equal(got, ref.top_set_fast(s, ratio)), (name, ratio)


def test_thresholds_files_present_or_absent(tmp_path):
    scores = _threshold_test_scores()
    with_t = save_importance(scores, str(tmp_path / "a"), model=None)
    without = save_importance(scores, str(tmp_path / "b"), model=None, thresholds=False)
    assert any(f.startswith("thresholds") for f in os.listdir(with_t))
    assert not any(f.startswith("thresholds") for f in os.listdir(without))
    # the sorted copies really are the scores in descending order
    m = read_manifest(with_t)
    for name, f in m["threshold_files"].items():
        with safe_open(os.path.join(with_t, f), framework="pt") as h:
            stored = h.get_tensor(name)
        assert torch.equal(stored.reshape(-1),
                           torch.sort(scores[name].reshape(-1), descending=True).values)


def test_same_store_opened_twice_is_consistent(task_stores):
    a = load_importance(task_stores[0].model_store)
    b = load_importance(task_stores[0].model_store)
    assert isinstance(a, ImportanceStore)
    name = next(iter(a))
    assert torch.equal(a[name], b[name])


def test_hand_written_store_without_thresholds_loads(tmp_path, task_stores):
    """A store written by another tool: scores + manifest, no thresholds, no fingerprint."""
    src = task_stores[0].model_store
    dst = tmp_path / "hand"
    dst.mkdir()
    scores = task_stores[0].model_scores
    save_file({k: v.contiguous() for k, v in scores.items()}, str(dst / "scores.safetensors"))
    manifest = read_manifest(src)
    manifest["files"] = {k: "scores.safetensors" for k in scores}
    manifest.pop("threshold_files", None)
    manifest.pop("fingerprint_file", None)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    store = load_importance(str(dst))
    for name, tensor in scores.items():
        assert torch.equal(store[name], tensor)
        assert torch.equal(store.top_mask(name, 0.3), ref.top_set_fast(tensor, 0.3))
    shutil.rmtree(dst)
