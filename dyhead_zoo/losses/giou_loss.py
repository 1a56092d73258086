"""The GIoU box loss of DynamicHead's ATSS (``ATSS.GIoULoss``), with its exact conventions."""
from __future__ import annotations

import torch
from torch import Tensor


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """Per-box ``1 - GIoU`` of ``pred_boxes`` (P, 4) against ``target_boxes`` (P, 4), both XYXY.

    As the official code: a predicted box whose corners are swapped collapses to zero width
    (x2 = max(x1, x2)); the intersection counts only where it has positive width and height;
    1e-7 is added to the union and to the enclosing area. Returns (P,) in the boxes' dtype.
    """
    px1, py1 = pred_boxes[:, 0], pred_boxes[:, 1]
    px2 = torch.max(px1, pred_boxes[:, 2])
    py2 = torch.max(py1, pred_boxes[:, 3])
    pred_area = (px2 - px1) * (py2 - py1)
    tx1, ty1, tx2, ty2 = target_boxes.unbind(1)
    target_area = (tx2 - tx1) * (ty2 - ty1)

    ix1, iy1 = torch.max(px1, tx1), torch.max(py1, ty1)
    ix2, iy2 = torch.min(px2, tx2), torch.min(py2, ty2)
    overlaps = (iy2 > iy1) & (ix2 > ix1)
    intersection = torch.where(overlaps, (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(px1))

    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1)) + 1e-7
    union = pred_area + target_area - intersection + 1e-7
    giou = intersection / union - (enclosing - union) / enclosing
    return 1.0 - giou
