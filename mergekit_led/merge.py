"""``mergekit-led merge``: mergekit's own YAML merge, checked first and written atomically.

The LED-Merging card section is built from the election statistics the merge
method records while mergekit merges (``method.recording``): no store is read
a second time.

The output folder (``docs/security.md``):

- it is never an input: not a local model of the config (base, any model,
  LoRA, tokenizer source), not an importance store, and neither inside nor a
  parent of one; never a file or a symbolic link;
- the merge is written in a staging area beside it and replaces the folder in
  one step once it is complete (mergekit's card and the LED section included):
  the files an earlier merge wrote (its record ``MERGE_RECORD``, or mergekit's
  own file names for an output without one) are replaced by the new merge's,
  so no shard of an earlier merge survives next to new ones, and everything
  else in the folder (other files, subfolders such as ``.git``) is carried over
  unchanged (hard-linked, or copied where links are impossible);
- an existing folder that is neither empty nor an earlier merge output (one
  holding ``mergekit_config.yml``, which mergekit writes with every card) is
  written only with ``overwrite=True`` (``--overwrite``), and a folder holding
  model weights no earlier merge wrote is never written.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
from typing import Dict, Iterator, List, Optional, Set, Tuple

from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

from mergekit_led.analysis.config_analysis import from_recorded
from mergekit_led.analysis.model_card import add_led_section
from mergekit_led.atomic import replace_directory, staging_area
from mergekit_led.config.preflight import preflight
from mergekit_led.config.walker import ConfigSource, ConfigView, read_config
from mergekit_led.console import without_torch_dtype_warning
from mergekit_led.core.parameters import METHOD_NAME, STORE_PARAMETERS
from mergekit_led.environment import check_device
from mergekit_led.errors import ConfigError
from mergekit_led.local_paths import treat_existing_paths_as_local
from mergekit_led.method.recording import recording_statistics

LOG = logging.getLogger(__name__)

# mergekit writes this with every merge's card: a folder holding it is an earlier
# merge output, which a merge may replace without --overwrite.
MERGE_MARKER = "mergekit_config.yml"
# What ``mergekit-led merge`` wrote into its output folder, recorded there, so a
# later merge removes exactly those files and nothing a user put beside them.
MERGE_RECORD = ".mergekit-led-output.json"
MERGE_RECORD_FORMAT = "mergekit-led-merge-output"
# Model weights and their indexes as mergekit names them: two sets side by side
# are read differently by transformers and mergekit, so a folder holding weights
# no earlier merge wrote is never merged into.
WEIGHT_FILE_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)
# For an earlier output without a record (written by plain mergekit-yaml or an
# older mergekit-led): the files mergekit itself writes (weights, config, card,
# tokenizer and processor files), taken as that merge's.
MERGEKIT_OUTPUT_FILES = WEIGHT_FILE_PATTERNS + (
    MERGE_MARKER,
    "README.md",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


def merge_config(
    config: MergeConfiguration,
    out_path: str,
    options: Optional[MergeOptions] = None,
    config_source: Optional[str] = None,
    *,
    overwrite: bool = False,
) -> str:
    """Run mergekit's merge after LED's config checks, into a staging area that
    replaces ``out_path`` whole only once the merge is complete."""
    options = options or MergeOptions()
    out_path = os.path.abspath(out_path)
    treat_existing_paths_as_local()  # the card must not ask the Hub about models/safety
    check_merge_device(options)
    view = read_config(config)  # walked once; every check below reads this
    check_output_path(view, out_path, overwrite=overwrite)
    check_input_models(config)
    preflight(view)
    is_led = config.merge_method == METHOD_NAME
    # The statistics feed the card section only: without a card (a sweep's scratch
    # merges, --no-write-model-card) the kernel counts nothing.
    write_led_section = is_led and options.write_model_card
    with staging_area(out_path) as area:
        recording = recording_statistics() if write_led_section else contextlib.nullcontext({})
        with recording as recorded:
            # run_merge normalises the config in place (models -> modules -> slices);
            # the card section reads the config as the user wrote it.
            with without_torch_dtype_warning():
                run_merge(
                    config.model_copy(deep=True),
                    area.path,
                    options=options,
                    config_source=config_source,
                )
        if write_led_section:
            _add_card_section(view, area.path, recorded, out_path)
        _write_record(area.path)
        # The folder may have changed during the merge: judge it again just before.
        try:
            check_output_path(view, out_path, overwrite=overwrite)
        except ConfigError as error:
            kept = _keep_aside(area.path, out_path)
            raise ConfigError(
                f"{error} The finished merge was kept at {kept}."
            ) from None  # cause: the same error, extended
        carried = carry_over(out_path, area.path)
        if carried:
            LOG.info(
                "Kept %d entries of %s besides the merge: %s",
                len(carried),
                out_path,
                ", ".join(carried[:10]),
            )
        replace_directory(area.path, out_path)
    return out_path


def _add_card_section(view: ConfigView, folder: str, recorded, out_path: str) -> None:
    """The LED-Merging card section; a failure here never costs the merge."""
    try:
        add_led_section(view.config, folder, from_recorded(view, recorded))
    except Exception as error:  # the merge is done: report, keep it
        LOG.warning(
            "The merge into %s is complete, but its LED-Merging card section could not "
            "be written (%s: %s); the model card has mergekit's section only. Add it later "
            "with `mergekit-led card CONFIG %s`.",
            out_path,
            type(error).__name__,
            error,
            out_path,
        )


def _keep_aside(folder: str, out_path: str) -> str:
    """Move a finished merge that may not replace ``out_path`` to a free sibling."""
    for number in range(1, 1000):
        candidate = f"{out_path}.new" if number == 1 else f"{out_path}.new-{number}"
        if not os.path.lexists(candidate):
            os.rename(folder, candidate)
            return candidate
    raise ConfigError(f"No free name beside {out_path} to keep the finished merge.")


# --------------------------------------------------------------------------- checks


def check_merge_device(options: MergeOptions) -> None:
    """mergekit's ``--cuda``/``--device``/``--read-to-gpu``/``--multi-gpu`` on a
    machine without that device: refused before any work."""
    device = options.device or "cpu"
    check_device(device, asked="--cuda" if options.cuda else None)
    for flag, asked in (("--read-to-gpu", options.read_to_gpu), ("--multi-gpu", options.multi_gpu)):
        if asked:
            check_device("cuda", asked=flag)


def check_output_path(config: ConfigSource, out_path: str, *, overwrite: bool) -> None:
    """Refuse an output path that would overwrite an input or unrelated files."""
    out_path = os.path.abspath(out_path)
    if os.path.islink(out_path):
        raise ConfigError(
            f"Output path {out_path} is a symbolic link (to {os.path.realpath(out_path)}); "
            "give the folder itself."
        )
    if os.path.lexists(out_path) and not os.path.isdir(out_path):
        raise ConfigError(f"Output path {out_path} is a file, not a folder; choose a folder path.")
    check_not_an_input(config, out_path, what="Output folder", writer="a merge")
    if not os.path.isdir(out_path):
        return
    entries = os.listdir(out_path)
    # mergekit writes mergekit_config.yml with every merge's card. A folder with
    # only config.json and weights may be a model the user downloaded: not taken.
    if entries and MERGE_MARKER not in entries and not overwrite:
        raise ConfigError(
            f"Output folder {out_path} already exists and is not an earlier merge output "
            f"(it holds no {MERGE_MARKER}). Choose another output folder, or pass "
            "--overwrite to write the merge there (files named like the merge's are "
            "replaced, everything else is kept)."
        )
    earlier = earlier_merge_files(out_path)
    foreign = sorted(n for n in entries if _matches(n, WEIGHT_FILE_PATTERNS) and n not in earlier)
    if foreign:
        raise ConfigError(
            f"Output folder {out_path} holds model weights no earlier merge wrote there "
            f"({', '.join(foreign[:3])}): the merge would leave two sets of weights side "
            "by side (transformers and mergekit would load different ones), and removing "
            "them would delete files it did not write. Move them away or choose another "
            "output folder."
        )


def earlier_merge_files(folder: str) -> Set[str]:
    """The names in ``folder`` an earlier merge wrote (the new merge replaces them):
    those its record lists; for an earlier output without a record, the files
    mergekit writes; none for any other folder."""
    try:
        # Files and links only: a merge writes no folder, so a folder is never dropped.
        entries = {
            name
            for name in os.listdir(folder)
            if os.path.islink(os.path.join(folder, name))
            or not os.path.isdir(os.path.join(folder, name))
        }
    except OSError:
        return set()
    if MERGE_RECORD in entries:
        try:
            with open(os.path.join(folder, MERGE_RECORD), encoding="utf-8") as f:
                record = json.load(f)
            listed = record["files"] if record.get("format") == MERGE_RECORD_FORMAT else []
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            listed = []  # unreadable: nothing counts as the merge's, nothing is removed
        return {
            name
            for name in listed
            if isinstance(name, str) and name in entries and os.path.basename(name) == name
        }
    if MERGE_MARKER in entries:
        return {name for name in entries if _matches(name, MERGEKIT_OUTPUT_FILES)}
    return set()


def _write_record(folder: str) -> None:
    """Record every entry of a finished merge's folder, before anything is carried in."""
    names = sorted(set(os.listdir(folder)) | {MERGE_RECORD})
    record = {"format": MERGE_RECORD_FORMAT, "version": 1, "files": names}
    with open(os.path.join(folder, MERGE_RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def check_not_an_input(config: ConfigSource, path: str, *, what: str, writer: str) -> None:
    """Refuse ``path`` when it is, holds or sits inside a local input of ``config``
    (models, LoRA adapters, tokenizer source, importance stores)."""
    real = os.path.realpath(path)
    for protected, role in protected_inputs(config).items():
        if _overlaps(real, protected):
            relation = (
                "is"
                if real == protected
                else "is inside"
                if _contains(protected, real)
                else "contains"
            )
            raise ConfigError(
                f"{what} {path} {relation} {role} {protected}: {writer} never writes "
                "into its inputs. Choose another folder."
            )


def carry_over(old: str, new: str) -> List[str]:
    """Link (or copy) every entry of folder ``old`` into folder ``new``, except
    what an earlier merge wrote (``earlier_merge_files``) and names the new merge
    wrote itself.

    Hard links leave the originals in place until ``new`` replaces ``old``, so
    a run killed in between loses nothing. Returns the names carried over.
    """
    if not os.path.isdir(old):
        return []
    earlier = earlier_merge_files(old)
    carried = []
    for name in sorted(os.listdir(old)):
        source, target = os.path.join(old, name), os.path.join(new, name)
        if name in earlier or os.path.lexists(target):
            continue
        _link_tree(source, target)
        carried.append(name)
    return carried


def _link_tree(source: str, target: str) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    elif os.path.isdir(source):
        os.mkdir(target)
        shutil.copystat(source, target)
        for name in os.listdir(source):
            _link_tree(os.path.join(source, name), os.path.join(target, name))
    elif os.path.isfile(source):
        try:
            os.link(source, target)
        except OSError:  # a filesystem without hard links: copy
            shutil.copy2(source, target)
    else:
        raise ConfigError(
            f"{source} in the output folder is neither a file, a folder nor a link "
            "(a socket or device?); move it out of the output folder."
        )


def check_input_models(config: MergeConfiguration) -> None:
    """Open the header of every safetensors file of every local input model, so
    a truncated or foreign file is named before the merge instead of failing
    (with no file named) part way through it."""
    from safetensors import safe_open

    from mergekit_led.store.fingerprint import check_unambiguous

    for reference in config.referenced_models():
        path = reference.model.path
        if not os.path.isdir(path):
            continue  # a hub model: mergekit downloads and checks it
        check_unambiguous(path)
        for name in _safetensors_files(path):
            file = os.path.join(path, name)
            try:
                with safe_open(file, framework="pt"):
                    pass
            except Exception as error:  # SafetensorError, OSError
                raise ConfigError(
                    f"Cannot read weights file {file} of model {path}: {error}"
                ) from error


def _safetensors_files(path: str) -> List[str]:
    """The safetensors files mergekit reads from a model folder (its shard index,
    or the single ``model.safetensors``)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            return sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(
                f"Cannot read the shard index {index} of model {path}: {error}"
            ) from error
    return ["model.safetensors"] if os.path.isfile(os.path.join(path, "model.safetensors")) else []


def protected_inputs(config: ConfigSource) -> Dict[str, str]:
    """Real path -> role of every local input of ``config`` a merge must not touch."""
    protected: Dict[str, str] = {}
    for path, role in _input_paths(config):
        if isinstance(path, str) and path and os.path.exists(path):
            protected.setdefault(os.path.realpath(path), role)
    return protected


def _input_paths(config: ConfigSource) -> Iterator[Tuple[str, str]]:
    view = read_config(config)
    config = view.config
    for reference in config.referenced_models():
        yield reference.model.path, "input model"
        if reference.lora is not None:
            yield reference.lora.path, "LoRA adapter"
    for item in view.inputs:
        if item.base is not None:
            yield item.base.model.path, "base model"
        for key in STORE_PARAMETERS:
            for value in _strings(item.parameters.get(key)):
                yield value, "importance store"
    if config.tokenizer_source:
        yield str(config.tokenizer_source), "tokenizer source"
    source = getattr(config.tokenizer, "source", None) if config.tokenizer else None
    if isinstance(source, str):
        yield source, "tokenizer source"


def _strings(value) -> Iterator[str]:
    """Every string in a parameter value (a scalar, a gradient list or filters)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _contains(folder: str, path: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


def _overlaps(first: str, second: str) -> bool:
    return _contains(first, second) or _contains(second, first)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
