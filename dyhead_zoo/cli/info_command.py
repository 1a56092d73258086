"""``dyhead-zoo info``: versions, devices, deformable-conv backend, cached weights."""
from __future__ import annotations

import argparse
import importlib
import platform


def describe() -> str:
    """Versions, device and deformable-conv backend, as ``dyhead-zoo info`` prints them."""
    try:
        info = importlib.import_module("dyhead_zoo.cli.info")
    except ModuleNotFoundError as err:
        if err.name != "dyhead_zoo.cli.info":
            raise
    else:
        if callable(getattr(info, "describe", None)):
            return info.describe()
    from importlib import metadata

    import torch

    from dyhead_zoo import __version__
    from dyhead_zoo.ops.deform_conv import resolve_backend

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"available (CUDA {torch.version.cuda}): {names}"
    else:
        cuda = "not available"
    lines = [f"python      {platform.python_version()}", f"torch       {torch.__version__}",
             f"torchvision {version('torchvision')}", f"timm        {version('timm')}",
             f"dyhead_zoo  {__version__}", f"cuda        {cuda}", f"dcn backend {resolve_backend()}"]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """``dyhead-zoo info``: print :func:`describe`."""
    print(describe())
    return 0



def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``info`` command."""
    info = commands.add_parser("info", help="versions, device, deformable-conv backend, cached weights")
    info.set_defaults(func=cmd_info)
