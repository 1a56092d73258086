"""Region proposal network (``proposal_generator``) with detectron2's RPN inference rules."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dyhead_zoo.config import RPNConfig
from dyhead_zoo.models.anchors import AnchorGenerator, flatten_per_location
from dyhead_zoo.models.box_coder import apply_deltas
from dyhead_zoo.models.boxes import clip_boxes, nonempty


def top_proposals(anchors: list[Tensor], deltas: list[Tensor], logits: list[Tensor],
                  image_hw: tuple[int, int], pre_nms_topk: int, post_nms_topk: int, nms_thresh: float,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                  min_box_size: float = 0.0) -> tuple[Tensor, Tensor]:
    """One image: per level ``anchors`` (R_l, 4) XYXY, box ``deltas`` (R_l, 4) and objectness
    ``logits`` (R_l,).

    Keeps the ``pre_nms_topk`` best anchors of each level and decodes them with ``weights``,
    drops non-finite ones, clips to ``image_hw`` (h, w), drops boxes no larger than
    ``min_box_size``, runs NMS within each level and returns the ``post_nms_topk`` best over
    all levels: boxes (P, 4) and their logits (P,), best first.
    """
    boxes, scores, level_ids = [], [], []
    for level, (level_anchors, level_deltas, level_logits) in enumerate(zip(anchors, deltas, logits)):
        top_logits, top = level_logits.topk(min(level_logits.shape[0], pre_nms_topk))
        # Decoding is elementwise, so decoding only the kept anchors gives the same boxes.
        boxes.append(apply_deltas(level_deltas[top], level_anchors[top], weights))
        scores.append(top_logits)
        level_ids.append(torch.full_like(top, level))
    boxes, scores, level_ids = torch.cat(boxes), torch.cat(scores), torch.cat(level_ids)
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if not finite.all():
        boxes, scores, level_ids = boxes[finite], scores[finite], level_ids[finite]
    boxes = clip_boxes(boxes, image_hw)
    keep = nonempty(boxes, min_box_size)
    boxes, scores, level_ids = boxes[keep], scores[keep], level_ids[keep]
    keep = batched_nms(boxes.float(), scores, level_ids, nms_thresh)[:post_nms_topk]
    return boxes[keep], scores[keep]


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 objectness (A) and box delta (A*4) predictors."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = torch.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """Object proposals from the pyramid levels named in ``config.in_features``."""

    def __init__(self, config: RPNConfig, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.config = config
        self.rpn_head = RPNHead(channels, num_anchors)

    def forward(self, features: list[Tensor], anchor_generator: AnchorGenerator,
                image_sizes: list[tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
        """``features``: per level (N, C, H, W); ``image_sizes``: each image's (h, w) before padding.

        Returns per image the proposals (P, 4) XYXY in input pixels and their objectness
        logits (P,), best first (P <= ``post_nms_topk``).
        """
        cfg = self.config
        anchors = anchor_generator(features)
        logits, deltas = self.rpn_head(features)
        # float32 post-processing whatever the network's dtype (NMS wants one dtype for boxes and scores).
        logits = [flatten_per_location(x, 1).flatten(1).float() for x in logits]
        deltas = [flatten_per_location(x, 4) for x in deltas]
        return [
            top_proposals(anchors, [d[i] for d in deltas], [s[i] for s in logits], size,
                          cfg.pre_nms_topk, cfg.post_nms_topk, cfg.nms_thresh, cfg.bbox_reg_weights)
            for i, size in enumerate(image_sizes)
        ]
