"""``mergekit-led sweep``: merge and evaluate every setting of a grid, resumably.

The importance stores are computed once (the one-command flow and its cache);
the evaluation sets are loaded and tokenised once; then each setting is merged
by ``mergekit_led.merge.merge_config`` into a scratch folder (on a RAM disk
when one has room), loaded, evaluated and removed. Each finished setting is
appended to ``OUT/sweep.jsonl`` at once (flushed and fsynced), so a killed
sweep resumes where it stopped; ``OUT/.sweep.lock`` keeps a second sweep off
the same folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mergekit_led.errors import SweepError
from mergekit_led.sweep import scratch
from mergekit_led.sweep.grid import ModelNames, Setting, setting_config
from mergekit_led.sweep.selection import SelectionRule

LOG = logging.getLogger(__name__)

ROWS = "sweep.jsonl"
HEADER = "sweep.json"
LOCK = ".sweep.lock"
FORMAT = 1


@dataclass
class SweepOptions:
    device: str = "cpu"
    cache_dir: Optional[str] = None  # the store cache (default: the flow's own)
    scratch: Optional[str] = None  # where settings are merged (default: RAM disk or OUT)
    batch_size: Optional[int] = None
    max_settings: int = 64
    seed: int = 0  # mergekit's random seed (DARE's drops)
    progress: bool = True
    allow_bad_tokenization: bool = False
    trust_remote_code: bool = False


class SweepRow(BaseModel):
    """One finished setting: a line of ``sweep.jsonl`` (validated when read back,
    since the file may have been edited)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    key: str
    method: str
    text: str
    setting: Dict[str, Any]
    config: Dict[str, Any]  # the setting as the user's config (importance_data kept)
    metrics: Dict[str, float]
    seconds: Dict[str, float]

    def to_json(self) -> Dict[str, Any]:
        return self.model_dump()


@dataclass
class SweepResult:
    out: str
    rows: List[SweepRow]
    rule: SelectionRule
    selected: Optional[int]  # index into rows
    per_method: Dict[str, Optional[int]] = field(default_factory=dict)
    paths: Dict[str, str] = field(default_factory=dict)
    computed: int = 0  # settings merged and evaluated by this run (not resumed)


