"""detectron2-style ResNet-50 (``bottom_up``): FrozenBatchNorm, stride in the 1x1 conv."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all stored as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by its FrozenBatchNorm (``<name>.norm.*`` in checkpoints)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block; the stride sits in ``conv1`` as in the MSRA weights."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = None
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class Stem(nn.Module):
    """7x7/2 conv, FrozenBN, ReLU and 3x3/2 max-pool: stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, 64, 7, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet50(nn.Module):
    """ResNet-50 returning the requested stages (``res2``..``res5``) as a dict of NCHW maps."""

    _DEPTHS = (3, 4, 6, 3)

    def __init__(self, out_features: tuple[str, ...]) -> None:
        super().__init__()
        self.stem = Stem()
        self.out_features = tuple(out_features)
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        in_channels, bottleneck = 64, 64
        for index, depth in enumerate(self._DEPTHS):
            name = f"res{index + 2}"
            out_channels = bottleneck * 4
            blocks = [
                Bottleneck(in_channels if i == 0 else out_channels, bottleneck, out_channels,
                           stride=2 if (i == 0 and index > 0) else 1)
                for i in range(depth)
            ]
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out_channels
            self.strides[name] = 4 * 2**index
            in_channels, bottleneck = out_channels, bottleneck * 2

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = {}
        x = self.stem(x)
        for index in range(4):
            name = f"res{index + 2}"
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
