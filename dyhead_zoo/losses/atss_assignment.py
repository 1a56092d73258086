"""Adaptive Training Sample Selection (ATSS): which anchors learn which ground-truth box.

The rule of DynamicHead's ``ATSS.label_anchors`` (from sfzhang15/ATSS): per ground-truth box,
the ``topk`` anchors per pyramid level whose centres are nearest its centre are candidates;
a candidate is positive when its IoU reaches the mean + standard deviation of the
candidates' IoUs and its centre lies inside the box (more than 0.01 px from every side); an
anchor positive for several boxes takes the one it overlaps most.
"""
from __future__ import annotations

import torch
from torch import Tensor

#: What an anchor that is no candidate gets in the IoU table (the official INF).
_NOT_CANDIDATE = -1e8


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU matrix (N, M) of XYXY ``boxes1`` (N, 4) and ``boxes2`` (M, 4), as detectron2's
    ``pairwise_iou`` (0 where the boxes do not intersect)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    width_height = torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])
    inter = width_height.clamp(min=0).prod(dim=2)
    return torch.where(inter > 0, inter / (area1[:, None] + area2 - inter), torch.zeros_like(inter))


def _centres(boxes: Tensor) -> Tensor:
    return torch.stack(((boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0), dim=1)


@torch.no_grad()
def atss_assign(anchors: list[Tensor], gt_boxes: Tensor, gt_labels: Tensor, topk: int,
                anchors_per_location: int = 1) -> tuple[Tensor, Tensor]:
    """Assign one image's anchors to its ground truth.

    ``anchors``: per pyramid level (A_l, 4) XYXY float; ``gt_boxes`` (K, 4) XYXY in the same
    pixels, ``gt_labels`` (K,) int64 0-based; ``topk`` candidates per level and per anchor
    shape (``anchors_per_location``). Returns ``labels`` (A,) int64, the matched box's label
    + 1 for positives and 0 for background, and ``matched_boxes`` (A, 4), the box each anchor
    regresses to (meaningful only for positives; box 0 for the others, zeros when K = 0).
    """
    all_anchors = torch.cat(anchors)
    num_anchors, num_gt = all_anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return (torch.zeros(num_anchors, dtype=torch.int64, device=all_anchors.device),
                torch.zeros_like(all_anchors))
    ious = pairwise_iou(all_anchors, gt_boxes)
    anchor_centres = _centres(all_anchors)
    distances = (anchor_centres[:, None, :] - _centres(gt_boxes)[None, :, :]).pow(2).sum(-1).sqrt()

    candidates = []
    start = 0
    for level_anchors in anchors:
        end = start + level_anchors.shape[0]
        k = min(topk * anchors_per_location, level_anchors.shape[0])
        _, nearest = distances[start:end].topk(k, dim=0, largest=False)
        candidates.append(nearest + start)
        start = end
    candidates = torch.cat(candidates)  # (candidates, K)

    gt_index = torch.arange(num_gt, device=gt_boxes.device)
    candidate_ious = ious[candidates, gt_index]
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)
    is_positive = candidate_ious >= threshold[None, :]

    centres = anchor_centres[candidates]  # (candidates, K, 2)
    sides = torch.stack([centres[..., 0] - gt_boxes[:, 0], centres[..., 1] - gt_boxes[:, 1],
                         gt_boxes[:, 2] - centres[..., 0], gt_boxes[:, 3] - centres[..., 1]], dim=1)
    is_positive &= sides.min(dim=1).values > 0.01

    # Highest IoU wins among the boxes an anchor is positive for; ties go to the first box.
    table = torch.full_like(ious, _NOT_CANDIDATE)
    rows, cols = candidates[is_positive], gt_index.expand_as(candidates)[is_positive]
    table[rows, cols] = ious[rows, cols]
    best_iou, best_gt = table.max(dim=1)
    labels = gt_labels[best_gt] + 1
    labels[best_iou == _NOT_CANDIDATE] = 0
    return labels, gt_boxes[best_gt]
