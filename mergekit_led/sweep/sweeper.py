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

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

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

    @field_validator("metrics")
    @classmethod
    def _measured(cls, metrics: Dict[str, float]) -> Dict[str, float]:
        """What an evaluation can have measured: finite numbers, shares in [0, 1]."""
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise ValueError(f"metric {name} is {value}, not a finite number")
            if _is_share(name) and not 0 <= value <= 1:
                raise ValueError(f"metric {name} is {value}, not a share in [0, 1]")
            if name.endswith("_answer_nll") and value < 0:
                raise ValueError(f"metric {name} is {value}, a negative log-likelihood")
        return metrics

    def to_json(self) -> Dict[str, Any]:
        return self.model_dump()


def _is_share(metric: str) -> bool:
    return metric in ("harmful_compliance", "over_refusal", "utility") or metric.endswith(
        ("_accuracy", "_token_accuracy")
    )


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
    report: Optional[Callable[[str], None]] = None,
) -> SweepResult:
    """Sweep ``settings`` of ``config`` (a ``models:`` config as a dict) and write
    the sweep's files into ``out``. ``spec``: an ``EvalSpec``. Everything cheap
    is checked before any store is computed or setting merged: every setting's
    config, the output folder, the evaluation sets; a resume must be the same
    sweep (``sweep.identity``)."""
    from filelock import FileLock, Timeout

    from mergekit_led.environment import resolve_device

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
    check_settings(config, settings)
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
    device = resolve_device(options.device)
    evaluator = _evaluator(config, spec, options)  # a missing set fails here, in seconds
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
        _claim(out, _identity(config, settings, spec, rule, options, evaluator, device))
        done = _read_rows(out, {s.key: _expected(config, s, options) for s in settings})
        todo = [(i, s) for i, s in enumerate(settings) if s.key not in done]
        if done:
            say(f"resuming: {len(done)} of {len(settings)} settings already in {ROWS}")
        rows_by_key = dict(done)
        if todo:
            for row in _sweep(config, todo, evaluator, device, out, options, say):
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


def check_settings(config: Dict[str, Any], settings: Sequence[Setting]) -> None:
    """Every setting's config is one mergekit accepts (a method block without a
    required parameter, a value of the wrong type): refused before any work."""
    from mergekit.config import MergeConfiguration

    names = ModelNames(model_names(config))
    for index, setting in enumerate(settings):
        try:
            MergeConfiguration.model_validate(setting_config(config, setting))
        except ValueError as error:  # SweepError, or pydantic's ValidationError
            reason = " ".join(str(error).split())
            raise SweepError(
                f"Setting {index} ({setting.method}: {setting.describe(names.short)}) is not a "
                f"valid config: {reason}"
            ) from error


def _evaluator(config: Dict[str, Any], spec, options: SweepOptions):
    from mergekit_led.evaluation import Evaluator

    return Evaluator(spec, _tokenizer(config, options), batch_size=options.batch_size)


def _identity(config, settings, spec, rule, options: SweepOptions, evaluator, device):
    from mergekit_led.sweep.identity import (
        SweepIdentity,
        eval_data_digests,
        location_data_digests,
        model_fingerprints,
    )

    return SweepIdentity(
        config=config,
        settings=[s.as_dict() for s in settings],
        eval=spec.model_dump(mode="json"),
        rule=rule.__dict__,
        options={
            "seed": options.seed,
            "device": device.type,
            "batch_size": evaluator.batch_size,
            "allow_bad_tokenization": options.allow_bad_tokenization,
        },
        eval_data=eval_data_digests(evaluator.sets),
        location_data=location_data_digests(config),
        models=model_fingerprints(config, options.trust_remote_code),
    )


def _expected(config: Dict[str, Any], setting: Setting, options: SweepOptions) -> Dict[str, Any]:
    """What a row of ``setting`` holds besides its measurements (as read back)."""
    return json.loads(
        json.dumps(
            {
                "method": setting.method,
                "setting": setting.as_dict(),
                "config": row_config(config, setting, options),
            },
            default=str,
        )
    )


def row_config(config: Dict[str, Any], setting: Setting, options: SweepOptions) -> Dict[str, Any]:
    """The setting as the user's config, with the seed its merge used: ``best.yml``
    reproduces the row (DARE's drops are random)."""
    user = setting_config(config, setting)
    user["random_seed"] = options.seed
    return user


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


def _claim(out: str, identity) -> None:
    """Write ``sweep.json``, or check that the one there is this sweep's."""
    from mergekit_led.atomic import write_text
    from mergekit_led.sweep.identity import check_same_sweep

    path = os.path.join(out, HEADER)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if not isinstance(old, dict) or not isinstance(old["digest"], str):
                raise TypeError("no digest")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SweepError(
                f"{path} is not a sweep header written by mergekit-led; sweep into another folder."
            ) from error
        check_same_sweep(path, old, identity)
        return
    header = {"format": FORMAT, "digest": identity.digest(), "identity": identity.as_json()}
    write_text(path, json.dumps(header, indent=2, sort_keys=True) + "\n")


def _read_rows(out: str, expected: Dict[str, Dict[str, Any]]) -> Dict[str, SweepRow]:
    """The finished rows of an earlier run (``expected``: per setting key, what
    its row holds besides measurements); a torn last line (a kill while
    appending) is dropped, any other bad line is an error: a row that is not
    one, a measurement no evaluation gives (NaN, a share above 1), a setting
    or config that is not the grid's."""
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
            reason = ""
            if isinstance(error, ValidationError):
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                reason = f" ({where}: {first['msg'].removeprefix('Value error, ')})"
            raise SweepError(
                f"{path} line {number} is not a sweep row{reason}; was the file edited?"
            ) from error
        wanted = expected.get(row.key)
        if wanted is None:
            continue
        written = {name: json.loads(json.dumps(getattr(row, name))) for name in wanted}
        if written != wanted:
            changed = next(name for name in wanted if written[name] != wanted[name])
            raise SweepError(
                f"{path} line {number} is not a sweep row (its {changed} is not the one of "
                f"setting {row.key}); was the file edited?"
            )
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


def _sweep(config, todo, evaluator, device, out: str, options: SweepOptions, say):
    import torch
    from mergekit.config import MergeConfiguration

    names = ModelNames(model_names(config))
    resolved = _with_stores(config, [s for _, s in todo], options, say)
    scratch_root = scratch.scratch_root(config, out, options.scratch)
    scratch.remove_killed_scratch(scratch_root, say)
    for number, (index, setting) in enumerate(todo, start=1):
        text = setting.describe(names.short)
        say(f"[{number}/{len(todo)}] {setting.method}: {text}")
        user = row_config(config, setting, options)
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
