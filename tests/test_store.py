"""The importance store: save_importance / load_importance (LED_SPEC.md section 5)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping

import pytest
import reference as ref
import torch
from helpers import make_scores, write_format1_copy
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_led import ImportanceStore, StoreError, load_importance, save_importance
from mergekit_led.atomic import replace_directory
from mergekit_led.core import elect_merge as el
from mergekit_led.store import files as store_files

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


def test_open_validates_headers_and_reads_no_scores(tmp_path):
    """Opening checks every file's header, never the score data: a damaged data
    region shows only when that weight is read; a damaged header refuses the store."""
    scores = {f"w{i}": torch.rand(64, 64) for i in range(4)}
    path = save_importance(scores, str(tmp_path / "s"), model=None, max_shard_size=64 * 64 * 4)
    manifest = read_manifest(path)
    files = sorted(set(manifest["files"].values()))
    assert len(files) == 4
    damaged_name = next(n for n, f in manifest["files"].items() if f == files[0])
    with safe_open(os.path.join(path, files[0]), framework="pt") as f:
        assert list(f.keys()) == [damaged_name]
    # NaN bytes over the last value of the damaged tensor: header intact
    size = os.path.getsize(os.path.join(path, files[0]))
    with open(os.path.join(path, files[0]), "r+b") as f:
        f.seek(size - 4)
        f.write(b"\x00\x00\xc0\x7f")
    store = load_importance(path)
    assert len(store) == 4
    for name, tensor in scores.items():
        if name != damaged_name:
            assert torch.equal(store[name], tensor)
    with pytest.raises(StoreError, match="non-finite") as info:
        store.top_mask(damaged_name, 0.5)
    assert damaged_name in str(info.value) and path in str(info.value)
    # a damaged header: refused at open, naming the file
    with open(os.path.join(path, files[1]), "wb") as f:
        f.write(b"not a safetensors file")
    with pytest.raises(StoreError, match=re.escape(files[1])) as info:
        load_importance(path, reopen=True)
    assert path in str(info.value)


def test_sharding(tmp_path, weight_shapes):
    scores = make_scores(weight_shapes, seed=5)
    largest = max(t.numel() * 4 for t in scores.values())
    path = save_importance(scores, str(tmp_path / "sharded"), model=None, max_shard_size=largest)
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
    save_importance(
        {"w": torch.full((4,), 3.0), "v": torch.ones(2)}, out, model=None, overwrite=True
    )
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
    for f in m["files"].values():
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
    again = save_importance(
        task_stores[1].model_scores, str(tmp_path / "again"), model=task_stores[1].model_path
    )
    assert read_manifest(again)["model_fingerprint"] == fps[task_stores[1].model_path]


def test_manifest_hub_model_and_metadata(tmp_path):
    path = save_importance(
        {"w": torch.ones(3)},
        str(tmp_path / "s"),
        model="meta-llama/Meta-Llama-3-8B",
        score="magnitude",
        note="hello",
        seed=3,
    )
    m = read_manifest(path)
    assert m["model"] == "meta-llama/Meta-Llama-3-8B"
    assert m["model_fingerprint"] in (None, "")
    assert m["score"] == "magnitude"
    blob = json.dumps(m)
    assert '"note": "hello"' in blob and '"seed": 3' in blob


# --------------------------------------------------------------------------- election


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
        # distinct float32 values that collapse into ties in bfloat16
        "near_ties": 1.0 + torch.arange(200, dtype=torch.float32) * 1e-4,
    }


def _ratios(n, g):
    ratios = [0.0, 1.0, 1 / n, 0.5, min(1.0, 2 / n), (n - 1) / n]
    ratios += torch.rand(40, generator=g).tolist()
    ratios += (torch.rand(10, generator=g) * 0.01).tolist()
    if n <= 64:
        ratios += [k / n for k in range(n + 1)]
    return ratios


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "format1"])
def test_store_top_mask_is_the_spec_on_stored_values(tmp_path, kind):
    """Zeros never, ties at the threshold all, k = 0 empty, density 1: on the values
    the store holds (bfloat16: the rounded values; format 1: sorted copies present)."""
    scores = _threshold_test_scores()
    dtype = torch.bfloat16 if kind == "bfloat16" else torch.float32
    path = save_importance(
        scores, str(tmp_path / "s"), model=None, dtype=dtype, max_shard_size=4000
    )
    if kind == "format1":
        path = write_format1_copy(path, str(tmp_path / "format1"))
        assert read_manifest(path)["format_version"] == 1
    store = load_importance(path)
    assert store.dtype == dtype
    g = torch.Generator().manual_seed(11)
    for name, s in scores.items():
        stored = s.to(dtype)
        assert torch.equal(store[name], stored)
        for ratio in _ratios(s.numel(), g):
            got = store.top_mask(name, ratio)
            assert got.dtype == torch.bool and got.shape == s.shape
            assert torch.equal(got, el.top_mask(stored, ratio)), (name, ratio)
            assert torch.equal(got, ref.top_set_fast(stored, ratio)), (name, ratio)


def test_bfloat16_store_rounds_once_to_nearest(tmp_path):
    scores = {"w": torch.rand(1000) * 10, "x": torch.tensor([0.0, 1.0, 1.00390625, 3e-39])}
    path = save_importance(scores, str(tmp_path / "s"), model=None, dtype="bfloat16")
    store = load_importance(path)
    assert read_manifest(path)["dtype"] == "bfloat16"
    for name, tensor in scores.items():
        got = store[name]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, tensor.to(torch.bfloat16))  # round to nearest even
    with safe_open(os.path.join(path, "scores.safetensors"), framework="pt") as f:
        assert f.get_tensor("w").dtype == torch.bfloat16
    # a float32 score beyond bfloat16's range would round to inf: refused
    with pytest.raises(StoreError, match="bfloat16") as info:
        save_importance(
            {"big": torch.tensor([3.4e38])}, str(tmp_path / "big"), model=None, dtype=torch.bfloat16
        )
    assert "big" in str(info.value)
    with pytest.raises(StoreError, match="float16"):
        save_importance(
            {"w": torch.ones(2)}, str(tmp_path / "f16"), model=None, dtype=torch.float16
        )
    with pytest.raises(TypeError, match="thresholds"):
        save_importance({"w": torch.ones(2)}, str(tmp_path / "t"), model=None, thresholds=True)


@pytest.mark.parametrize("dtype,per_weight", [(torch.float32, 4.01), (torch.bfloat16, 2.01)])
def test_store_size_per_weight(tmp_path, llama_family, dtype, per_weight):
    """Format 2: scores only (no sorted copies); with the fingerprint file, at most
    4.01 (float32) / 2.01 (bfloat16) bytes per weight plus the manifest."""
    shapes = {f"model.layers.{i}.w": (512, 512) for i in range(4)}
    path = save_importance(
        make_scores(shapes, seed=1), str(tmp_path / "s"), model=None, dtype=dtype
    )
    weights = 4 * 512 * 512
    data = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f != MANIFEST)
    assert data <= per_weight * weights, data / weights
    assert not any(f.startswith("thresholds") for f in os.listdir(path))


# --------------------------------------------------------------------------- format 1


def test_format1_stale_thresholds_never_change_a_mask(tmp_path, task_stores, family_state_dicts):
    """Issue 12, defect 2: a format-1 store whose scores were rewritten after its
    sorted copies were written (x0.5, which must not change any election; then
    other values) elects exactly what its scores say."""
    source = task_stores[0]
    stale = write_format1_copy(source.model_store, str(tmp_path / "stale"))
    for label, change in (("half", lambda t: t * 0.5), ("other", lambda t: t.flip(-1))):
        changed = {k: change(v).contiguous() for k, v in source.model_scores.items()}
        save_file(changed, os.path.join(stale, "scores.safetensors"), metadata={"format": "pt"})
        store = load_importance(stale, reopen=True)
        for name, values in changed.items():
            for ratio in (0.1, 0.3, 0.77):
                assert torch.equal(store.top_mask(name, ratio), el.top_mask(values, ratio)), (
                    label,
                    name,
                    ratio,
                )
    # and the merge with the x0.5 store equals the merge with the original store
    from mergekit.merge_methods import merge_state_dicts

    half = {k: (v * 0.5).contiguous() for k, v in source.model_scores.items()}
    save_file(half, os.path.join(stale, "scores.safetensors"), metadata={"format": "pt"})
    load_importance(stale, reopen=True)
    models = {"base": family_state_dicts["base"], "finetune1": family_state_dicts["finetune1"]}

    def merged(store):
        return merge_state_dicts(
            models,
            "led_merging",
            base="base",
            parameters={
                "density": {"finetune1": 0.3},
                "importance": {"finetune1": store},
                "base_importance": {"finetune1": source.base_store},
            },
        )

    a, b = merged(source.model_store), merged(stale)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_format1_store_checked_like_any_other(tmp_path, task_stores):
    path = write_format1_copy(task_stores[0].model_store, str(tmp_path / "f1"))
    store = load_importance(path)
    assert store.manifest.format_version == 1 and store.dtype == torch.float32
    for name, values in task_stores[0].model_scores.items():
        assert torch.equal(store[name], values)
    os.remove(os.path.join(path, "thresholds.safetensors"))
    with pytest.raises(StoreError, match="thresholds.safetensors.*missing"):
        load_importance(path, reopen=True)


# --------------------------------------------------------------------------- untrusted files


def _store_with(tmp_path, task_stores, edit, name="victim"):
    dst = tmp_path / name
    shutil.copytree(task_stores[0].model_store, dst)
    manifest = read_manifest(str(dst))
    edit(dst, manifest)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return str(dst)


def _point_first_weight_at(target):
    def edit(dst, manifest):
        first = next(iter(manifest["files"]))
        manifest["files"][first] = target

    return edit


@pytest.mark.parametrize(
    "target",
    [
        "/etc/hostname",
        "../other/scores.safetensors",
        "sub/scores.safetensors",
        "..",
        ".",
        "",
        "scores.safetensors\\..\\x",
        "OTHER_ABSOLUTE",
    ],
)
def test_file_entries_outside_the_store_refused(tmp_path, task_stores, family_state_dicts, target):
    """Issue 12, defect 1: no manifest entry can make a merge read outside its store."""
    other = _store_with(tmp_path, task_stores, lambda d, m: None, name="other")
    if target == "OTHER_ABSOLUTE":
        target = os.path.join(other, "scores.safetensors")
    path = _store_with(tmp_path, task_stores, _point_first_weight_at(target))
    with pytest.raises(StoreError) as info:
        load_importance(path)
    message = str(info.value)
    assert path in message and repr(target) in message
    from mergekit.merge_methods import merge_state_dicts

    models = {"base": family_state_dicts["base"], "finetune1": family_state_dicts["finetune1"]}
    with pytest.raises(StoreError):
        merge_state_dicts(
            models,
            "led_merging",
            base="base",
            parameters={
                "density": {"finetune1": 0.3},
                "importance": {"finetune1": path},
                "base_importance": {"finetune1": task_stores[0].base_store},
            },
        )


@pytest.mark.parametrize("field", ["fingerprint_file", "threshold_files"])
def test_other_file_entries_outside_the_store_refused(tmp_path, task_stores, field):
    def edit(dst, manifest):
        if field == "fingerprint_file":
            manifest["fingerprint_file"] = "../../fingerprint.safetensors"
        else:
            manifest["format_version"] = 1
            manifest.pop("dtype")
            manifest["threshold_files"] = {
                n: "/tmp/thresholds.safetensors" for n in manifest["files"]
            }

    path = _store_with(tmp_path, task_stores, edit)
    with pytest.raises(StoreError, match="plain file names") as info:
        load_importance(path)
    assert path in str(info.value)


def test_symlinks_leading_out_refused_inside_allowed(tmp_path, task_stores):
    other = _store_with(tmp_path, task_stores, lambda d, m: None, name="other")
    outside = _store_with(tmp_path, task_stores, lambda d, m: None, name="outside")
    os.remove(os.path.join(outside, "scores.safetensors"))
    os.symlink(
        os.path.join(other, "scores.safetensors"), os.path.join(outside, "scores.safetensors")
    )
    with pytest.raises(StoreError, match="symlink.*outside the store") as info:
        load_importance(outside)
    assert "scores.safetensors" in str(info.value)
    # the manifest itself, too
    linked = _store_with(tmp_path, task_stores, lambda d, m: None, name="linked")
    os.remove(os.path.join(linked, MANIFEST))
    os.symlink(os.path.join(other, MANIFEST), os.path.join(linked, MANIFEST))
    with pytest.raises(StoreError, match="symlink"):
        load_importance(linked)
    # a symlink to another file of the same store is fine
    inside = _store_with(tmp_path, task_stores, lambda d, m: None, name="inside")
    os.rename(os.path.join(inside, "scores.safetensors"), os.path.join(inside, "real.bin"))
    os.symlink("real.bin", os.path.join(inside, "scores.safetensors"))
    store = load_importance(inside)
    name = next(iter(store))
    assert torch.equal(store[name], task_stores[0].model_scores[name])


def test_referenced_file_must_be_a_regular_file(tmp_path, task_stores):
    folder = _store_with(tmp_path, task_stores, lambda d, m: None, name="folder")
    os.remove(os.path.join(folder, "scores.safetensors"))
    os.mkdir(os.path.join(folder, "scores.safetensors"))
    with pytest.raises(StoreError, match="not a regular file"):
        load_importance(folder)
    fifo = _store_with(tmp_path, task_stores, lambda d, m: None, name="fifo")
    os.remove(os.path.join(fifo, "scores.safetensors"))
    os.mkfifo(os.path.join(fifo, "scores.safetensors"))
    with pytest.raises(StoreError, match="not a regular file"):
        load_importance(fifo)  # and does not hang


VICTIM = "model.layers.0.self_attn.q_proj.weight"


def _rewrite_scores(dst, tensors, **kwargs):
    save_file(tensors, os.path.join(dst, "scores.safetensors"), **kwargs)


@pytest.mark.parametrize(
    "case,match",
    [
        ("shape", r"shape \(16, 64\); the manifest says \(32, 32\)"),
        ("dtype", "torch.float16; the manifest says torch.float32"),
        ("missing_tensor", f"holds no tensor '{VICTIM}'"),
        ("extra_tensor", "holds tensor 'stowaway'"),
        ("truncated", "truncated"),
        ("garbage", "not a valid safetensors file|corrupt"),
        ("hostile_header", "holds tensor .* in dtype \\['F32'\\]"),
        ("manifest_shape", r"says \(32, 33\)"),
        ("bad_dtype_name", "score dtype 'int8'"),
        ("shapes_vs_files", "'shapes' and 'files' list different weights"),
        ("alias", "alias 'lm_head.weight' points at 'nothing'"),
        ("v2_with_thresholds", "no threshold_files"),
        ("v1_bfloat16", "float32 scores only"),
    ],
)
def test_headers_and_manifest_must_agree(tmp_path, task_stores, case, match):
    scores = {k: v.clone() for k, v in task_stores[0].model_scores.items()}

    def edit(dst, manifest):
        if case == "shape":
            scores[VICTIM] = scores[VICTIM].reshape(16, 64).contiguous()
            _rewrite_scores(dst, scores)
        elif case == "dtype":
            scores[VICTIM] = scores[VICTIM].half()
            _rewrite_scores(dst, scores)
        elif case == "missing_tensor":
            del scores[VICTIM]
            _rewrite_scores(dst, scores)
        elif case == "extra_tensor":
            scores["stowaway"] = torch.ones(3)
            _rewrite_scores(dst, scores)
        elif case == "truncated":
            file = os.path.join(dst, "scores.safetensors")
            os.truncate(file, os.path.getsize(file) - 7)
        elif case == "garbage":
            (dst / "scores.safetensors").write_bytes(b"\xff" * 8 + b"{}")
        elif case == "hostile_header":
            header = json.dumps({VICTIM: {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}})
            blob = len(header).to_bytes(8, "little") + header.encode() + b"\0" * 4
            (dst / "scores.safetensors").write_bytes(blob)
        elif case == "manifest_shape":
            manifest["shapes"][VICTIM] = [32, 33]
        elif case == "bad_dtype_name":
            manifest["dtype"] = "int8"
        elif case == "shapes_vs_files":
            del manifest["shapes"][VICTIM]
        elif case == "alias":
            manifest["aliases"] = {"lm_head.weight": "nothing"}
        elif case == "v2_with_thresholds":
            manifest["threshold_files"] = {VICTIM: "scores.safetensors"}
        elif case == "v1_bfloat16":
            manifest["format_version"] = 1
            manifest["dtype"] = "bfloat16"

    path = _store_with(tmp_path, task_stores, edit)
    with pytest.raises(StoreError, match=match) as info:
        load_importance(path)
    assert path in str(info.value)


def test_truncated_after_open_names_store_file_and_weight(tmp_path, task_stores):
    """Issue 12's weak spot: a score file cut short is one StoreError naming the
    store, the file and the weight, never a raw traceback (or a SIGBUS)."""
    path = _store_with(tmp_path, task_stores, lambda d, m: None)
    store = load_importance(path)
    file = os.path.join(path, "scores.safetensors")
    os.truncate(file, os.path.getsize(file) // 2)
    with pytest.raises(StoreError) as info:
        store.top_mask(VICTIM, 0.3, model="finetune1")
    message = str(info.value)
    assert path in message and "scores.safetensors" in message and VICTIM in message


# --------------------------------------------------------------------------- one version


def test_store_replaced_after_open_is_never_mixed(tmp_path, task_stores):
    """Issue 12, defect 4: after another process replaced the store, neither the
    opened object nor opening the path again (what the merge does per weight)
    reads the new version as if it were the old: both fail, naming the store."""
    scores = task_stores[0].model_scores
    path = save_importance(scores, str(tmp_path / "s"), model=None)
    store = load_importance(path)
    assert load_importance(path) is store
    newer = save_importance(
        {k: v + 1 for k, v in scores.items()}, str(tmp_path / "new"), model=None
    )
    replace_directory(newer, path)  # what another process's overwrite does
    with pytest.raises(StoreError, match="changed while in use") as info:
        store.scores(VICTIM, model="finetune1")
    assert path in str(info.value) and VICTIM in str(info.value)
    with pytest.raises(StoreError, match="changed on disk") as info:
        load_importance(path)
    assert path in str(info.value)
    fresh = load_importance(path, reopen=True)
    assert torch.equal(fresh[VICTIM], scores[VICTIM] + 1)
    assert load_importance(path) is fresh


def test_store_modified_in_place_fails_the_read(tmp_path, task_stores):
    path = save_importance(task_stores[0].model_scores, str(tmp_path / "s"), model=None)
    store = load_importance(path)
    with open(os.path.join(path, "scores.safetensors"), "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x00\x00")
        os.utime(f.fileno(), ns=(0, 10**18))
    with pytest.raises(StoreError, match="changed while in use") as info:
        store.scores(VICTIM, model="finetune1")
    assert path in str(info.value) and "scores.safetensors" in str(info.value)


def test_merge_fails_when_a_store_is_replaced_midway(
    tmp_path, task_stores, family_state_dicts, monkeypatch
):
    """A store overwritten while the merge runs: the merge stops with an error naming
    the store instead of merging some weights from each version."""
    from mergekit.merge_methods import merge_state_dicts

    path = save_importance(
        task_stores[0].model_scores, str(tmp_path / "s"), model=task_stores[0].model_path
    )
    newer = save_importance(
        {k: v * 2 for k, v in task_stores[0].model_scores.items()},
        str(tmp_path / "newer"),
        model=task_stores[0].model_path,
    )
    original = ImportanceStore.top_mask
    calls = []

    def top_mask_then_overwrite(self, *args, **kwargs):
        calls.append(self.path)
        if len(calls) == 6:
            replace_directory(newer, path)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImportanceStore, "top_mask", top_mask_then_overwrite)
    models = {"base": family_state_dicts["base"], "finetune1": family_state_dicts["finetune1"]}
    with pytest.raises(StoreError, match="changed on disk") as info:
        merge_state_dicts(
            models,
            "led_merging",
            base="base",
            parameters={
                "density": {"finetune1": 0.3},
                "importance": {"finetune1": path},
                "base_importance": {"finetune1": task_stores[0].base_store},
            },
        )
    assert path in str(info.value)
    assert len(calls) < 2 * len(task_stores[0].model_scores)


# --------------------------------------------------------------------------- hand-written


def test_same_store_opened_twice_is_consistent(task_stores):
    a = load_importance(task_stores[0].model_store)
    b = load_importance(task_stores[0].model_store)
    assert isinstance(a, ImportanceStore)
    name = next(iter(a))
    assert torch.equal(a[name], b[name])


def test_hand_written_store_without_fingerprint_or_checksums_loads(tmp_path, task_stores):
    """A store written by another tool: scores + manifest, nothing else."""
    src = task_stores[0].model_store
    dst = tmp_path / "hand"
    dst.mkdir()
    scores = task_stores[0].model_scores
    save_file({k: v.contiguous() for k, v in scores.items()}, str(dst / "scores.safetensors"))
    manifest = read_manifest(src)
    manifest["files"] = {k: "scores.safetensors" for k in scores}
    for key in ("fingerprint_file", "checksums", "dtype"):
        manifest.pop(key, None)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    store = load_importance(str(dst))
    for name, tensor in scores.items():
        assert torch.equal(store[name], tensor)
        assert torch.equal(store.top_mask(name, 0.3), ref.top_set_fast(tensor, 0.3))
    shutil.rmtree(dst)


def test_pinned_file_reads_large_tensors_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(store_files, "_MAX_READ", 1000)
    values = torch.rand(3, 1001)
    path = save_importance({"w": values}, str(tmp_path / "s"), model=None)
    assert torch.equal(ImportanceStore(path)["w"], values)


def test_store_files_get_the_umask_mode_not_owner_only(tmp_path):
    path = save_importance({"w": torch.rand(4)}, str(tmp_path / "s"), model=None)
    modes = {f: os.stat(os.path.join(path, f)).st_mode & 0o777 for f in os.listdir(path)}
    assert len(set(modes.values())) == 1, modes


def test_scores_handed_out_never_share_the_scratch_buffer(tmp_path):
    """top_mask reads into a reused buffer; tensors returned to callers are their own."""
    scores = {"a": torch.rand(300), "b": torch.rand(300) + 2}
    path = save_importance(scores, str(tmp_path / "s"), model=None)
    store = load_importance(path)
    a = store["a"]
    assert torch.equal(store.top_mask("b", 0.5), el.top_mask(scores["b"], 0.5))
    assert torch.equal(store.top_mask("a", 0.5), el.top_mask(scores["a"], 0.5))
    assert torch.equal(a, scores["a"]) and torch.equal(store.scores("b"), scores["b"])


def test_store_in_a_hub_cache_snapshot_may_link_to_its_blobs(tmp_path, task_stores):
    """huggingface_hub's cache keeps files as blobs/<hash> and links them from
    snapshots/<commit>/...: a store there is read; a link to another repo's blob is not."""
    repo = tmp_path / "hub" / "models--org--stores"
    store = repo / "snapshots" / "0123abcd" / "safety" / "instruct"
    store.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for index, name in enumerate(sorted(os.listdir(task_stores[0].model_store))):
        blob = repo / "blobs" / f"blob{index}"
        shutil.copy(os.path.join(task_stores[0].model_store, name), blob)
        os.symlink(os.path.relpath(blob, store), store / name)
    loaded = load_importance(str(store))
    assert torch.equal(loaded[VICTIM], task_stores[0].model_scores[VICTIM])
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    shutil.copy(store / "scores.safetensors", other / "stolen")
    os.remove(store / "scores.safetensors")
    os.symlink(os.path.relpath(other / "stolen", store), store / "scores.safetensors")
    with pytest.raises(StoreError, match="outside the store folder"):
        load_importance(str(store), reopen=True)
