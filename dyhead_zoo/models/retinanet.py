"""RetinaNet head (``head``) and detectron2's RetinaNet inference rules."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dyhead_zoo.config import HeadConfig
from dyhead_zoo.models.anchors import flatten_per_location
from dyhead_zoo.models.box_coder import apply_deltas
from dyhead_zoo.models.candidates import sigmoid_candidates

#: detectron2's starting value of RetinaNet's loss normaliser ("any reasonable #fg").
INITIAL_LOSS_NORMALIZER = 100.0


def _subnet(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def decode_level(probs: Tensor, deltas: Tensor, anchors: Tensor, score_thresh: float, topk: int,
                 weights: tuple[float, float, float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """One image, one level: ``probs`` (R, K) class probabilities, ``deltas`` (R, 4), ``anchors``
    (R, 4) XYXY. Keeps (anchor, class) pairs with prob > ``score_thresh``, then the ``topk``
    best of those (sorted, best first); returns their decoded boxes (k, 4), scores, classes.
    """
    indices = (probs > score_thresh).flatten().nonzero().squeeze(1)
    return decode_candidates(indices, probs.flatten()[indices], probs.shape[1], deltas, anchors, topk, weights)


def decode_candidates(indices: Tensor, scores: Tensor, num_classes: int, deltas: Tensor, anchors: Tensor,
                      topk: int, weights: tuple[float, float, float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """The ``topk`` best of one level's candidates, sorted best first: ``indices`` (M,) into the
    flattened (anchor, class) scores with ``num_classes`` classes, ascending, and their
    ``scores`` (M,). Returns their decoded boxes (k, 4) from ``deltas`` (R, 4) and ``anchors``
    (R, 4) XYXY, scores (k,) and classes (k,)."""
    scores, top = scores.topk(min(indices.shape[0], topk))
    anchor_idx, classes = indices[top].div(num_classes, rounding_mode="floor"), indices[top] % num_classes
    boxes = apply_deltas(deltas[anchor_idx], anchors[anchor_idx], weights)
    return boxes, scores, classes


class RetinaNetHead(nn.Module):
    """Two towers of ``num_convs`` 3x3 conv + ReLU (no norm), then 3x3 class and box predictors
    with ``num_anchors`` anchors per location, shared across the pyramid levels."""

    def __init__(self, config: HeadConfig, channels: int, num_classes: int, num_anchors: int,
                 num_levels: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.cls_subnet = _subnet(channels, config.num_convs)
        self.bbox_subnet = _subnet(channels, config.num_convs)
        self.cls_score = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        # Training: running average of the foreground-anchor count that divides the losses
        # (training/retinanet_loss.py). A plain float, not a buffer, so the official
        # state_dict keys stay as they are; trainers save and restore it themselves.
        self.loss_normalizer: float = INITIAL_LOSS_NORMALIZER

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: class logits (N, A*K, H, W) and box deltas (N, A*4, H, W)."""
        if len(features) != self.num_levels:
            raise ValueError(f"RetinaNetHead was built for {self.num_levels} levels, got {len(features)}")
        logits = [self.cls_score(self.cls_subnet(f)) for f in features]
        deltas = [self.bbox_pred(self.bbox_subnet(f)) for f in features]
        return logits, deltas

    def inference(self, outputs: tuple[list[Tensor], list[Tensor]], anchors: list[Tensor],
                  num_images: int, max_detections: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: boxes (K, 4) XYXY in input pixels (not clipped), scores (K,), 0-based labels (K,).

        Per level, sigmoid scores above ``score_thresh`` and among the level's best
        ``topk_candidates`` are decoded; all levels then go through class-wise NMS and the best
        ``max_detections`` are kept.
        """
        cfg = self.config
        logits, deltas = outputs
        logits = [flatten_per_location(x, self.num_classes) for x in logits]
        deltas = [flatten_per_location(x, 4) for x in deltas]
        results = []
        for i in range(num_images):
            parts = []
            for x, d, a in zip(logits, deltas, anchors):
                # float32 scores whatever the network's dtype (NMS wants one dtype for boxes and
                # scores); the sigmoid runs on the candidates only.
                indices, scores = sigmoid_candidates(x[i], cfg.score_thresh)
                parts.append(decode_candidates(indices, scores, self.num_classes, d[i], a, cfg.topk_candidates,
                                               cfg.bbox_reg_weights))
            boxes, scores, labels = (torch.cat(x) for x in zip(*parts))
            keep = batched_nms(boxes.float(), scores, labels, cfg.nms_thresh)[:max_detections]
            results.append((boxes[keep], scores[keep], labels[keep]))
        return results
