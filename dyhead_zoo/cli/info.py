"""What ``dyhead-zoo info`` prints: versions, devices, the deformable-conv backend in use and
which variants' weights are cached."""
from __future__ import annotations

import argparse
import os
import platform
from importlib import metadata

import torch

from dyhead_zoo.ops.deform_conv import (
    BACKENDS,
    ENV_VAR,
    available_backends,
    resolve_backend,
    self_check,
    training_backend,
)
from dyhead_zoo.version import __version__


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def describe() -> str:
    """A few lines: python/torch/torchvision/timm/triton/dyhead_zoo versions, then per device
    the deformable-conv backend that will run there and every backend available on it with
    the result of its start-up self-check (``ok`` or ``FAILED``), then which variants' weights
    are cached and where (:func:`dyhead_zoo.weights.cache.cache_listing`). Running the self-checks is
    the point, so this takes about a second on CPU and a few more on a GPU (Triton compiles).
    """
    from dyhead_zoo.weights.cache import cache_listing

    lines = [
        f"python       {platform.python_version()}",
        f"torch        {torch.__version__}",
        f"torchvision  {_version('torchvision')}",
        f"timm         {_version('timm')}",
        f"triton       {_version('triton')}",
        f"dyhead_zoo   {__version__}",
        f"cuda         {'available' if torch.cuda.is_available() else 'not available'}",
        f"dcn backends {', '.join(BACKENDS)}; ${ENV_VAR}={os.environ.get(ENV_VAR) or '(unset: auto)'}",
    ]
    for device in _devices():
        try:
            chosen = resolve_backend(None, device)
        except ValueError as err:
            chosen = f"error: {err}"
        checks = ", ".join(f"{name} {'ok' if self_check(name, device) else 'FAILED'}"
                           for name in available_backends(device))
        lines.append(f"device       {_device_name(device)}")
        lines.append(f"  dcn backend {chosen}  (available: {checks})")
        try:
            trains = training_backend(device)
        except ValueError as err:
            trains = f"error: {err}"
        lines.append(f"  dcn training backend {trains}  (used when gradients are recorded)")
    return "\n".join(lines + cache_listing())


def cmd_info(args: argparse.Namespace) -> int:
    """``dyhead-zoo info``: print :func:`describe`."""
    print(describe())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``info`` command."""
    info = commands.add_parser("info", help="versions, device, deformable-conv backend, cached weights")
    info.set_defaults(func=cmd_info)