def run_sweep(
    config: Dict[str, Any],
    settings: Sequence[Setting],
    spec,
    out: str,
    *,
    rule: SelectionRule,
    options: Optional[SweepOptions] = None,
    identity: Optional[Dict[str, Any]] = None,
    report: Optional[Callable[[str], None]] = None,
) -> SweepResult:
    """Sweep ``settings`` of ``config`` (a ``models:`` config as a dict) and write
    the sweep's files into ``out``. ``spec``: an ``EvalSpec``. ``identity``: what
    must not change between a run and its resumption (default: config, settings,
    evaluation spec and rule)."""
    from filelock import FileLock, Timeout

    options = options or SweepOptions()
    say = report or LOG.info
    if not settings:
        raise SweepError("The grid is empty: it has no setting to merge.")
    if len(settings) > options.max_settings:
        raise SweepError(
            f"The grid has {len(settings)} settings, more than --max-settings "
            f"{options.max_settings}; shorten its lists or raise --max-settings."
        )
    _check_models_config(config)
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise SweepError(f"Sweep output {out} exists and is not a folder.")
    foreign = os.path.isdir(out) and set(os.listdir(out)) - {LOCK}
    if foreign and not os.path.exists(os.path.join(out, HEADER)):
        # best.yml, sweep.md ... would replace files of the same name that no sweep wrote.
        raise SweepError(
            f"Sweep output {out} holds files and no {HEADER} (it is not an earlier sweep's "
            "folder); sweep into a new or empty folder."
        )
    os.makedirs(out, exist_ok=True)
    lock = FileLock(os.path.join(out, LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepError(
            f"Another sweep is running on {out} (lock {os.path.join(out, LOCK)}); wait for it "
            "to finish or sweep into another folder."
        ) from None  # cause: filelock's Timeout adds nothing
    try:
        identity = identity or {
            "config": config,
            "settings": [s.as_dict() for s in settings],
            "eval": spec.model_dump(mode="json"),
            "rule": rule.__dict__,
        }
        _claim(out, identity)
        done = _read_rows(out, {s.key for s in settings})
        todo = [(i, s) for i, s in enumerate(settings) if s.key not in done]
        if done:
            say(f"resuming: {len(done)} of {len(settings)} settings already in {ROWS}")
        rows_by_key = dict(done)
        if todo:
            for row in _sweep(config, todo, spec, out, options, say):
                rows_by_key[row.key] = row
        rows = [rows_by_key[s.key] for s in settings]
        for index, row in enumerate(rows):
            row.index = index
        from mergekit_led.sweep.selection import choose, per_method
        from mergekit_led.sweep.sweep_report import write_sweep_report

        metrics = [row.metrics for row in rows]
        result = SweepResult(
            out,
            rows,
            rule,
            choose(rule, metrics),
            per_method(rule, [row.method for row in rows], metrics),
            computed=len(todo),
        )
        result.paths = write_sweep_report(result, spec)
        return result
    finally:
        lock.release()


def _check_models_config(config: Dict[str, Any]) -> None:
    if not isinstance(config, dict) or not config.get("models") or config.get("slices"):
        raise SweepError(
            "A sweep takes a config with `models:` (not `slices:`): each setting sets "
            "per-model parameters of those models."
        )
    if not config.get("base_model"):
        raise SweepError("A sweep compares task-vector merges: set `base_model:` in the config.")


def model_names(config: Dict[str, Any]) -> List[str]:
    """The fine-tuned models of ``config`` (its ``models:`` less the base)."""
    base = config.get("base_model")
    return [m["model"] for m in config.get("models") or [] if m.get("model") != base]


# --------------------------------------------------------------------------- resume


def _digest(identity: Dict[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _claim(out: str, identity: Dict[str, Any]) -> None:
    """Write ``sweep.json``, or check that the one there is this sweep's."""
    from mergekit_led.atomic import write_text

    path = os.path.join(out, HEADER)
    digest = _digest(identity)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            old_digest = old["digest"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SweepError(
                f"{path} is not a sweep header written by mergekit-led; sweep into another folder."
            ) from error
        if old_digest != digest:
            raise SweepError(
                f"{out} holds a sweep of another config, grid, evaluation or rule ({path}); "
                "sweep into another folder to keep both."
            )
        return
    header = {"format": FORMAT, "digest": digest, **identity}
    write_text(path, json.dumps(header, indent=2, sort_keys=True, default=str) + "\n")


def _read_rows(out: str, keys: set) -> Dict[str, SweepRow]:
    """The finished rows of an earlier run; a torn last line (a kill while
    appending) is dropped, any other bad line is an error."""
    path = os.path.join(out, ROWS)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows: Dict[str, SweepRow] = {}
    torn = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = SweepRow.model_validate(json.loads(line))
        except (ValueError, TypeError, ValidationError) as error:
            if number == len(lines):  # no newline after it: the append was cut short
                torn = True
                continue
            raise SweepError(
                f"{path} line {number} is not a sweep row; was the file edited?"
            ) from error
        if row.key in keys:
            rows[row.key] = row
    if torn:
        from mergekit_led.atomic import write_text

        write_text(path, "".join(json.dumps(r.to_json()) + "\n" for r in rows.values()))
    return rows


def _append(out: str, row: SweepRow) -> None:
    with open(os.path.join(out, ROWS), "a", encoding="utf-8") as f:
        f.write(json.dumps(row.to_json(), default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- the loop


def _sweep(config, todo, spec, out: str, options: SweepOptions, say):
    import torch
    from mergekit.config import MergeConfiguration

    from mergekit_led.environment import resolve_device
    from mergekit_led.evaluation import Evaluator

    device = resolve_device(options.device)
    names = ModelNames(model_names(config))
    resolved = _with_stores(config, [s for _, s in todo], options, say)
    tokenizer = _tokenizer(config, options)
    evaluator = Evaluator(spec, tokenizer, batch_size=options.batch_size)
    scratch_root = scratch.scratch_root(config, out, options.scratch)
    scratch.remove_killed_scratch(scratch_root, say)
    for number, (index, setting) in enumerate(todo, start=1):
        text = setting.describe(names.short)
        say(f"[{number}/{len(todo)}] {setting.method}: {text}")
        user = setting_config(config, setting)
        merged_config = setting_config(resolved, setting)
        try:
            parsed = MergeConfiguration.model_validate(merged_config)
        except ValueError as error:
            reason = " ".join(str(error).split())
            raise SweepError(
                f"Setting {index} ({setting.method}: {text}) is not a valid config: {reason}"
            ) from error
        holder = scratch.setting_folder(scratch_root, index)
        folder = os.path.join(holder, "model")
        try:
            clock = time.perf_counter()
            _merge(parsed, merged_config, folder, device, options)
            merged_at = time.perf_counter()
            model = _load(folder, device, options)
            loaded_at = time.perf_counter()
            result = evaluator.evaluate(model, name=f"setting {index}", device=device)
            done_at = time.perf_counter()
            del model
        finally:
            shutil.rmtree(holder, ignore_errors=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row = SweepRow(
            index=index,
            key=setting.key,
            method=setting.method,
            text=text,
            setting=setting.as_dict(),
            config=user,
            metrics=result.metrics(),
            seconds={
                "merge": round(merged_at - clock, 3),
                "load": round(loaded_at - merged_at, 3),
                "evaluate": round(done_at - loaded_at, 3),
            },
        )
        _append(out, row)
        yield row
    if scratch_root == os.path.join(out, ".scratch"):
        try:
            os.rmdir(scratch_root)  # only when empty: nothing but our own merges was there
        except OSError:
            pass


def _with_stores(config, settings, options: SweepOptions, say) -> Dict[str, Any]:
    """``config`` with every fine-tuned model's two store paths filled in (computed
    once, or found in the cache), when a setting of the grid is LED's."""
    from mergekit.config import MergeConfiguration

    from mergekit_led.core.parameters import METHOD_NAME
    from mergekit_led.prepare.cache import StoreCache
    from mergekit_led.prepare.config_prepare import needs_preparing, prepare_config

    led = next((s for s in settings if s.method == METHOD_NAME), None)
    if led is None:
        return config
    led_config = MergeConfiguration.model_validate(setting_config(config, led))
    if not needs_preparing(led_config):
        return config
    prepared = prepare_config(
        led_config,
        cache=StoreCache(options.cache_dir),
        run={
            "device": options.device,
            "allow_bad_tokenization": options.allow_bad_tokenization,
            "trust_remote_code": options.trust_remote_code,
        },
        report=say,
        progress=options.progress,
        command="mergekit-led sweep",
    )
    resolved = json.loads(json.dumps(config))
    # prepare_config keeps the models in CONFIG's order (and spelling, revisions included).
    for entry, definition in zip(resolved["models"], prepared.merge_config.models):
        parameters = definition.parameters or {}
        if "importance" in parameters:
            entry.setdefault("parameters", {}).update(
                {role: parameters[role] for role in ("importance", "base_importance")}
            )
    return resolved


def _tokenizer(config, options: SweepOptions):
    from transformers import AutoTokenizer

    source = config.get("tokenizer_source") or config["base_model"]
    if isinstance(source, dict) or source in ("base", "union"):
        source = config["base_model"]
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError) as error:
        raise SweepError(
            f"Cannot load the tokenizer of {source}: {' '.join(str(error).split())}"
        ) from error


def _merge(parsed, merged_config, folder: str, device, options: SweepOptions) -> None:
    from mergekit.options import MergeOptions

    from mergekit_led.merge import merge_config

    merge_options = MergeOptions(
        device=str(device.type),
        copy_tokenizer=False,  # the sweep's tokenizer is loaded once
        lazy_unpickle=False,
        write_model_card=False,
        quiet=True,
        random_seed=options.seed,
        trust_remote_code=options.trust_remote_code,
    )
    source = yaml.safe_dump(merged_config, sort_keys=False)
    merge_config(parsed, folder, options=merge_options, config_source=source)


def _load(folder: str, device, options: SweepOptions):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per setting would bury the sweep's lines
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype="auto", trust_remote_code=options.trust_remote_code
    )
    return model.to(device).eval()
