"""detectron2's box regression losses for anchors and proposals (``_dense_box_regression_loss``)."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from dyhead_zoo.models.box_coder import apply_deltas, encode_deltas

#: The ``BBOX_REG_LOSS_TYPE`` values implemented here.
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou")


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Elementwise smooth L1 (fvcore's): plain L1 when ``beta`` < 1e-5, else quadratic below ``beta``."""
    diff = torch.abs(input - target)
    if beta < 1e-5:
        # The quadratic branch would divide by ~0; detectron2 configs use beta 0 to mean L1.
        return diff
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


def check_box_reg_loss_type(loss_type: str) -> None:
    """Raise ``ValueError`` for a ``BBOX_REG_LOSS_TYPE`` this package does not implement."""
    if loss_type not in BOX_REG_LOSS_TYPES:
        raise ValueError(f"box regression loss {loss_type!r} is not implemented; choose one of "
                         f"{list(BOX_REG_LOSS_TYPES)} (bbox_reg_loss_type in the config)")


def box_regression_loss(pred_deltas: Tensor, boxes: Tensor, gt_boxes: Tensor,
                        weights: tuple[float, float, float, float], loss_type: str, beta: float) -> Tensor:
    """Summed regression loss of foreground predictions: ``pred_deltas`` (F, 4) relative to
    ``boxes`` (F, 4) XYXY anchors/proposals, whose matched ground truth is ``gt_boxes`` (F, 4).

    ``"smooth_l1"`` compares the deltas with the encoded ground truth (``beta`` 0 = L1);
    ``"giou"`` decodes the deltas and sums the GIoU losses. Returns a scalar (0 when F = 0,
    still connected to ``pred_deltas``).
    """
    check_box_reg_loss_type(loss_type)
    if loss_type == "smooth_l1":
        targets = encode_deltas(boxes, gt_boxes, weights)
        return smooth_l1_loss(pred_deltas, targets, beta).sum()
    pred_boxes = apply_deltas(pred_deltas, boxes, weights)
    return generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum")
