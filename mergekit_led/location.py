"""``locate``: importance scores of one model on one task's data, written as a store.

The Location step of LED-Merging (``LED_SPEC.md`` section 1). For SNIP, every
sample gets exactly one forward and one backward pass, whose per-weight
gradients are folded into float32 accumulators as they are produced (see
``mergekit_led.scores``). The result is keyed by the checkpoint's own tensor
names, so mergekit can read it at merge time.

Long runs checkpoint their accumulators (``--checkpoint-every``) and resume
to the same scores; under ``torchrun``/``accelerate launch`` every process
scores a strided shard of the samples and the sums are all-reduced once.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shutil
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from mergekit_led import location_data as ld
from mergekit_led.errors import LocateError
from mergekit_led.scores import (
    DATA_SCORES,
    SCORE_KINDS,
    SnipAccumulator,
    WandaAccumulator,
    magnitude_scores,
    random_scores,
)

LOG = logging.getLogger(__name__)

DTYPES = {
    "auto": "auto",
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_SUFFIX = ".locate-checkpoint"
CHECKPOINT_STATE_KEY = "led_locate_state"


@dataclass(frozen=True)
class LocateOptions:
    """Every option of a run (recorded in the manifest)."""

    score: str = "snip"
    base: Optional[str] = None
    tokenizer: Optional[str] = None
    split: Optional[str] = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    chat_template: str = "auto"
    max_samples: Optional[int] = None
    max_length: Optional[int] = None
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    device_map: Optional[str] = None
    offload_accumulators: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: Optional[int] = None
    resume: bool = False
    overwrite: bool = False
    skip_nonfinite: bool = False
    trust_remote_code: bool = False
    progress: bool = True


def locate(model: str, data: Any = None, out: Optional[str] = None, **options: Any) -> str:
    """Score ``model`` on ``data`` and write an importance store to ``out``.

    Args:
        model: a local checkpoint folder or a hub id.
        data: a JSONL/JSON/CSV/Parquet file, a ``save_to_disk`` folder, a hub
            dataset name (``split=``), a ``datasets.Dataset`` or a list of dicts
            with ``prompt``/``response`` or chat ``messages``. Not used by the
            ``magnitude`` and ``random`` scores.
        out: the store folder to write.
        **options: the fields of ``LocateOptions`` (the CLI's options).

    Returns the store path (on every process of a distributed run).
    """
    unknown = sorted(set(options) - set(LocateOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"locate() got unknown options: {', '.join(unknown)}")
    opts = LocateOptions(**options)
    if out is None:
        raise LocateError("locate needs an output folder for the importance store (--out).")
    out = os.path.abspath(os.fspath(out))
    _check_options(opts, data, out)
    with Distributed.from_environment(opts) as dist:
        return _run(os.fspath(model), data, out, opts, dist)


# --------------------------------------------------------------------------- checks


def _check_options(opts: LocateOptions, data: Any, out: str) -> None:
    if opts.score not in SCORE_KINDS:
        raise LocateError(
            f"Unknown score kind {opts.score!r}; choose one of {', '.join(SCORE_KINDS)}."
        )
    if opts.score in DATA_SCORES and data is None:
        raise LocateError(f"The {opts.score} score needs location data (--data).")
    if opts.base is not None and opts.score != "magnitude":
        raise LocateError("--base is only used by --score magnitude (|θ − θ_base|).")
    if opts.dtype not in DTYPES:
        raise LocateError(f"Unknown --dtype {opts.dtype!r}; choose one of {', '.join(DTYPES)}.")
    if opts.device not in DEVICES:
        raise LocateError(f"Unknown --device {opts.device!r}; choose one of {', '.join(DEVICES)}.")
    if opts.checkpoint_every is not None and opts.checkpoint_every < 1:
        raise LocateError(f"--checkpoint-every must be at least 1, not {opts.checkpoint_every}.")
    if os.path.exists(out) and not opts.overwrite:
        raise LocateError(f"Importance store {out} already exists; pass --overwrite to replace it.")
    checkpoint = out + CHECKPOINT_SUFFIX
    if os.path.exists(checkpoint) and not opts.resume:
        raise LocateError(
            f"A locate checkpoint exists at {checkpoint}; pass --resume to continue "
            "from it, or delete it to start over."
        )


# --------------------------------------------------------------------------- distributed


class Distributed:
    """The process group of a ``torchrun``/``accelerate launch`` run, or a single process."""

    def __init__(self, world_size: int, rank: int, local_rank: int, device: torch.device):
        self.world_size = world_size
        self.rank = rank
        self.local_rank = local_rank
        self.device = device
        self._owns_group = False
        self._cpu_group = None

    @classmethod
    def from_environment(cls, opts: LocateOptions) -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _resolve_device(opts.device, local_rank if world_size > 1 else None)
        if world_size > 1 and opts.device_map is not None:
            raise LocateError(
                "--device-map splits one model over several GPUs in one process; it "
                "cannot be combined with a multi-process (torchrun) run."
            )
        return cls(world_size, rank, local_rank, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> "Distributed":
        if self.world_size > 1:
            import torch.distributed as tdist

            if not tdist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                tdist.init_process_group(backend=backend)
                self._owns_group = True
            if tdist.get_backend() != "gloo":
                self._cpu_group = tdist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._owns_group:
            import torch.distributed as tdist

            tdist.destroy_process_group()

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as tdist

        group = self._cpu_group if tensor.device.type == "cpu" else None
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM, group=group)

    def all_gather(self, value: Any) -> List[Any]:
        if self.world_size == 1:
            return [value]
        import torch.distributed as tdist

        gathered: List[Any] = [None] * self.world_size
        tdist.all_gather_object(gathered, value, group=self._cpu_group)
        return gathered

    def agree(self, failed: bool) -> bool:
        """Whether any process failed (every process must call this together)."""
        if self.world_size == 1:
            return failed
        flag = torch.tensor([1.0 if failed else 0.0])
        self.all_reduce_sum(flag)
        return bool(flag.item() > 0)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier(group=self._cpu_group)


def _resolve_device(device: str, local_rank: Optional[int]) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LocateError("--device cuda was asked for, but torch sees no CUDA device.")
        index = local_rank if local_rank is not None else torch.cuda.current_device()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


# --------------------------------------------------------------------------- model


def load_model(model: str, opts: LocateOptions, device: torch.device) -> nn.Module:
    """The causal LM in eval mode (no dropout), on ``device`` or spread by ``device_map``."""
    from transformers import AutoModelForCausalLM

    kwargs: Dict[str, Any] = {
        "dtype": DTYPES[opts.dtype],
        "trust_remote_code": opts.trust_remote_code,
    }
    if opts.device_map is not None:
        kwargs["device_map"] = opts.device_map
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise LocateError(f"Cannot load model {model} as a causal LM: {error}") from error
    if opts.device_map is None:
        loaded.to(device)
    loaded.eval()
    loaded.requires_grad_(False)  # scored parameters are switched on by the accumulator
    return loaded


def load_tokenizer(model: str, opts: LocateOptions):
    from transformers import AutoTokenizer

    source = opts.tokenizer or model
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=opts.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise LocateError(
            f"Cannot load a tokenizer from {source}: {error}. Pass --tokenizer."
        ) from error


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each decoder layer's activations in the backward pass.

    transformers only checkpoints in training mode, and training mode would
    switch dropout on; so each layer's ``forward`` is wrapped directly
    (non-reentrant, so parameter hooks still fire once per parameter).
    Returns the number of layers wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    layers = _decoder_layers(model)
    if not layers:
        raise LocateError(
            "--gradient-checkpointing: no decoder layers found in "
            f"{type(model).__name__} (looked for a ModuleList of layers)."
        )
    for layer in layers:
        forward = layer.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = checkpointed
    return len(layers)


def _decoder_layers(model: nn.Module) -> List[nn.Module]:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        GradientCheckpointingLayer = None
    if GradientCheckpointingLayer is not None:
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        if layers:
            return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=len)) if lists else []


# --------------------------------------------------------------------------- names


@dataclass
class ScoredParameters:
    """The parameters to score, each under the name the checkpoint stores it."""

    params: Dict[str, nn.Parameter]  # checkpoint name -> parameter (tied ones once)
    aliases: Dict[str, str]  # another name of a tied parameter -> its scored name
    not_scored: List[str]  # checkpoint tensors no parameter of the model loads
    verified: bool  # names checked against the checkpoint's own index


def checkpoint_tensor_shapes(model: str) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Tensor names and shapes of the checkpoint (a local folder, or a hub id
    already in the local cache); None when they cannot be read."""
    from mergekit_led import fingerprint as fp

    folder = model
    if not fp.is_local_checkpoint(folder):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(model, local_files_only=True)
        except Exception:  # not cached, or not a hub id: names stay unverified
            return None
        if not fp.is_local_checkpoint(folder):
            return None
    return fp.checkpoint_shapes(folder)


def scored_parameters(
    model: nn.Module, model_name: str, checkpoint_shapes: Optional[Mapping[str, Tuple[int, ...]]]
) -> ScoredParameters:
    """Map every parameter to its checkpoint tensor, or refuse before any work.

    Names go through the loader's renamings in reverse (transformers 5 may
    rename or fuse checkpoint tensors while loading); a parameter fused from
    several checkpoint tensors, or whose name or shape the checkpoint does not
    have, cannot be scored under a name mergekit reads.
    """
    to_checkpoint = _reverse_loader_renaming(model)
    groups: Dict[int, Tuple[nn.Parameter, List[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), (param, []))[1].append(name)

    params: Dict[str, nn.Parameter] = {}
    aliases: Dict[str, str] = {}
    problems: List[str] = []
    for param, names in groups.values():
        mapped = [to_checkpoint(name) for name in names]
        if any(m is None for m in mapped):
            problems.append(f"{names[0]!r} (fused from several checkpoint tensors by the loader)")
            continue
        if checkpoint_shapes is None:
            stored = mapped[0]
        else:
            present = [m for m in mapped if m in checkpoint_shapes]
            if not present:
                problems.append(f"{names[0]!r} (no tensor of that name in the checkpoint)")
                continue
            stored = present[0]
            if tuple(checkpoint_shapes[stored]) != tuple(param.shape):
                problems.append(
                    f"{names[0]!r} (shape {tuple(param.shape)} in the loaded model, "
                    f"{tuple(checkpoint_shapes[stored])} in the checkpoint)"
                )
                continue
        params[stored] = param
        for other in mapped:
            if other != stored:
                aliases[other] = stored
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise LocateError(
            f"Cannot key scores by the tensor names of checkpoint {model_name}: the loaded "
            f"model's parameters {shown}. LED stores must be keyed by the checkpoint's names; "
            "this architecture's loader renames or fuses them."
        )
    not_scored = sorted(set(checkpoint_shapes or {}) - set(params) - set(aliases))
    return ScoredParameters(params, aliases, not_scored, checkpoint_shapes is not None)


def _reverse_loader_renaming(model: nn.Module) -> Callable[[str], Optional[str]]:
    """Parameter name -> checkpoint name (None for a fused tensor)."""
    conversions = getattr(model, "_weight_conversions", None)
    if not conversions:
        return lambda name: name
    try:
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            apply_converters,
            apply_renamings,
        )

        reverse = [conversion.reverse_transform() for conversion in conversions[::-1]]
    except Exception:  # a transformers without this machinery loads names unchanged
        return lambda name: name
    renamings = [t for t in reverse if isinstance(t, WeightRenaming)]
    converters = [t for t in reverse if isinstance(t, WeightConverter)]

    def to_checkpoint(name: str) -> Optional[str]:
        _, pattern = apply_converters(name, converters)
        if pattern is not None:
            return None
        return apply_renamings(name, renamings)

    return to_checkpoint


def linear_modules(model: nn.Module, scored: ScoredParameters) -> Dict[str, nn.Linear]:
    """Checkpoint weight name -> the ``nn.Linear`` using that weight (for wanda)."""
    by_id = {id(param): name for name, param in scored.params.items()}
    found: Dict[str, nn.Linear] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in by_id:
            found.setdefault(by_id[id(module.weight)], module)
    return found


# --------------------------------------------------------------------------- one sample


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def answer_loss(model: nn.Module, sample: ld.TokenizedSample, device: torch.device) -> torch.Tensor:
    """ℓ(x, y): mean negative log-likelihood of the answer tokens given the prompt.

    Only the logits that predict answer tokens are computed (``logits_to_keep``):
    prompt positions carry no loss, so this changes no gradient.
    """
    input_ids = torch.tensor([sample.input_ids], dtype=torch.long, device=device)
    answer = sample.answer_length
    kwargs: Dict[str, Any] = {"use_cache": False}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = answer + 1
    logits = model(input_ids=input_ids, **kwargs).logits
    logits = logits[0, -(answer + 1) : -1]  # position t predicts token t + 1
    targets = input_ids[0, -answer:].to(logits.device)
    return nn.functional.cross_entropy(logits.float(), targets, reduction="mean")


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    import inspect

    cached = getattr(model, "_led_accepts_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        model._led_accepts_logits_to_keep = cached
    return cached


class NonFiniteSample(Exception):
    """A sample whose loss or gradient is not finite (caught to skip, or reported)."""

    def __init__(self, sample: ld.TokenizedSample, what: str):
        super().__init__(what)
        self.sample = sample
        self.what = what


def snip_step(model, accumulator: SnipAccumulator, sample, device) -> None:
    """Fold one sample's ``|θ ⊙ ∇θ ℓ|`` into the accumulator (one forward, one backward)."""
    loss = answer_loss(model, sample, device)
    if not torch.isfinite(loss):
        raise NonFiniteSample(sample, f"the loss is {float(loss.detach())}")
    accumulator.begin_sample()
    loss.backward()
    bad = accumulator.nonfinite_parameter()
    if bad is None:
        return
    if accumulator.skip_nonfinite:
        # Recompute the same sample with the hooks subtracting what they added.
        with accumulator.subtracting():
            answer_loss(model, sample, device).backward()
    raise NonFiniteSample(sample, f"the gradient of {bad!r} is not finite")


def wanda_step(model, accumulator: WandaAccumulator, sample, device) -> None:
    """Add one sample's squared input activations of every linear layer."""
    input_ids = torch.tensor([sample.input_ids], dtype=torch.long, device=device)
    accumulator.begin_sample()
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    bad = accumulator.nonfinite_parameter()
    if bad is not None:
        raise NonFiniteSample(sample, f"the input activations of {bad!r} are not finite")
    accumulator.commit_sample()


# --------------------------------------------------------------------------- progress & checkpoints


@dataclass
class Progress:
    """Where a process stands in its shard, and what it counted so far."""

    position: int = 0  # samples of this process's shard handled (scored or skipped)
    samples: int = 0  # scored
    answer_tokens: int = 0
    tokens: int = 0
    nonfinite: List[int] = field(default_factory=list)  # dataset row numbers skipped


class RunCheckpoint:
    """Accumulators and progress of one process, in ``OUT.locate-checkpoint/``.

    One safetensors file per process: the tensors plus the progress as JSON
    metadata, written beside and renamed into place, so the file on disk is
    always a complete state.
    """

    def __init__(self, out: str, rank: int, world_size: int):
        self.folder = out + CHECKPOINT_SUFFIX
        self.path = os.path.join(self.folder, f"rank{rank:05d}-of-{world_size:05d}.safetensors")

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def others(self) -> List[str]:
        """Checkpoint files of other process layouts in the folder."""
        if not os.path.isdir(self.folder):
            return []
        mine = os.path.basename(self.path)
        return sorted(
            name for name in os.listdir(self.folder)
            if name.endswith(".safetensors") and name != mine
            and not name.endswith(f"-of-{mine.split('-of-')[1]}")
        )

    def save(self, accumulator, progress: Progress, run_key: Dict[str, Any]) -> None:
        from safetensors.torch import save_file

        os.makedirs(self.folder, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in accumulator.state().items()}
        tensors["rng_state"] = torch.get_rng_state()
        state = {"progress": asdict(progress), "run": run_key}
        temporary = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            save_file(tensors, temporary, metadata={CHECKPOINT_STATE_KEY: json.dumps(state)})
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    def load(self, accumulator, run_key: Dict[str, Any]) -> Progress:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as handle:
            state = json.loads(handle.metadata()[CHECKPOINT_STATE_KEY])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        differing = sorted(
            key
            for key in set(state["run"]) | set(run_key)
            if state["run"].get(key) != run_key.get(key)
        )
        if differing:
            raise LocateError(
                f"The locate checkpoint {self.path} belongs to another run (it differs in: "
                f"{', '.join(differing)}). Resume with the same model, data and options, "
                f"or delete {self.folder}."
            )
        accumulator.load_state(tensors)
        torch.set_rng_state(tensors["rng_state"])
        return Progress(**state["progress"])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _progress_bar(total: int, initial: int, opts: LocateOptions, dist: Distributed):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"locate {opts.score}" + (f" (rank 0 of {dist.world_size})" if dist.world_size > 1 else ""),
        unit="sample",
        disable=not (opts.progress and dist.is_main),
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- the run


def _run(model: str, data: Any, out: str, opts: LocateOptions, dist: Distributed) -> str:
    started = time.time()
    selection = rows = tokenizer = tokenization = None
    if opts.score in DATA_SCORES:
        tokenizer = load_tokenizer(model, opts)
        rows = ld.load_rows(data, split=opts.split)
        fields = ld.Fields(opts.prompt_field, opts.response_field, opts.messages_field)
        ld.data_format(rows.columns, fields, rows.name)  # refuse bad fields before loading the model
    elif data is not None:
        LOG.warning("The %s score uses no data; --data %s is ignored.", opts.score, data)

    loaded = load_model(model, opts, dist.device)
    if opts.score in DATA_SCORES:
        tokenization = ld.make_tokenization(
            tokenizer, opts.chat_template, opts.max_length or _model_max_length(loaded)
        )
        selection = ld.select_samples(
            rows,
            tokenizer,
            tokenization,
            fields,
            max_samples=opts.max_samples,
            seed=opts.seed,
        )
    scored = scored_parameters(loaded, model, checkpoint_tensor_shapes(model))
    if scored.not_scored:
        LOG.warning(
            "%d checkpoint tensors of %s are not parameters of the loaded model and get "
            "no scores: %s", len(scored.not_scored), model, ", ".join(scored.not_scored[:10]),
        )
    details: Dict[str, Any] = {}

    if opts.score == "magnitude":
        scores = magnitude_scores(scored.params, _base_weights(opts, scored) if opts.base else None)
        counts = None
    elif opts.score == "random":
        scores = random_scores({n: p.shape for n, p in scored.params.items()}, opts.seed)
        counts = None
    else:
        scores, counts, details = _score_data(loaded, model, scored, selection, opts, dist, out)
    # The model is not needed to write the store: free it first, so writing
    # (sorted copies, serialisation) reuses its memory instead of adding to it.
    del loaded
    scored.params.clear()
    gc.collect()

    if dist.is_main:
        dataset = None
        if selection is not None:
            dataset = _dataset_info(rows, selection, counts, data, opts)
            details["tokenization"] = tokenization.describe(tokenizer)
        save_importance_for_run(
            scores, out, model=model, opts=opts, scored=scored, dataset=dataset,
            details=details, dist=dist, seconds=time.time() - started,
        )
        RunCheckpoint(out, 0, dist.world_size).remove()
    dist.barrier()
    return out


def _model_max_length(model: nn.Module) -> Optional[int]:
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 1 else None


def _base_weights(opts: LocateOptions, scored: ScoredParameters) -> Callable[[str], torch.Tensor]:
    """``name -> θ_base[name]``, read lazily from a local base checkpoint, or from a
    base model loaded on the CPU."""
    from mergekit_led import fingerprint as fp

    base = opts.base
    if fp.is_local_checkpoint(base):
        from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex

        loader = LazyTensorLoader(ShardedTensorIndex.from_disk(base), lazy_unpickle=True)
        names = set(loader.index.tensor_paths)
    else:
        base_model = load_model(
            base,
            LocateOptions(dtype="fp32", trust_remote_code=opts.trust_remote_code),
            torch.device("cpu"),
        )
        state = dict(base_model.named_parameters(remove_duplicate=False))
        loader, names = None, set(state)

    def base_weight(name: str) -> torch.Tensor:
        if name not in names:
            raise LocateError(f"The base model {base} has no weight {name!r} to subtract.")
        tensor = loader.get_tensor(name) if loader is not None else state[name].detach()
        expected = tuple(scored.params[name].shape)
        if tuple(tensor.shape) != expected:
            raise LocateError(
                f"Weight {name!r} has shape {tuple(tensor.shape)} in the base model {base} "
                f"but {expected} in the scored model."
            )
        return tensor

    return base_weight


def _run_key(model: str, selection: ld.SelectedSamples, opts: LocateOptions, dist) -> Dict[str, Any]:
    """What must match for a checkpoint to be resumed (anything that changes the sums)."""
    return {
        "model": model,
        "score": opts.score,
        "data_fingerprint": selection.fingerprint,
        "samples": len(selection.samples),
        "dtype": opts.dtype,
        "gradient_checkpointing": opts.gradient_checkpointing,
        "skip_nonfinite": opts.skip_nonfinite,
        "world_size": dist.world_size,
        "rank": dist.rank,
    }


def _score_data(
    loaded: nn.Module,
    model: str,
    scored: ScoredParameters,
    selection: ld.SelectedSamples,
    opts: LocateOptions,
    dist: Distributed,
    out: str,
):
    """Score this process's shard, all-reduce the sums, return the mean scores."""
    details: Dict[str, Any] = {}
    if opts.score == "snip":
        accumulator = SnipAccumulator(
            scored.params, offload=opts.offload_accumulators, skip_nonfinite=opts.skip_nonfinite
        )
        step = snip_step
    else:
        modules = linear_modules(loaded, scored)
        accumulator = WandaAccumulator(scored.params, modules, offload=opts.offload_accumulators)
        details["wanda_magnitude_fallback"] = accumulator.fallback
        step = wanda_step
    if opts.gradient_checkpointing and opts.score == "snip":
        details["gradient_checkpointing_layers"] = enable_gradient_checkpointing(loaded)

    shard = selection.samples[dist.rank :: dist.world_size]
    checkpoint = RunCheckpoint(out, dist.rank, dist.world_size)
    run_key = _run_key(model, selection, opts, dist)
    progress = Progress()
    if opts.resume and checkpoint.exists():
        progress = checkpoint.load(accumulator, run_key)
        LOG.info("Resuming from %s at sample %d of %d.", checkpoint.path, progress.position, len(shard))
    elif opts.resume and checkpoint.others():
        raise LocateError(
            f"The locate checkpoint {checkpoint.folder} was written by a run with another "
            f"number of processes ({', '.join(checkpoint.others())}); resume with the same "
            f"number ({dist.world_size} now), or delete it."
        )
    elif opts.resume:
        LOG.info("No locate checkpoint at %s; starting from the beginning.", checkpoint.path)

    failure: Optional[BaseException] = None
    scoring_started, first_position = time.perf_counter(), progress.position
    accumulator.attach()
    try:
        _score_shard(loaded, accumulator, step, shard, progress, opts, dist, checkpoint, run_key)
    except Exception as error:  # other processes must learn of it before any collective
        failure = error
    finally:
        accumulator.detach()
    if dist.agree(failure is not None):
        if failure is not None:
            raise failure
        raise LocateError("Another process of this distributed locate run failed; see its error.")

    totals = torch.tensor(
        [progress.samples, progress.answer_tokens, progress.tokens], dtype=torch.float64
    )
    dist.all_reduce_sum(totals)
    for tensor in accumulator.state().values():
        dist.all_reduce_sum(tensor)
    nonfinite = sorted(i for part in dist.all_gather(progress.nonfinite) for i in part)
    samples, answer_tokens, tokens = (int(v) for v in totals.tolist())
    if samples == 0:
        raise LocateError(
            f"Every sample of the location data was skipped ({len(nonfinite)} had a non-finite "
            "loss or gradient); there is nothing to average."
        )
    details["scoring_seconds"] = round(time.perf_counter() - scoring_started, 3)
    details["samples_per_second"] = round(
        (progress.position - first_position) / max(details["scoring_seconds"], 1e-9), 3
    )
    counts = {
        "samples": samples,
        "answer_tokens": answer_tokens,
        "tokens": tokens,
        "nonfinite": nonfinite,
    }
    return accumulator.scores(samples), counts, details


def _release_freed_memory() -> None:
    """Give the heap memory freed by this sample's gradients back to the OS.

    Gradient buffers of many sizes are allocated and freed per sample; glibc
    keeps the freed chunks, and the fragmented heap grows over a run (about
    60 MB on a 29M-parameter model). ``malloc_trim`` returns it (no-op elsewhere).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _score_shard(loaded, accumulator, step, shard, progress, opts, dist, checkpoint, run_key):
    device = input_device(loaded)
    bar = _progress_bar(len(shard), progress.position, opts, dist)
    started, tokens_at_start = time.perf_counter(), progress.tokens
    position_at_start = progress.position
    try:
        while progress.position < len(shard):
            sample = shard[progress.position]
            try:
                step(loaded, accumulator, sample, device)
            except NonFiniteSample as bad:
                if not opts.skip_nonfinite:
                    raise LocateError(
                        f"Sample {bad.sample.index} of the location data gives a non-finite "
                        f"result ({bad.what}); pass --skip-nonfinite to skip such samples, or "
                        "use --dtype fp32."
                    ) from None
                progress.nonfinite.append(bad.sample.index)
                LOG.warning("Skipping sample %d: %s.", bad.sample.index, bad.what)
            else:
                progress.samples += 1
                progress.answer_tokens += sample.answer_length
                progress.tokens += len(sample.input_ids)
            progress.position += 1
            _release_freed_memory()
            bar.update(1)
            elapsed = time.perf_counter() - started
            if elapsed > 0:
                done = progress.position - position_at_start
                bar.set_postfix(
                    {
                        "samples/s": f"{done / elapsed:.2f}",
                        "tokens/s": f"{(progress.tokens - tokens_at_start) / elapsed:.0f}",
                    },
                    refresh=False,
                )
            if (
                opts.checkpoint_every
                and progress.position % opts.checkpoint_every == 0
                and progress.position < len(shard)
            ):
                checkpoint.save(accumulator, progress, run_key)
    finally:
        bar.close()


# --------------------------------------------------------------------------- manifest


def _dataset_info(rows, selection: ld.SelectedSamples, counts, data, opts) -> Dict[str, Any]:
    fingerprint = selection.fingerprint
    used = selection.samples
    if counts["nonfinite"]:
        dropped = set(counts["nonfinite"])
        used = [s for s in used if s.index not in dropped]
        fingerprint = ld.fingerprint_of(
            rows,
            ld.Fields(opts.prompt_field, opts.response_field, opts.messages_field),
            selection.data_format,
            [s.index for s in used],
        )
    skipped = Counter(selection.skipped)
    skipped_indices = {k: list(v) for k, v in selection.skipped_indices.items()}
    if counts["nonfinite"]:
        skipped[ld.SKIP_NONFINITE] += len(counts["nonfinite"])
        skipped_indices[ld.SKIP_NONFINITE] = counts["nonfinite"]
    info: Dict[str, Any] = {
        "name": rows.name,
        "fingerprint": fingerprint,
        "samples": counts["samples"],
        "answer_tokens": counts["answer_tokens"],
        "tokens": counts["tokens"],
        "rows": len(rows.rows),
        "format": selection.data_format,
        "skipped": dict(skipped),
        "skipped_samples": {k: v[:1000] for k, v in skipped_indices.items()},
        "sample_indices": [s.index for s in used][:100000],
    }
    if isinstance(data, (str, os.PathLike)) and os.path.exists(data):
        info["path"] = os.path.abspath(data)
    if opts.split is not None:
        info["split"] = opts.split
    return info


def _package_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in (
        "mergekit-led", "mergekit", "torch", "transformers", "datasets", "accelerate",
        "safetensors", "tokenizers",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def _device_description(dist: Distributed, opts: LocateOptions) -> Dict[str, Any]:
    description: Dict[str, Any] = {
        "device": str(dist.device),
        "world_size": dist.world_size,
        "device_map": opts.device_map,
    }
    if dist.device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(dist.device)
    return description


def save_importance_for_run(
    scores: Mapping[str, torch.Tensor],
    out: str,
    *,
    model: str,
    opts: LocateOptions,
    scored: ScoredParameters,
    dataset: Optional[Dict[str, Any]],
    details: Dict[str, Any],
    dist: Distributed,
    seconds: float,
) -> str:
    from mergekit_led.store import save_importance

    return save_importance(
        scores,
        out,
        model=model,
        score=opts.score,
        dataset=dataset,
        aliases=scored.aliases,
        overwrite=opts.overwrite,
        options=asdict(opts),
        names_verified_against_checkpoint=scored.verified,
        checkpoint_tensors_not_scored=scored.not_scored,
        versions=_package_versions(),
        compute=_device_description(dist, opts),
        seconds_before_writing=round(seconds, 3),
        command=" ".join(sys.argv) if sys.argv and sys.argv[0].endswith("mergekit-led") else None,
        **details,
    )
