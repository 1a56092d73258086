"""The DyHead block: scale-, spatial- and task-aware attention over a feature pyramid.

Attribute names (``DyConv``, ``AttnConv``, ``relu.fc``, ``offset``, ``dyhead_tower``) are the
official checkpoint's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dyhead_zoo.ops.deform_conv import modulated_deform_conv2d


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid ``relu6(x + 3) / 6``."""
    return F.relu6(x + 3.0) / 6.0


class ModulatedDeformConv(nn.Module):
    """3x3 modulated deformable conv with bias; offset and mask are given by the caller."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, padding=1)


class Conv3x3Norm(nn.Module):
    """Deformable 3x3 conv followed by GroupNorm(16)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv(in_channels, out_channels, stride)
        self.bn = nn.GroupNorm(16, out_channels)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.bn(self.conv(x.contiguous(), offset, mask))


class DyReLU(nn.Module):
    """Task attention: dynamic ReLU max(x*a1 + b1, x*a2 + b2) with coefficients from the context."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, 4 * channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        y = h_sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).view(n, c))).view(n, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, self.channels, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        return torch.max(x * a1 + (b1 - 0.5), x * a2 + (b2 - 0.5))


class DyConv(nn.Module):
    """One DyHead block applied to every level of a pyramid (dict of NCHW maps, fine to coarse).

    For level L the offset and mask are predicted from level L and shared by three deformable
    convs: on L (``DyConv[1]``), on the finer L-1 with stride 2 (``DyConv[2]``) and on the
    coarser L+1 (``DyConv[0]``, upsampled bilinearly with aligned corners). Scale attention
    weights and averages them; DyReLU applies task attention.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.DyConv = nn.ModuleList([
            Conv3x3Norm(channels, channels, 1),
            Conv3x3Norm(channels, channels, 1),
            Conv3x3Norm(channels, channels, 2),
        ])
        self.AttnConv = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1, 1), nn.ReLU(inplace=True))
        self.relu = DyReLU(channels)
        self.offset = nn.Conv2d(channels, 27, 3, 1, 1)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(features)
        outputs: dict[str, Tensor] = {}
        for level, name in enumerate(names):
            feature = features[name]
            offset_mask = self.offset(feature)
            offset = offset_mask[:, :18]
            mask = offset_mask[:, 18:].sigmoid()
            terms = [self.DyConv[1](feature, offset, mask)]
            if level > 0:
                terms.append(self.DyConv[2](features[names[level - 1]], offset, mask))
            if level < len(names) - 1:
                coarse = self.DyConv[0](features[names[level + 1]], offset, mask)
                terms.append(F.interpolate(coarse, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            # The official op order (stack, then mean; DyReLU's x*a+b then max): cheaper orders
            # round differently, and the random-checkpoint training references, chaotic below
            # block 0, then miss (measured: Swin-T block 0 offset-conv gradient, 1.5e-3).
            stacked = torch.stack(terms)
            attention = h_sigmoid(torch.stack([self.AttnConv(t) for t in terms]))
            outputs[name] = self.relu(torch.mean(stacked * attention, dim=0))
        return outputs


class DyHeadBackbone(nn.Module):
    """FPN (``backbone``) followed by the DyHead tower (``dyhead_tower``).

    With ``gradient_checkpointing`` each DyHead block keeps only its input for the backward
    pass and recomputes its activations there: the same gradients for less memory and about
    one more forward of the tower. It acts only when gradients are being recorded.
    """

    def __init__(self, fpn: nn.Module, channels: int, num_blocks: int, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.backbone = fpn
        self.dyhead_tower = nn.Sequential(*[DyConv(channels) for _ in range(num_blocks)])
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return self.dyhead_tower(features)
        for block in self.dyhead_tower:
            features = checkpoint(block, features, use_reentrant=False)
        return features
