"""Inference-time convolution fusions: a frozen BatchNorm folded into the conv before it, and
the bias, ReLU and residual add run as oneDNN post-ops of the convolution on CPU.

Eager PyTorch runs a conv, then the BatchNorm, the ReLU and the residual add as separate passes
over memory; on CPU those passes cost about a quarter of a ResNet-50 forward. Folding the
FrozenBatchNorm into the conv weight and bias is exact up to float rounding, and oneDNN's
post-ops (the kernels ``torch.compile`` uses on CPU, ``torch.ops.mkldnn._convolution_pointwise``)
apply the bias, add and ReLU while the output tile is still in cache. The fused kernel is used
only where it can be trusted: float32 on CPU, no autocast, no autograd, and after a start-up
self-check against ``F.conv2d`` passes; everywhere else the same arithmetic runs eagerly.
The path is on by default; ``DYHEAD_FUSED_INFERENCE=0`` switches it off. oneDNN picks its
kernels, and so their float rounding, by batch size: on CPU inference the backbone and FPN
therefore run one image at a time (``models/fpn.py``), so an image gives the same features alone
and in a batch.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Set to ``0`` to run the plain path in eval mode too (the fused path is the default).
ENV_VAR = "DYHEAD_FUSED_INFERENCE"
_SELF_CHECK_TOLERANCE = 1e-4  # of the output's largest magnitude, float32
_onednn_ok: bool | None = None


def inference_path(module: nn.Module) -> bool:
    """Whether ``module`` runs the fused inference path: eval mode, no autograd, and not
    switched off with ``$DYHEAD_FUSED_INFERENCE=0``."""
    return not module.training and not torch.is_grad_enabled() and os.environ.get(ENV_VAR, "1") != "0"


def fold_frozen_batchnorm(weight: Tensor, bias: Tensor | None, norm_weight: Tensor, norm_bias: Tensor,
                          running_mean: Tensor, running_var: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Conv ``weight`` (O, C, k, k) and optional ``bias`` (O,) followed by a frozen BatchNorm
    (per-channel (O,) affine parameters and statistics) as one conv: returns the folded weight
    (O, C, k, k), contiguous, and bias (O,), in ``weight``'s dtype."""
    exact = torch.promote_types(weight.dtype, torch.float32)  # fold half-precision weights in float32
    scale = norm_weight.to(exact) * torch.rsqrt(running_var.to(exact) + eps)
    folded_bias = norm_bias.to(exact) - running_mean.to(exact) * scale
    if bias is not None:
        folded_bias = folded_bias + bias.to(exact) * scale
    folded = weight.to(exact) * scale.view(-1, 1, 1, 1)
    return folded.to(weight.dtype).contiguous(), folded_bias.to(weight.dtype)


def conv2d_bias_act(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int | tuple[int, int] = 1,
                    padding: int | tuple[int, int] = 0, relu: bool = False, residual: Tensor | None = None) -> Tensor:
    """``relu(conv2d(x, weight, bias) + residual)``, the add and the ReLU each optional.

    ``x`` (N, C, H, W), ``weight`` (O, C, k, k), ``bias`` (O,), ``residual`` (N, O, h, w).
    Runs as one oneDNN convolution with post-ops when :func:`onednn_fusion_applies`, else
    eagerly (``F.conv2d`` then in-place add and ReLU). Returns (N, O, h, w); on the fused path
    in channels-last memory format.
    """
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if onednn_fusion_applies(x, weight, residual):
        pointwise = torch.ops.mkldnn._convolution_pointwise
        if residual is None:
            return pointwise(x, weight, bias, padding, stride, (1, 1), 1, "relu" if relu else "none", [], "")
        residual = residual.contiguous(memory_format=torch.channels_last)
        return pointwise.binary(x, residual, weight, bias, padding, stride, (1, 1), 1, "add", 1.0,
                                "relu" if relu else None, [], "")
    out = F.conv2d(x, weight, bias, stride, padding)
    if residual is not None:
        out = out + residual
    return F.relu_(out) if relu else out


def onednn_fusion_applies(x: Tensor, weight: Tensor, residual: Tensor | None = None) -> bool:
    """Whether :func:`conv2d_bias_act` takes the fused oneDNN kernel for these tensors: float32
    on CPU, channels-last ``x``, no autocast, no gradient needed, and the self-check passed."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last) or x.dim() != 4:
        return False
    if residual is not None and (residual.dtype != torch.float32 or residual.device.type != "cpu"):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return onednn_fusion_available()


def onednn_fusion_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused convolution and it matches ``F.conv2d`` on
    a small case with a ReLU and a residual add (checked once per process)."""
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = _self_check()
    return _onednn_ok


def _self_check() -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            x = torch.randn(2, 8, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
            weight = torch.randn(16, 8, 3, 3, generator=gen)
            bias = torch.randn(16, generator=gen)
            residual = torch.randn(2, 16, 5, 6, generator=gen)
            pointwise = torch.ops.mkldnn._convolution_pointwise
            fused = pointwise.binary(x, residual.contiguous(memory_format=torch.channels_last), weight, bias,
                                     (1, 1), (2, 2), (1, 1), 1, "add", 1.0, "relu", [], "")
            plain = pointwise(x, weight, bias, (1, 1), (2, 2), (1, 1), 1, "relu", [], "")
            ref = F.conv2d(x, weight, bias, 2, 1)
            scale = ref.abs().max()
            return bool(((fused - F.relu(ref + residual)).abs().max() <= _SELF_CHECK_TOLERANCE * scale)
                        and ((plain - F.relu(ref)).abs().max() <= _SELF_CHECK_TOLERANCE * scale))
    except (RuntimeError, TypeError, AttributeError):  # an op missing or changed in this build
        return False
