"""Loading official or converted checkpoints strictly, with the mismatches named."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


class CheckpointMismatchError(ValueError):
    """The checkpoint does not hold exactly the model's tensors."""


def _unwrap(obj: object, source: str) -> Mapping[str, object]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # detectron2 checkpointer layout, possibly with iteration/optimizer
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    return obj


def read_state_dict(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict.

    ``.safetensors`` files are read directly; ``.pth``/``.pkl`` files with
    ``torch.load(weights_only=True)``. Files that need arbitrary unpickling are refused
    unless ``allow_unsafe_pickle=True`` (only for files you trust). Accepts detectron2's
    ``{"model": ...}`` layout, bare state_dicts, ``module.`` prefixes and numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises several types for the same cause
        if not allow_unsafe_pickle and "weights_only" in str(err):
            raise ValueError(
                f"{path}: this checkpoint needs arbitrary unpickling, which can run code. If you "
                "trust the file, pass allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle)") from err
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    state = _unwrap(obj, str(path))
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.startswith("module."):
            name = name[len("module."):]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise :class:`CheckpointMismatchError` naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def listing(title: str, items: list[str]) -> str:
            shown = "\n  ".join(items[:20]) + (f"\n  ... and {len(items) - 20} more" if len(items) > 20 else "")
            return f"{title} ({len(items)}):\n  {shown}\n" if items else ""

        raise CheckpointMismatchError(
            f"the checkpoint does not match {getattr(model, 'config', None) and model.config.name or 'the model'}:\n"
            + listing("missing keys", missing) + listing("unexpected keys", unexpected)
            + listing("shape mismatches", shapes)
            + "Check that the checkpoint is for this variant (see dyhead_zoo.list_models())."
        )


def load_checkpoint(model: nn.Module, path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly (fp16 and numpy values are cast)."""
    state = read_state_dict(path, allow_unsafe_pickle)
    check_state_dict(model, state)
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
