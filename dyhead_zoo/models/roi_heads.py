"""Faster R-CNN box branch (``roi_heads``): detectron2's StandardROIHeads at test time."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align

from dyhead_zoo.config import ROIHeadsConfig
from dyhead_zoo.models.box_coder import apply_deltas
from dyhead_zoo.models.boxes import clip_boxes

CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4


def assign_boxes_to_levels(boxes: Tensor, min_level: int, max_level: int,
                           canonical_box_size: int = CANONICAL_BOX_SIZE,
                           canonical_level: int = CANONICAL_LEVEL) -> Tensor:
    """Pyramid level of each XYXY box (R, 4), as an int64 offset from ``min_level``.

    A box of side sqrt(area) = ``canonical_box_size`` goes to ``canonical_level``; each
    doubling of the side moves one level up; the result is clamped to [min_level, max_level].
    """
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def pool_boxes(features: list[Tensor], strides: list[int], boxes: list[Tensor], output_size: int,
               sampling_ratio: int) -> Tensor:
    """ROIAlignV2 (``aligned=True``) over a pyramid: ``features`` per level (N, C, H, W) with
    power-of-two ``strides`` (consecutive levels), ``boxes`` per image (R_i, 4) XYXY in input
    pixels. Each box is pooled from its level (:func:`assign_boxes_to_levels`); returns
    (sum R_i, C, output_size, output_size) in the order of the boxes.
    """
    min_level = int(math.log2(strides[0]))
    max_level = int(math.log2(strides[-1]))
    rois = torch.cat([
        torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)
    ]).float()
    # Pooled in float32 whatever the features' dtype: half-precision box corners would be off by
    # pixels, and torchvision's CPU roi_align has no bfloat16 kernel.
    if len(features) == 1:
        return roi_align(features[0].float(), rois, output_size, 1.0 / strides[0], sampling_ratio,
                         aligned=True).to(features[0].dtype)
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    levels = assign_boxes_to_levels(torch.cat(boxes), min_level, max_level)
    for level, (x, stride) in enumerate(zip(features, strides)):
        index = (levels == level).nonzero().squeeze(1)
        out[index] = roi_align(x.float(), rois[index], output_size, 1.0 / stride, sampling_ratio,
                               aligned=True).to(out.dtype)
    return out


class BoxHead(nn.Module):
    """Flatten the pooled features, then ``num_fc`` fully connected layers each followed by ReLU."""

    def __init__(self, in_features: int, fc_dim: int, num_fc: int) -> None:
        super().__init__()
        self.num_fc = num_fc
        for k in range(num_fc):
            self.add_module(f"fc{k + 1}", nn.Linear(in_features if k == 0 else fc_dim, fc_dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for k in range(self.num_fc):
            x = torch.relu(getattr(self, f"fc{k + 1}")(x))
        return x


class BoxPredictor(nn.Module):
    """Class logits (K + 1, background last) and class-specific box deltas (K * 4)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def detections_from_boxes(boxes: Tensor, probs: Tensor, image_hw: tuple[int, int], score_thresh: float,
                          nms_thresh: float, max_detections: int) -> tuple[Tensor, Tensor, Tensor]:
    """One image: class-specific ``boxes`` (R, K*4) XYXY and softmax ``probs`` (R, K+1), background last.

    Drops the background column and non-finite rows, clips the boxes to ``image_hw`` (h, w),
    keeps (box, class) pairs with prob > ``score_thresh``, runs class-wise NMS and returns the
    best ``max_detections``: boxes (D, 4), scores (D,), 0-based labels (D,).
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
    if not finite.all():
        boxes, probs = boxes[finite], probs[finite]
    scores = probs[:, :-1]
    boxes = clip_boxes(boxes.reshape(-1, 4), image_hw).view(scores.shape[0], -1, 4)
    candidates = scores > score_thresh
    labels = candidates.nonzero()[:, 1]
    boxes, scores = boxes[candidates], scores[candidates]
    keep = batched_nms(boxes.float(), scores, labels, nms_thresh)[:max_detections]
    return boxes[keep], scores[keep], labels[keep]


class ROIHeads(nn.Module):
    """Pool each proposal from its pyramid level, run the FC box head, classify and refine."""

    def __init__(self, config: ROIHeadsConfig, channels: int, num_classes: int, strides: dict[str, int]) -> None:
        super().__init__()
        names = list(config.in_features)
        level_strides = [strides[n] for n in names]
        for a, b in zip(level_strides, level_strides[1:]):
            if b != 2 * a:
                raise ValueError(f"ROI pooling levels {names} must have strides doubling level to level, "
                                 f"got {level_strides}")
        if level_strides[0] & (level_strides[0] - 1):
            raise ValueError(f"ROI pooling strides must be powers of two, got {level_strides}")
        self.config = config
        self.strides = level_strides
        self.box_head = BoxHead(channels * config.pooler_resolution**2, config.fc_dim, config.num_fc)
        self.box_predictor = BoxPredictor(config.fc_dim, num_classes)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                max_detections: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``features``: named pyramid levels (N, C, H, W); ``proposals``: per image (R_i, 4) XYXY;
        ``image_sizes``: each image's (h, w) before padding.

        Returns per image: boxes (D, 4) XYXY in input pixels, scores (D,), 0-based labels (D,).
        """
        cfg = self.config
        pooled = pool_boxes([features[n] for n in cfg.in_features], self.strides, proposals,
                            cfg.pooler_resolution, cfg.pooler_sampling_ratio)
        logits, deltas = self.box_predictor(self.box_head(pooled))
        boxes = apply_deltas(deltas, torch.cat(proposals), cfg.bbox_reg_weights)
        probs = torch.softmax(logits.float(), dim=-1)  # float32 post-processing whatever the network's dtype
        counts = [p.shape[0] for p in proposals]
        return [
            detections_from_boxes(b, p, size, cfg.score_thresh, cfg.nms_thresh, max_detections)
            for b, p, size in zip(boxes.split(counts), probs.split(counts), image_sizes)
        ]
