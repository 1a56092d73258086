"""Feature pyramid (``backbone.backbone``): detectron2's FPN with its P6/P7 or max-pool top."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_zoo.models.fused_conv import conv2d_bias_act, inference_path


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)) (RetinaNet / ATSS)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: Tensor) -> list[Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class LastLevelMaxPool(nn.Module):
    """P6 = P5 subsampled by a 1x1 max-pool of stride 2 (Faster R-CNN)."""

    def forward(self, p5: Tensor) -> list[Tensor]:
        return [F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)]


class FPN(nn.Module):
    """Top-down pyramid over ``bottom_up`` stages; outputs ``p<level>`` maps, fine to coarse."""

    def __init__(self, bottom_up: nn.Module, in_features: tuple[str, ...], channels: int, top_block: str) -> None:
        super().__init__()
        self.in_features = tuple(in_features)
        self.levels = [int(math.log2(bottom_up.strides[f])) for f in self.in_features]
        for feature, level in zip(self.in_features, self.levels):
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(bottom_up.out_channels[feature], channels, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(channels, channels, 3, 1, 1))
        self.top_block = LastLevelP6P7(channels) if top_block == "p6p7" else LastLevelMaxPool()
        extra = 2 if top_block == "p6p7" else 1
        self.out_features = [f"p{level}" for level in self.levels + [self.levels[-1] + i + 1 for i in range(extra)]]
        self.strides = {name: 2 ** int(name[1:]) for name in self.out_features}
        self.bottom_up = bottom_up

    def fuse(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Build the pyramid from bottom-up stage outputs (the FPN's own work, timed apart)."""
        results: list[Tensor] = []
        prev = None
        channels_last = inference_path(self)  # the whole inference path runs NHWC (see resnet.py)
        for feature, level in zip(reversed(self.in_features), reversed(self.levels)):
            x = features[feature]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            conv = getattr(self, f"fpn_lateral{level}")
            # The top-down sum is the conv's residual post-op on the fused inference path.
            upsampled = None if prev is None else F.interpolate(prev, scale_factor=2.0, mode="nearest")
            lateral = conv2d_bias_act(x, conv.weight, conv.bias, residual=upsampled)
            prev = lateral
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        results.extend(self.top_block(results[-1]))
        if channels_last:
            # Back to NCHW: the DyHead tower measured slower on channels-last maps (its DCNs
            # take NCHW), and one copy per level here is cheaper than one per DCN.
            results = [r.contiguous() for r in results]
        return dict(zip(self.out_features, results))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.shape[0] > 1 and x.device.type == "cpu" and not self.training and not torch.is_grad_enabled():
            # One image at a time on CPU inference: oneDNN picks its kernels, and so their float
            # rounding, by batch size, and a batch should give each image's features bit for bit
            # (batching buys no speed on CPU).
            per_image = [self.fuse(self.bottom_up(x[i:i + 1])) for i in range(x.shape[0])]
            return {name: torch.cat([f[name] for f in per_image]) for name in per_image[0]}
        return self.fuse(self.bottom_up(x))
