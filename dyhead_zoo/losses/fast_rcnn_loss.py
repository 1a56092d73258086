"""The box branch's training losses (detectron2's ``StandardROIHeads`` + ``FastRCNNOutputLayers``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_zoo.config import ROIHeadsConfig
from dyhead_zoo.losses.box_regression import box_regression_loss, check_box_reg_loss_type
from dyhead_zoo.losses.matcher import Matcher, pairwise_iou
from dyhead_zoo.losses.sampling import subsample_labels
from dyhead_zoo.models.roi_heads import ROIHeads, pool_boxes

#: Objectness logit detectron2 gives the ground truth it appends to the proposals (P ~ 1 - 1e-10).
GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


@dataclass
class SampledProposals:
    """The proposals of one image that train the box branch: ``boxes`` (S, 4) XYXY, their class
    ``gt_classes`` (S,) int64 (``num_classes`` = background) and matched ``gt_boxes`` (S, 4)
    (the proposal itself for background), foreground first."""

    boxes: Tensor
    gt_classes: Tensor
    gt_boxes: Tensor


def label_and_sample_proposals(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, config: ROIHeadsConfig,
                               num_classes: int) -> SampledProposals:
    """One image: ``proposals`` (P, 4) XYXY (no gradient), ground truth ``gt_boxes`` (K, 4) and
    0-based ``gt_labels`` (K,).

    Appends the ground truth to the proposals (``proposal_append_gt``), labels each by IoU with
    ``iou_thresholds`` / ``iou_labels`` (no low-quality matches) and draws a random sample of
    ``batch_size_per_image`` with up to ``positive_fraction`` foreground.
    """
    if config.proposal_append_gt:
        proposals = torch.cat([proposals, gt_boxes.to(proposals.dtype)])
    matcher = Matcher(tuple(config.iou_thresholds), tuple(config.iou_labels), allow_low_quality_matches=False)
    matched_idxs, match_labels = matcher(pairwise_iou(gt_boxes, proposals))
    if gt_boxes.shape[0]:
        classes = gt_labels[matched_idxs]
        classes[match_labels == 0] = num_classes
        classes[match_labels == -1] = -1
    else:
        classes = torch.full_like(matched_idxs, num_classes)
    positive, negative = subsample_labels(classes, config.batch_size_per_image, config.positive_fraction,
                                          num_classes)
    sampled = torch.cat([positive, negative])
    boxes = proposals[sampled]
    matched = gt_boxes[matched_idxs[sampled]] if gt_boxes.shape[0] else boxes
    return SampledProposals(boxes, classes[sampled], matched)


def fast_rcnn_losses(logits: Tensor, deltas: Tensor, samples: SampledProposals, num_classes: int,
                     config: ROIHeadsConfig) -> dict[str, Tensor]:
    """``loss_cls`` and ``loss_box_reg`` of the box predictor.

    ``logits`` (S, K + 1), background last, and class-specific ``deltas`` (S, K * 4) for the
    sampled proposals of the whole batch (``samples``, concatenated). ``loss_cls`` is the mean
    cross-entropy; ``loss_box_reg`` sums the box loss of each foreground proposal's own class's
    deltas and divides by S (not by the foreground count: each foreground box weighs the same
    whatever the batch holds, as detectron2 argues).
    """
    check_box_reg_loss_type(config.bbox_reg_loss_type)
    gt_classes = samples.gt_classes
    if gt_classes.numel() == 0:
        loss_cls = logits.sum() * 0.0  # keeps the graph connected where cross-entropy would be NaN
    else:
        loss_cls = F.cross_entropy(logits, gt_classes, reduction="mean")
    foreground = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes), as_tuple=True)[0]
    fg_deltas = deltas.view(-1, num_classes, 4)[foreground, gt_classes[foreground]]
    loss_box = box_regression_loss(fg_deltas, samples.boxes[foreground], samples.gt_boxes[foreground],
                                   config.bbox_reg_weights, config.bbox_reg_loss_type, config.smooth_l1_beta)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box / max(gt_classes.numel(), 1)}


def roi_heads_losses(roi_heads: ROIHeads, features: dict[str, Tensor], proposals: Sequence[Tensor],
                     ground_truth: Sequence[tuple[Tensor, Tensor]], num_classes: int) -> dict[str, Tensor]:
    """Sample each image's ``proposals`` (P_i, 4) XYXY against its ``ground_truth`` (boxes (K, 4),
    labels (K,)), one image after the other, pool them from ``features`` (named levels
    (N, C, H, W)), run the box head and predictor and return :func:`fast_rcnn_losses`."""
    cfg = roi_heads.config
    with torch.no_grad():
        per_image = [label_and_sample_proposals(p, boxes, labels, cfg, num_classes)
                     for p, (boxes, labels) in zip(proposals, ground_truth)]
    pooled = pool_boxes([features[n] for n in cfg.in_features], roi_heads.strides, [s.boxes for s in per_image],
                        cfg.pooler_resolution, cfg.pooler_sampling_ratio)
    logits, deltas = roi_heads.box_predictor(roi_heads.box_head(pooled))
    samples = SampledProposals(*(torch.cat(parts) for parts in zip(
        *((s.boxes, s.gt_classes, s.gt_boxes) for s in per_image))))
    return fast_rcnn_losses(logits, deltas, samples, num_classes, cfg)
