"""Distributed runs in one place: the device of this process, joining the ``torchrun`` group,
gathering results on rank 0, and the sums over processes the official losses normalise with."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes when ``torch.distributed`` is initialised, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes (a copy; unchanged in a single process).

    Every process must call it the same number of times, in the same order.
    """
    if world_size() < 2:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@dataclass(frozen=True)
class Distributed:
    """This process's place among the evaluation processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None  # a gloo group for gathering Python objects, None when not distributed

    def gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every rank, in rank order, on rank 0 (``None`` elsewhere)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


@contextlib.contextmanager
def distributed(device: str) -> Iterator[Distributed]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else run alone.

    Uses NCCL for CUDA devices and gloo otherwise, plus a gloo group for gathering detections
    (they are Python objects on the CPU). Leaves the group on exit.
    """
    if dist.is_initialized():  # by the caller: use its group, leave it to the caller
        group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        yield Distributed(dist.get_rank(), dist.get_world_size(), group)
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Distributed()
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        yield Distributed(dist.get_rank(), dist.get_world_size(), group)
    finally:
        dist.destroy_process_group()


def default_device() -> str:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (``torchrun`` sets LOCAL_RANK), else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def resolve_device(requested: str | None) -> str:
    """``requested`` (``--device``) checked against this machine; ``None`` gives :func:`default_device`.

    ``cuda`` without an index is ``cuda:<LOCAL_RANK>``: one process per GPU under ``torchrun``.
    """
    if requested is None:
        return default_device()
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"--device {requested}: not a torch device ({err}); use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: no CUDA device is available here; use --device cpu")
        if device.index is None:  # one process per GPU under torchrun
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested}: Apple's MPS backend is not available here; use --device cpu")
    return str(device)
