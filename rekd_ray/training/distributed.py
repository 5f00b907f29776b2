"""The few collective operations the training loop needs, injectable.

The loop never calls ``torch.distributed`` directly: it receives a
:class:`Collectives` object. :data:`SINGLE_PROCESS` makes every operation the
identity, so the same loop runs in one process (tests, benchmarks) and inside
Ray Train workers (:func:`torch_collectives`, backed by the process group that
Ray Train sets up).

Shape legend: B per-worker batch, W world size, D embedding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Collectives", "SINGLE_PROCESS", "torch_collectives"]


@dataclass(frozen=True)
class Collectives:
    """Rank information plus gather / all-reduce helpers.

    Attributes:
        rank: this worker's rank in ``[0, world_size)``.
        world_size: number of training workers.
        device: where scalar all-reduces run: the GPU under NCCL (which
            reduces CUDA tensors only), the CPU under gloo.
    """

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` from every worker along dim 0, in rank order.

        Shape:
            tensor: (B, ...) -> returns (W * B, ...). No gradient flows through.
        """
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average ``.grad`` of ``parameters`` over workers (one flat all-reduce)."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def mean(self, value: float) -> float:
        """Average a Python scalar over workers."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def minimum(self, value: float) -> float:
        """The smallest of a Python scalar over workers."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


SINGLE_PROCESS = Collectives()


def torch_collectives() -> Collectives:
    """Collectives over the default ``torch.distributed`` process group, if any."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    return Collectives(
        rank=dist.get_rank(), world_size=dist.get_world_size(), device=device
    )
