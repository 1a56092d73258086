"""Modulated deformable 3x3 convolution (DCNv2), behind one function so backends can change.

The official DyHead calls a CUDA kernel that reads its offset and mask as raw memory laid out
for the *output* size. When the offset comes from a larger pyramid level (``DyConv[0]``), that
kernel reads the leading ``18*h*w`` values of each batch element's offset (and ``9*h*w`` of
its mask). :func:`fit_offset_to_output` reproduces that read so results match exactly.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

Backend = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None", int, int], Tensor]


def output_size(height: int, width: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Spatial size of a (deformable) convolution's output."""
    return (height + 2 * padding - kernel) // stride + 1, (width + 2 * padding - kernel) // stride + 1


def fit_offset_to_output(offset: Tensor, mask: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Reinterpret per-sample offset/mask memory as ``[C, h, w]`` for an output of size ``out_hw``.

    ``offset``: (N, 2*K, H, W); ``mask``: (N, K, H, W), with H*W >= h*w. Returns tensors of
    shape (N, 2*K, h, w) and (N, K, h, w) holding each sample's leading values in C order,
    which is what the official CUDA kernel reads. Unchanged when the sizes already agree.
    """
    h, w = out_hw
    if offset.shape[-2:] == (h, w) and mask.shape[-2:] == (h, w):
        return offset, mask
    n, c_off = offset.shape[:2]
    c_mask = mask.shape[1]
    if offset.shape[-2] * offset.shape[-1] < h * w or mask.shape[-2] * mask.shape[-1] < h * w:
        raise ValueError(
            f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} hold fewer positions than the "
            f"conv output {h}x{w}; compute them at the output's level or a larger one"
        )
    offset = offset.reshape(n, -1)[:, : c_off * h * w].reshape(n, c_off, h, w)
    mask = mask.reshape(n, -1)[:, : c_mask * h * w].reshape(n, c_mask, h, w)
    return offset, mask


def _torchvision_backend(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                         stride: int, padding: int) -> Tensor:
    dtype = x.dtype
    if dtype == torch.bfloat16:  # torchvision's kernels have no bfloat16 path
        x, offset, mask, weight = x.float(), offset.float(), mask.float(), weight.float()
        bias = None if bias is None else bias.float()
    out = _tv_deform_conv2d(x, offset.to(x.dtype), weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                            stride=stride, padding=padding, mask=mask.to(x.dtype))
    return out.to(dtype)


BACKENDS: dict[str, Backend] = {"torchvision": _torchvision_backend}
ENV_VAR = "DYHEAD_DCN_BACKEND"


def resolve_backend(name: str | None = None) -> str:
    """Backend to use: ``name`` if given, else ``$DYHEAD_DCN_BACKEND``, else the default."""
    name = name or os.environ.get(ENV_VAR) or "torchvision"
    if name not in BACKENDS:
        raise ValueError(f"unknown deformable-conv backend {name!r}; choose one of {sorted(BACKENDS)} "
                         f"(argument or ${ENV_VAR})")
    return name


def modulated_deform_conv2d(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                            stride: int = 1, padding: int = 1, backend: str | None = None) -> Tensor:
    """DCNv2 on ``x`` (N, C, H, W) with a square kernel ``weight`` (O, C, k, k).

    ``offset`` (N, 2*k*k, H', W') holds (dy, dx) pairs per tap, ``mask`` (N, k*k, H', W') the
    modulation in [0, 1]; maps larger than the output are read as the official kernel does
    (see :func:`fit_offset_to_output`). Returns (N, O, h, w) in ``x``'s dtype.
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"expected 4-D input and weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    out_hw = output_size(x.shape[-2], x.shape[-1], weight.shape[-1], stride, padding)
    offset, mask = fit_offset_to_output(offset, mask, out_hw)
    return BACKENDS[resolve_backend(backend)](x, offset, mask, weight, bias, stride, padding)
