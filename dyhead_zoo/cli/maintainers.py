"""``dyhead-zoo convert``, ``upload`` and ``pin-hashes``: the maintainers' converters."""
from __future__ import annotations

import argparse
import importlib


def _converter(module: str):
    """``dyhead_zoo.converters.<module>``, imported when its command is used (it pulls in the Hub client)."""
    return importlib.import_module(f"dyhead_zoo.converters.{module}")


def cmd_convert(args: argparse.Namespace) -> int:
    """``dyhead-zoo convert``: checkpoint -> Hub folder (``dyhead_zoo/converters/to_hub_folder.py``)."""
    return _converter("to_hub_folder").run(args)


def cmd_upload(args: argparse.Namespace) -> int:
    """``dyhead-zoo upload``: Hub folder -> the repo named by ``--repo`` (``dyhead_zoo/converters/upload.py``)."""
    return _converter("upload").run(args)


def cmd_pin_hashes(args: argparse.Namespace) -> int:
    """``dyhead-zoo pin-hashes``: SHA-256 of each official and mirror file (``dyhead_zoo/converters/pin_hashes.py``)."""
    return _converter("pin_hashes").run(args)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``convert``, ``upload`` and ``pin-hashes`` commands."""
    for name, module, func, help_text in (
            ("convert", "to_hub_folder", cmd_convert, "checkpoint -> Hugging Face Hub folder (maintainers)"),
            ("upload", "upload", cmd_upload, "upload a converted folder to a Hub repo you own (maintainers)"),
            ("pin-hashes", "pin_hashes", cmd_pin_hashes, "SHA-256 of the official and mirror files to pin "
                                                         "(maintainers; needs network)")):
        sub = commands.add_parser(name, help=help_text)
        _converter(module).add_arguments(sub)
        sub.set_defaults(func=func)
