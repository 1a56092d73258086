"""The training losses of DynamicHead's ATSS detector (``extra/atss.py``, ``ATSS.losses``).

* ``loss_cls``: sigmoid focal loss (the official kernel's formulas) summed over every anchor
  and class, divided by the number of positive anchors (averaged over processes, at least 1);
* ``loss_box_reg``: ``REG_LOSS_WEIGHT`` x the GIoU loss of the positives' decoded boxes,
  weighted by their centerness targets and divided by the targets' sum (averaged over processes);
* ``loss_ctr``: binary cross-entropy of the centerness logits against those targets, summed,
  divided by the number of positives.

The official code gathers the positives' anchors in level-major order while their targets are
image-major, so in a batch of several images a positive's deltas are decoded on another
anchor of the same shape. Both the predicted and the target box go through that same anchor,
and GIoU and centerness do not change under the shift and scale that maps one square anchor
onto another, so the true anchors used here give the official values (to float rounding).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_zoo.distributed import all_reduce_sum, world_size
from dyhead_zoo.losses.atss_assignment import atss_assign
from dyhead_zoo.losses.focal_loss import sigmoid_focal_loss_sum
from dyhead_zoo.losses.giou_loss import giou_loss
from dyhead_zoo.losses.targets import check_targets
from dyhead_zoo.models.anchors import flatten_per_location
from dyhead_zoo.models.box_coder import apply_deltas, encode_deltas


def centerness_targets(boxes: Tensor, anchors: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of each anchor centre in its box.

    ``boxes`` and ``anchors`` (P, 4) XYXY; the centres must lie inside the boxes. Returns (P,).
    """
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack([cx - boxes[:, 0], boxes[:, 2] - cx], dim=1)
    top_bottom = torch.stack([cy - boxes[:, 1], boxes[:, 3] - cy], dim=1)
    return torch.sqrt((left_right.min(dim=-1).values / left_right.max(dim=-1).values)
                      * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values))


def atss_losses(head: nn.Module, outputs: tuple[list[Tensor], list[Tensor], list[Tensor]], anchors: list[Tensor],
                image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """ATSS ``loss_cls``, ``loss_box_reg`` and ``loss_ctr`` for a batch (see the module docstring).

    ``head``: the :class:`~dyhead_zoo.models.atss.ATSSHead` (its ``config`` and ``num_classes``);
    ``outputs``: its per-level class logits (N, A*C, H, W), box deltas (N, A*4, H, W) and
    centerness logits (N, A, H, W); ``anchors``: per level (H*W*A, 4) XYXY, shared by all
    images; ``targets``: per image ``boxes`` (K, 4) XYXY in input pixels and ``labels`` (K,)
    0-based, K = 0 allowed. ``image_sizes`` are not needed by ATSS (anchors outside the image
    still learn), kept for a uniform signature. Returns scalar tensors.
    """
    config = head.config
    logits, deltas, centers = outputs
    num_images, num_classes = logits[0].shape[0], head.num_classes
    checked = check_targets(targets, num_images, num_classes, logits[0].device)
    per_location = anchors[0].shape[0] // (logits[0].shape[-2] * logits[0].shape[-1])
    all_anchors = torch.cat(anchors)

    labels, box_targets = [], []
    for boxes, gt_labels in checked:
        image_labels, matched = atss_assign(anchors, boxes.to(all_anchors.dtype), gt_labels, config.atss_topk,
                                            per_location)
        labels.append(image_labels)
        # Targets as the official code keeps them: deltas to the matched box, decoded back below.
        box_targets.append(encode_deltas(all_anchors, matched, config.bbox_reg_weights))
    labels_flat = torch.cat(labels)
    box_targets_flat = torch.cat(box_targets)
    anchors_flat = all_anchors.repeat(num_images, 1)
    logits_flat = torch.cat([flatten_per_location(x, num_classes) for x in logits], dim=1).reshape(-1, num_classes)
    deltas_flat = torch.cat([flatten_per_location(x, 4) for x in deltas], dim=1).reshape(-1, 4)
    centers_flat = torch.cat([flatten_per_location(x, 1) for x in centers], dim=1).reshape(-1)

    positive = torch.nonzero(labels_flat > 0).squeeze(1)
    processes = world_size()
    total_positive = all_reduce_sum(positive.new_tensor([positive.numel()])).item()
    positive_per_process = max(total_positive / float(processes), 1.0)
    loss_cls = sigmoid_focal_loss_sum(logits_flat, labels_flat.int(), config.focal_loss_gamma,
                                      config.focal_loss_alpha) / positive_per_process

    deltas_pos = deltas_flat[positive]
    centers_pos = centers_flat[positive]
    if positive.numel() > 0:
        anchors_pos = anchors_flat[positive]
        target_boxes = apply_deltas(box_targets_flat[positive], anchors_pos, config.bbox_reg_weights)
        ctr_targets = centerness_targets(target_boxes, anchors_pos)
        ctr_sum_per_process = all_reduce_sum(ctr_targets.sum()).item() / float(processes)
        pred_boxes = apply_deltas(deltas_pos, anchors_pos, config.bbox_reg_weights)
        box_losses = giou_loss(pred_boxes, target_boxes)
        weighted = (box_losses * ctr_targets).sum() if ctr_targets.sum() > 0 else box_losses.sum()
        loss_box_reg = weighted / ctr_sum_per_process
        loss_ctr = F.binary_cross_entropy_with_logits(centers_pos, ctr_targets, reduction="sum") / positive_per_process
    else:
        # Zero losses that keep the graph connected; the all-reduce keeps processes in step.
        loss_box_reg = deltas_pos.sum()
        all_reduce_sum(centers_flat.new_tensor([0.0]))
        loss_ctr = centers_pos.sum()
    return {"loss_cls": loss_cls, "loss_ctr": loss_ctr, "loss_box_reg": loss_box_reg * config.reg_loss_weight}
