"""Progress of a locate run and its resumable checkpoints (``OUT.locate-checkpoint/``)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_led.atomic import write_file
from mergekit_led.core.locate_options import CHECKPOINT_SUFFIX
from mergekit_led.errors import LocateError

CHECKPOINT_STATE_KEY = "led_locate_state"


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
            name
            for name in os.listdir(self.folder)
            if name.endswith(".safetensors")
            and name != mine
            and not name.endswith(f"-of-{mine.split('-of-')[1]}")
        )

    def save(self, accumulator, progress: Progress, run_key: Dict[str, Any]) -> None:
        os.makedirs(self.folder, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in accumulator.state().items()}
        tensors["rng_state"] = torch.get_rng_state()
        state = {"progress": asdict(progress), "run": run_key}
        write_file(
            self.path,
            lambda path: save_file(
                tensors, path, metadata={CHECKPOINT_STATE_KEY: json.dumps(state)}
            ),
            # Not flushed: written every few samples, it may be large; after a power
            # loss a torn checkpoint is reported as damaged (docs/store.md).
            durable=False,
        )

    def load(self, accumulator, run_key: Dict[str, Any]) -> Progress:
        state, tensors = self._read()
        recorded = state["run"]
        differing = sorted(
            key for key in set(recorded) | set(run_key) if recorded.get(key) != run_key.get(key)
        )
        if differing:
            shown = "; ".join(
                f"{key}: {recorded.get(key)!r} in the checkpoint, {run_key.get(key)!r} now"
                for key in differing
            )
            raise LocateError(
                f"The locate checkpoint {self.path} belongs to another run (it differs in "
                f"{shown}). Resume with the same model, data and options, or delete "
                f"{self.folder}."
            )
        try:
            accumulator.load_state(tensors)
            torch.set_rng_state(tensors["rng_state"])
            return Progress(**state["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise self._corrupt(f"its tensors do not fit this run: {error}") from error

    def _read(self) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
        """The checkpoint's state and tensors; a damaged file is named, not a traceback."""
        try:
            with safe_open(self.path, framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as error:  # SafetensorError, OSError: truncated or not safetensors
            raise self._corrupt(str(error)) from error
        try:
            state = json.loads(metadata[CHECKPOINT_STATE_KEY])
            if not all(isinstance(state.get(key), dict) for key in ("run", "progress")):
                raise ValueError("no run key or progress")
        except (KeyError, ValueError, AttributeError) as error:
            raise self._corrupt(f"its progress record is unreadable ({error})") from error
        return state, tensors

    def _corrupt(self, why: str) -> LocateError:
        return LocateError(
            f"The locate checkpoint {self.path} is damaged ({why}). Delete {self.folder} "
            "to start over."
        )

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
