"""The process group of a ``torchrun``/``accelerate launch`` locate run, or a single process."""

from __future__ import annotations

import os
from typing import Any, List

import torch

from mergekit_led.core.locate_options import LocateOptions
from mergekit_led.environment import resolve_device
from mergekit_led.errors import LocateError


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
    def from_environment(cls, opts: LocateOptions) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(opts.device, local_rank if world_size > 1 else None)
        if world_size > 1 and opts.device_map is not None:
            raise LocateError(
                "--device-map splits one model over several GPUs in one process; it "
                "cannot be combined with a multi-process (torchrun) run."
            )
        return cls(world_size, rank, local_rank, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> Distributed:
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

    def any_failed(self, failed: bool) -> bool:
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
