"""The region proposal network's training losses and proposals, as detectron2's ``RPN`` computes them."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_zoo.config import RPNConfig
from dyhead_zoo.losses.box_regression import box_regression_loss
from dyhead_zoo.losses.matcher import Matcher, pairwise_iou
from dyhead_zoo.losses.sampling import subsample_labels
from dyhead_zoo.models.rpn import top_proposals


def label_and_sample_anchors(anchors: Tensor, gt_boxes: Tensor, matcher: Matcher, batch_size_per_image: int,
                             positive_fraction: float) -> tuple[Tensor, Tensor]:
    """One image: ``anchors`` (R, 4) and ``gt_boxes`` (K, 4) XYXY.

    Labels anchors by IoU (1 object, 0 background, -1 ignored), then keeps a random sample of
    at most ``batch_size_per_image`` labelled anchors, up to ``positive_fraction`` of them
    objects (:func:`~dyhead_zoo.losses.sampling.subsample_labels`); the others become -1.
    Returns the labels (R,) int8 and each anchor's matched box (R, 4) (zeros without ground truth).
    """
    matched_idxs, labels = matcher(pairwise_iou(gt_boxes, anchors))
    positive, negative = subsample_labels(labels, batch_size_per_image, positive_fraction, 0)
    labels = torch.full_like(labels, -1)
    labels[positive] = 1
    labels[negative] = 0
    matched = gt_boxes[matched_idxs] if gt_boxes.shape[0] else torch.zeros_like(anchors)
    return labels, matched


def rpn_losses(anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
               ground_truth: Sequence[tuple[Tensor, Tensor]], config: RPNConfig) -> dict[str, Tensor]:
    """``loss_rpn_cls`` and ``loss_rpn_loc`` for a batch of N images.

    ``anchors``: per level (R_l, 4) XYXY; ``logits``: per level objectness (N, R_l); ``deltas``:
    per level (N, R_l, 4), in the anchors' order; ``ground_truth``: per image (boxes (K, 4)
    XYXY, labels (K,)). Anchors are labelled with ``config.iou_thresholds`` / ``iou_labels``
    (each ground truth also claims its best anchors) and sampled per image, one image after the
    other (so seeded runs draw what detectron2 draws). Both sums (binary cross-entropy over the
    sampled anchors, box loss over the sampled objects) are divided by
    ``batch_size_per_image`` x N, whatever the number actually sampled, as detectron2 does.
    """
    all_anchors = torch.cat(anchors)
    matcher = Matcher(tuple(config.iou_thresholds), tuple(config.iou_labels), allow_low_quality_matches=True)
    with torch.no_grad():
        labelled = [label_and_sample_anchors(all_anchors, boxes, matcher, config.batch_size_per_image,
                                             config.positive_fraction) for boxes, _ in ground_truth]
    gt_labels = torch.stack([labels for labels, _ in labelled])  # (N, R)
    gt_boxes = torch.stack([boxes for _, boxes in labelled])  # (N, R, 4)
    logits = torch.cat(logits, dim=1)
    deltas = torch.cat(deltas, dim=1)
    positive = gt_labels == 1
    valid = gt_labels >= 0
    fg_anchors = all_anchors.expand(gt_labels.shape[0], -1, -1)[positive]
    loss_loc = box_regression_loss(deltas[positive], fg_anchors, gt_boxes[positive], config.bbox_reg_weights,
                                   config.bbox_reg_loss_type, config.smooth_l1_beta)
    loss_cls = F.binary_cross_entropy_with_logits(logits[valid], gt_labels[valid].to(logits.dtype), reduction="sum")
    normalizer = config.batch_size_per_image * len(ground_truth)
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


@torch.no_grad()
def training_proposals(anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
                       image_sizes: Sequence[tuple[int, int]], config: RPNConfig) -> list[Tensor]:
    """Per image the proposals (P, 4) XYXY for the ROI heads, without gradient (detectron2 treats
    them as fixed): the ``pre_nms_topk_train`` best anchors per level, NMS per level, then the
    ``post_nms_topk_train`` best of the image. Inputs as in :func:`rpn_losses`; raises
    ``FloatingPointError`` when the predictions are not finite (training has diverged)."""
    for x in (*logits, *deltas):
        if not torch.isfinite(x).all():
            raise FloatingPointError("the RPN predicted NaN or infinite values: training has diverged "
                                     "(lower the learning rate or enable gradient clipping)")
    return [
        top_proposals(anchors, [d[i] for d in deltas], [s[i] for s in logits], size, config.pre_nms_topk_train,
                      config.post_nms_topk_train, config.nms_thresh, config.bbox_reg_weights)[0]
        for i, size in enumerate(image_sizes)
    ]
