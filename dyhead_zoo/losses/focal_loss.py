"""The sigmoid focal loss of DynamicHead's ATSS, with the official CUDA kernel's formulas.

``extra/sigmoid_focal_loss.py`` calls a kernel whose forward and backward are written out by
hand (not derived by autograd): log(p) is taken of max(p, FLT_MIN), and log(1 - p) in a form
that stays finite for large logits. The same formulas here, elementwise in torch, give the
official values and gradients on every device.
"""
from __future__ import annotations

import torch
from torch import Tensor

_FLT_MIN = torch.finfo(torch.float32).tiny


def _log_one_minus_sigmoid(x: Tensor) -> Tensor:
    # The kernel's log(1 - sigmoid(x)) = -x*[x >= 0] - log(1 + exp(x - 2x*[x >= 0])).
    positive = (x >= 0).to(x.dtype)
    return -x * positive - torch.log(1.0 + torch.exp(x - 2.0 * x * positive))


def _positive_and_negative(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    classes = torch.arange(1, logits.shape[1] + 1, device=logits.device)
    targets = targets.view(-1, 1)
    positive = (targets == classes).to(logits.dtype)
    negative = ((targets >= 0) & (targets != classes)).to(logits.dtype)
    return positive, negative


class _SigmoidFocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
        ctx.save_for_backward(logits, targets)
        ctx.gamma, ctx.alpha = gamma, alpha
        positive, negative = _positive_and_negative(logits, targets)
        p = torch.sigmoid(logits)
        term1 = (1.0 - p).pow(gamma) * torch.log(p.clamp(min=_FLT_MIN))
        term2 = p.pow(gamma) * _log_one_minus_sigmoid(logits)
        return -positive * term1 * alpha - negative * term2 * (1.0 - alpha)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses: Tensor):
        logits, targets = ctx.saved_tensors
        gamma, alpha = ctx.gamma, ctx.alpha
        positive, negative = _positive_and_negative(logits, targets)
        p = torch.sigmoid(logits)
        term1 = (1.0 - p).pow(gamma) * (1.0 - p - p * gamma * torch.log(p.clamp(min=_FLT_MIN)))
        term2 = p.pow(gamma) * (_log_one_minus_sigmoid(logits) * (1.0 - p) * gamma - p)
        grad = -positive * term1 * alpha - negative * term2 * (1.0 - alpha)
        return grad * grad_losses, None, None, None


def sigmoid_focal_loss_elementwise(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    """Per-element focal loss (M, C) of ``logits`` (M, C) float against ``targets`` (M,) int.

    ``targets`` hold 1..C for class index 0..C-1, 0 for background (every class negative) and
    a negative value for an ignored row (zero loss). Gradients follow the official kernel's
    backward formula.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (M, C) and targets (M,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    return _SigmoidFocalLoss.apply(logits, targets, float(gamma), float(alpha))


def sigmoid_focal_loss_sum(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    """Sum of :func:`sigmoid_focal_loss_elementwise` (a scalar), as ATSS's ``SigmoidFocalLoss``."""
    return sigmoid_focal_loss_elementwise(logits, targets, gamma, alpha).sum()
