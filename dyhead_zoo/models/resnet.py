"""detectron2-style ResNet-50 (``bottom_up``): FrozenBatchNorm, stride in the 1x1 conv.

Inference (eval mode, no autograd) runs a faster but equivalent path: each FrozenBatchNorm is
folded into its conv (cached, recomputed when a weight or statistic changes), the network runs
in channels-last memory format, and bias, ReLU and residual add are fused into the conv
(:mod:`dyhead_zoo.models.fused_conv`). Training and ``state_dict()`` are untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_zoo.models.fused_conv import conv2d_bias_act, fold_frozen_batchnorm, inference_path


def _tensor_state(t: Tensor) -> tuple:
    """What identifies ``t``'s current values: storage, dtype, device and in-place version
    (inference tensors have no version counter; they cannot change outside inference mode)."""
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), t.dtype, t.device, version)


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
        # (state of the source tensors, folded weight, folded bias); not a buffer, so the
        # state_dict keeps the official layout.
        self._folded: tuple[tuple, Tensor, Tensor] | None = None

    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor]:
        """The conv weight (O, C, k, k) and bias (O,) with the FrozenBatchNorm folded in.

        Cached; recomputed whenever the weight or a norm buffer is replaced or changed in place
        (``load_state_dict``, ``.to()``, an optimizer step), so the cache never goes stale.
        """
        norm = self.norm
        sources = (self.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        state = tuple(_tensor_state(t) for t in sources) + (norm.eps,)
        if self._folded is None or self._folded[0] != state:
            with torch.no_grad():
                weight, bias = fold_frozen_batchnorm(self.weight, None, *sources[1:], norm.eps)
            self._folded = (state, weight, bias)
        return self._folded[1], self._folded[2]

    def fused(self, x: Tensor, relu: bool = False, residual: Tensor | None = None) -> Tensor:
        """Inference only: ``relu(norm(conv(x)) + residual)`` as one folded, fused conv."""
        weight, bias = self.folded_weight_and_bias()
        return conv2d_bias_act(x, weight, bias, self.stride, self.padding, relu, residual)

    def forward(self, x: Tensor) -> Tensor:
        if inference_path(self):
            return self.fused(x)
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
        if inference_path(self):
            out = self.conv2.fused(self.conv1.fused(x, relu=True), relu=True)
            shortcut = x if self.shortcut is None else self.shortcut.fused(x)
            return self.conv3.fused(out, relu=True, residual=shortcut)
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
        x = self.conv1.fused(x, relu=True) if inference_path(self) else F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet50(nn.Module):
    """ResNet-50 returning the requested stages (``res2``..``res5``) as a dict of NCHW maps
    (in channels-last memory format on the inference path)."""

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
        if inference_path(self):
            # oneDNN's convs read and write NHWC directly; NCHW would cost a reorder per conv.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        for index in range(4):
            name = f"res{index + 2}"
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
