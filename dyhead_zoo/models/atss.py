"""ATSS head (``head``) and its inference rules, as in DynamicHead's ``extra/atss.py``."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dyhead_zoo.config import HeadConfig
from dyhead_zoo.models.anchors import flatten_per_location
from dyhead_zoo.models.box_coder import apply_deltas
from dyhead_zoo.models.candidates import sigmoid_candidates


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level for the box deltas)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ATSSHead(nn.Module):
    """1x1 classification, box and centerness predictors shared across levels (no extra tower)."""

    def __init__(self, config: HeadConfig, channels: int, num_classes: int, num_anchors: int,
                 num_levels: int) -> None:
        super().__init__()
        if config.num_convs:
            raise ValueError("the DyHead ATSS variants use no head tower (num_convs = 0)")
        self.config = config
        self.num_classes = num_classes
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        self.centerness = nn.Conv2d(channels, num_anchors, 1)
        self.scales = nn.ModuleList([Scale() for _ in range(num_levels)])

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        logits = [self.cls_logits(f) for f in features]
        deltas = [scale(self.bbox_pred(f)) for f, scale in zip(features, self.scales)]
        centers = [self.centerness(f) for f in features]
        return logits, deltas, centers

    def inference(self, outputs: tuple[list[Tensor], list[Tensor], list[Tensor]], anchors: list[Tensor],
                  num_images: int, max_detections: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: boxes (K, 4) XYXY in input pixels, scores (K,), 0-based labels (K,).

        Candidates are sigmoid(cls) > threshold; their score is sigmoid(cls) * sigmoid(ctr);
        the top ``topk_candidates`` per level go to class-wise NMS, then the best
        ``max_detections`` are kept.
        """
        cfg = self.config
        per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(num_images)]
        for logits, deltas, centers, level_anchors in zip(*outputs, anchors):
            # Scores and boxes are decoded in float32 whatever the network's dtype: half-precision
            # scores would round the thresholds and NMS ties, and NMS wants one dtype for both.
            # The sigmoid of the class logits runs on the candidates only (candidates.py).
            logits = flatten_per_location(logits, self.num_classes)
            deltas = flatten_per_location(deltas, 4)
            centers = flatten_per_location(centers, 1).reshape(num_images, -1).float().sigmoid()
            for i in range(num_images):
                indices, probs = sigmoid_candidates(logits[i], cfg.score_thresh)
                scores = probs * centers[i][indices.div(self.num_classes, rounding_mode="floor")]
                scores, top = scores.topk(min(indices.shape[0], cfg.topk_candidates), sorted=False)
                loc, cls = indices[top].div(self.num_classes, rounding_mode="floor"), indices[top] % self.num_classes
                boxes = apply_deltas(deltas[i][loc], level_anchors[loc], cfg.bbox_reg_weights)
                per_image[i].append((boxes, scores, cls))
        results = []
        for parts in per_image:
            boxes, scores, labels = (torch.cat(x) for x in zip(*parts))
            keep = batched_nms(boxes.float(), scores, labels, cfg.nms_thresh)[:max_detections]
            results.append((boxes[keep], scores[keep], labels[keep]))
        return results

