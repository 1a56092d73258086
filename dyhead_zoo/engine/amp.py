"""Mixed precision for training: bfloat16 autocast (CPU and CUDA), float16 with a gradient
scaler (CUDA only, where float16 gradients would otherwise underflow)."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

AmpMode = Literal["bf16", "fp16"]


def check_amp(amp: str | None, device: torch.device) -> None:
    """Raise ``ValueError`` for a mode this device cannot train with."""
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"--amp must be bf16 or fp16 (or left out for float32), got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (float16 autocast and its gradient scaler); "
                         "use --amp bf16 on the CPU")


def autocast(amp: str | None, device: torch.device) -> ContextManager:
    """The forward pass's autocast context (a no-op for float32 training)."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for float16 training, ``None`` otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None
