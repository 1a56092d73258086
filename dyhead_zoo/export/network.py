"""The part of a detector that export traces: normalised padded batch in, raw head outputs out.

One-stage variants (ATSS, RetinaNet) stop at the head's per-level maps; everything after them
(thresholds, top-k, NMS) is data-dependent and runs in :mod:`dyhead_zoo.export.decode`.
Faster R-CNN goes further so that the exported file holds every weight: the RPN's per-level
top-k (a fixed count), box decoding, clipping, and the ROI box head run *in the graph* on all
those pre-NMS candidates. Each candidate's pooled features and class scores depend on that box
alone, so the Python step that then applies the RPN's NMS and picks the survivors' rows gets
exactly what the eager model computes on the survivors.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from dyhead_zoo.models.anchors import flatten_per_location
from dyhead_zoo.models.box_coder import apply_deltas
from dyhead_zoo.models.boxes import nonempty
from dyhead_zoo.models.roi_heads import assign_boxes_to_levels


def output_names(model: nn.Module) -> list[str]:
    """Names of :class:`ExportableNetwork`'s outputs for ``model``, in order."""
    config = model.config
    if config.meta_architecture == "GeneralizedRCNN":
        return ["proposal_boxes", "proposal_logits", "proposal_levels", "proposal_valid", "class_logits",
                "box_deltas"]
    groups = ["logits", "deltas"] + (["centerness"] if config.meta_architecture == "ATSS" else [])
    return [f"{group}_{level}" for group in groups for level in model.levels]


def input_names(model: nn.Module) -> list[str]:
    """Names of :class:`ExportableNetwork`'s inputs: the batch, plus the image sizes for Faster R-CNN."""
    return ["images", "image_sizes"] if model.config.meta_architecture == "GeneralizedRCNN" else ["images"]


def _clip_to(boxes: Tensor, size: Tensor) -> Tensor:
    # clip_boxes with the (h, w) of one image given as a tensor, so it is a graph input.
    h, w = size[0].to(boxes.dtype), size[1].to(boxes.dtype)
    x1, y1, x2, y2 = boxes.clamp(min=0).unbind(dim=1)
    return torch.stack((torch.minimum(x1, w), torch.minimum(y1, h), torch.minimum(x2, w), torch.minimum(y2, h)),
                       dim=1)


class ExportableNetwork(nn.Module):
    """``model`` from the normalised, zero-padded batch (N, 3, H, W) to its raw outputs.

    One-stage variants: ``forward(images)`` returns per level the class logits (N, A*K, h, w),
    the box deltas (N, A*4, h, w) and, for ATSS, the centerness (N, A, h, w), grouped by kind
    (see :func:`output_names`). Faster R-CNN: ``forward(images, image_sizes)`` with each image's
    (h, w) before padding as (N, 2) int64 returns per image the M pre-NMS proposals: boxes
    (N, M, 4) XYXY clipped to the image, objectness logits (N, M), pyramid level (N, M) int64,
    a validity mask (N, M) (finite and not empty), and the box head's class logits (N, M, K+1)
    and class-specific deltas (N, M, 4K) for each of them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        model = self.model
        features = model.backbone(images)
        if model.config.meta_architecture != "GeneralizedRCNN":
            outputs = model.head([features[name] for name in model.levels])
            return tuple(t for group in outputs for t in group)
        if image_sizes is None:
            raise ValueError("Faster R-CNN needs image_sizes: (N, 2) int64, each image's (h, w) before padding")
        return self._rcnn_candidates(features, image_sizes)

    def _rcnn_candidates(self, features: dict[str, Tensor], image_sizes: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        rpn_cfg, roi_cfg = model.config.rpn, model.config.roi_heads
        maps = [features[name] for name in rpn_cfg.in_features]
        anchors = model.anchor_generator(maps)
        logits, deltas = model.proposal_generator.rpn_head(maps)
        logits = [flatten_per_location(x, 1).flatten(1) for x in logits]
        deltas = [flatten_per_location(x, 4) for x in deltas]
        per_image: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for i in range(images_in(maps[0])):
            boxes, scores, levels = [], [], []
            for level, (level_anchors, level_deltas, level_logits) in enumerate(zip(anchors, deltas, logits)):
                top_logits, top = level_logits[i].topk(min(level_logits.shape[1], rpn_cfg.pre_nms_topk))
                boxes.append(apply_deltas(level_deltas[i][top], level_anchors[top], rpn_cfg.bbox_reg_weights))
                scores.append(top_logits)
                levels.append(torch.full_like(top, level))
            boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            # Non-finite boxes are dropped afterwards; zeroing them keeps ROI pooling well defined.
            boxes = _clip_to(torch.where(finite[:, None], boxes, torch.zeros_like(boxes)), image_sizes[i])
            per_image.append((boxes, scores, levels, finite & nonempty(boxes)))
        boxes = torch.stack([b for b, _, _, _ in per_image])
        pooled = self._pool([features[name] for name in roi_cfg.in_features], boxes)
        class_logits, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        n, m = boxes.shape[:2]
        return (boxes, torch.stack([s for _, s, _, _ in per_image]), torch.stack([lv for _, _, lv, _ in per_image]),
                torch.stack([v for _, _, _, v in per_image]), class_logits.view(n, m, -1), box_deltas.view(n, m, -1))

    def _pool(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        # pool_boxes without its data-dependent indexing: every box is pooled at every level and
        # its own level's result kept (the same numbers, a few times the pooling work).
        roi_cfg = self.model.config.roi_heads
        strides = self.model.roi_heads.strides
        n, m = boxes.shape[:2]
        flat = boxes.reshape(-1, 4)
        batch_index = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(m)[:, None]
        rois = torch.cat([batch_index, flat], dim=1).to(features[0].dtype)
        min_level = strides[0].bit_length() - 1
        levels = assign_boxes_to_levels(flat, min_level, strides[-1].bit_length() - 1)
        out = None
        for level, (x, stride) in enumerate(zip(features, strides)):
            pooled = roi_align(x, rois, roi_cfg.pooler_resolution, 1.0 / stride, roi_cfg.pooler_sampling_ratio,
                               aligned=True)
            out = pooled if out is None else torch.where((levels == level)[:, None, None, None], pooled, out)
        return out


def images_in(feature: Tensor) -> int:
    """Batch size of a feature map, as a Python int (export specialises on it)."""
    return int(feature.shape[0])
