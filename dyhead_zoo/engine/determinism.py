"""Bit-reproducible training runs: the same inputs give the same weights, run after run.

On the CPU, several intra-op threads split the reductions of the convolution backward
passes (weight gradients, the deformable conv's input gradient) differently from run to
run: two straight 2-thread runs of the same recipe already differ in the last bits (~1e-9
after a few iterations). One thread sums in a fixed order. On CUDA, cuDNN's autotuner and
its non-deterministic algorithms are switched off.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_run(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Within the block, make float32 training on ``device`` repeat bit for bit (a no-op when
    not ``enabled``); the previous thread count and backend flags are restored afterwards."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        if device.type == "cpu":
            torch.set_num_threads(1)
        else:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
