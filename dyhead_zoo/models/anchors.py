"""Anchors as detectron2's DefaultAnchorGenerator lays them out (location-major, XYXY)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """Anchors centred on (0, 0): one per (size, ratio), sizes outer; ratio = height / width."""
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(
    feature_hw: tuple[int, int], stride: int, cell: Tensor, offset: float, device: torch.device | None = None
) -> Tensor:
    """All anchors of one level, (H*W*A, 4): location-major, the A cell anchors innermost."""
    h, w = feature_hw
    shifts_x = torch.arange(offset * stride, w * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(offset * stride, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.to(device).view(1, -1, 4)).reshape(-1, 4)


class AnchorGenerator:
    """Per-level anchors for a pyramid with given strides, sizes and aspect ratios."""

    def __init__(self, strides: list[int], sizes: tuple[tuple[float, ...], ...],
                 aspect_ratios: tuple[float, ...], offset: float) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} anchor size groups for {len(strides)} pyramid levels")
        self.strides = strides
        self.offset = offset
        self.cells = [cell_anchors(s, aspect_ratios) for s in sizes]

    @property
    def num_anchors(self) -> int:
        return self.cells[0].shape[0]

    def __call__(self, features: list[Tensor]) -> list[Tensor]:
        return [
            grid_anchors(tuple(f.shape[-2:]), stride, cell, self.offset, f.device)
            for f, stride, cell in zip(features, self.strides, self.cells)
        ]


def flatten_per_location(x: Tensor, channels: int) -> Tensor:
    """(N, A*C, H, W) -> (N, H*W*A, C): the order of the anchors."""
    n, _, h, w = x.shape
    return x.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)
