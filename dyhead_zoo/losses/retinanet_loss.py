"""RetinaNet's training losses, as detectron2's ``RetinaNet.losses`` computes them."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from dyhead_zoo.losses.box_regression import box_regression_loss, check_box_reg_loss_type
from dyhead_zoo.losses.matcher import Matcher, pairwise_iou
from dyhead_zoo.losses.targets import check_targets
from dyhead_zoo.models.anchors import flatten_per_location

#: Weight of the old value in the running foreground count (detectron2 hard-codes it).
LOSS_NORMALIZER_MOMENTUM = 0.9


def label_anchors(anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, matcher: Matcher, num_classes: int
                  ) -> tuple[Tensor, Tensor]:
    """One image: each anchor's class and matched box.

    ``anchors`` (R, 4) and ``gt_boxes`` (K, 4) XYXY, ``gt_labels`` (K,) 0-based. Returns the
    labels (R,) int64 (0..num_classes-1 foreground, ``num_classes`` background, -1 ignored) and
    the matched ground-truth boxes (R, 4) (meaningful for foreground anchors only).
    """
    matched_idxs, match_labels = matcher(pairwise_iou(gt_boxes, anchors))
    if gt_boxes.shape[0] == 0:
        return torch.full_like(matched_idxs, num_classes), torch.zeros_like(anchors)
    labels = gt_labels[matched_idxs]
    labels[match_labels == 0] = num_classes
    labels[match_labels == -1] = -1
    return labels, gt_boxes[matched_idxs]


def update_loss_normalizer(head: torch.nn.Module, num_foreground: int) -> float:
    """Move ``head.loss_normalizer`` towards this batch's foreground-anchor count (at least 1)
    with momentum :data:`LOSS_NORMALIZER_MOMENTUM`; returns the new value (a float)."""
    head.loss_normalizer = (LOSS_NORMALIZER_MOMENTUM * head.loss_normalizer
                            + (1 - LOSS_NORMALIZER_MOMENTUM) * max(num_foreground, 1))
    return head.loss_normalizer


def retinanet_losses(head: torch.nn.Module, outputs: tuple[list[Tensor], list[Tensor]], anchors: list[Tensor],
                     image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, Tensor]]
                     ) -> dict[str, Tensor]:
    """``loss_cls`` and ``loss_box_reg`` of a :class:`~dyhead_zoo.models.retinanet.RetinaNetHead`.

    ``outputs``: the head's per-level class logits (N, A*K, H, W) and box deltas (N, A*4, H, W);
    ``anchors``: per level (H*W*A, 4) XYXY; ``targets``: per image ``boxes`` (K, 4) XYXY in input
    pixels and 0-based ``labels`` (K,). Anchors are labelled by IoU with ``iou_thresholds`` and
    ``iou_labels`` (each ground truth also claims its best anchors); the losses are the summed
    sigmoid focal loss over the labelled anchors and the box loss over the foreground ones, both
    divided by the head's running normaliser, which this call updates (a side effect, as in
    detectron2). ``image_sizes`` are unused: anchors are not clipped to the image.
    """
    cfg = head.config
    check_box_reg_loss_type(cfg.bbox_reg_loss_type)
    logits, deltas = outputs
    num_classes = head.num_classes
    logits = torch.cat([flatten_per_location(x, num_classes) for x in logits], dim=1)  # (N, R, K)
    deltas = torch.cat([flatten_per_location(x, 4) for x in deltas], dim=1)  # (N, R, 4)
    all_anchors = torch.cat(anchors)
    ground_truth = check_targets(targets, logits.shape[0], num_classes, logits.device)
    matcher = Matcher(tuple(cfg.iou_thresholds), tuple(cfg.iou_labels), allow_low_quality_matches=True)
    with torch.no_grad():
        labelled = [label_anchors(all_anchors, boxes, labels, matcher, num_classes) for boxes, labels in ground_truth]
    gt_labels = torch.stack([labels for labels, _ in labelled])  # (N, R)
    gt_boxes = torch.stack([boxes for _, boxes in labelled])  # (N, R, 4)
    valid = gt_labels >= 0
    foreground = valid & (gt_labels != num_classes)
    normalizer = update_loss_normalizer(head, int(foreground.sum()))
    # One-hot over K + 1 columns, then the background column dropped: background rows are all zero.
    one_hot = F.one_hot(gt_labels[valid], num_classes=num_classes + 1)[:, :-1].to(logits.dtype)
    loss_cls = sigmoid_focal_loss(logits[valid], one_hot, alpha=cfg.focal_loss_alpha, gamma=cfg.focal_loss_gamma,
                                  reduction="sum")
    fg_anchors = all_anchors.expand(gt_labels.shape[0], -1, -1)[foreground]
    loss_box_reg = box_regression_loss(deltas[foreground], fg_anchors, gt_boxes[foreground], cfg.bbox_reg_weights,
                                       cfg.bbox_reg_loss_type, cfg.smooth_l1_loss_beta)
    return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}
