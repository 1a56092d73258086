"""XYXY box helpers shared by the heads and the post-processing (detectron2 ``Boxes`` rules)."""
from __future__ import annotations

import torch
from torch import Tensor


def clip_boxes(boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """XYXY ``boxes`` (R, 4) with x clamped to [0, w] and y to [0, h] (a new tensor)."""
    h, w = image_hw
    return torch.stack((boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)), dim=-1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Mask of XYXY ``boxes`` whose width and height both exceed ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
