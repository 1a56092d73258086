"""Checking the ground truth passed to a training forward (torchvision's ``targets`` format)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_targets(targets: Sequence[dict[str, Tensor]], num_images: int, num_classes: int,
                  device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Per image, ``boxes`` (K, 4) float32 XYXY and ``labels`` (K,) int64 on ``device``.

    ``targets`` holds one dict per image with ``boxes`` (K, 4) XYXY in the resized image's
    pixels and 0-based ``labels`` (K,) below ``num_classes``; K = 0 is allowed. Raises
    ``ValueError`` / ``TypeError`` naming the image and the fix.
    """
    if len(targets) != num_images:
        raise ValueError(f"got {len(targets)} targets for {num_images} images; pass one dict per image")
    checked = []
    for i, target in enumerate(targets):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise TypeError(f"targets[{i}] must be a dict with 'boxes' (K, 4) XYXY and 'labels' (K,), "
                            f"got {type(target).__name__}")
        boxes = torch.as_tensor(target["boxes"])
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)  # an image without objects may come as an empty (0,) tensor
        labels = torch.as_tensor(target["labels"])
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be (K, 4) XYXY, got shape {tuple(boxes.shape)}")
        if labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"targets[{i}]['labels'] must be ({boxes.shape[0]},) like the boxes, "
                             f"got shape {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"targets[{i}]['labels'] must be integer class indices, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must be 0-based below {num_classes}, got values "
                             f"{int(labels.min())}..{int(labels.max())}")
        boxes = boxes.to(device=device, dtype=torch.float32)
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{i}]['boxes'] contains NaN or infinite values")
        if boxes.numel() and bool(((boxes[:, 2:] < boxes[:, :2]).any())):
            raise ValueError(f"targets[{i}]['boxes'] must be XYXY with x2 >= x1 and y2 >= y1 "
                             "(convert XYWH boxes with torchvision.ops.box_convert)")
        checked.append((boxes, labels.to(device=device, dtype=torch.int64)))
    return checked
