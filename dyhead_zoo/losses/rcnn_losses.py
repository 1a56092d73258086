"""Faster R-CNN's training losses: the RPN's, then the box branch's on the RPN's proposals."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from dyhead_zoo.losses.box_regression import check_box_reg_loss_type
from dyhead_zoo.losses.fast_rcnn_loss import roi_heads_losses
from dyhead_zoo.losses.rpn_loss import rpn_losses, training_proposals
from dyhead_zoo.losses.targets import check_targets
from dyhead_zoo.models.anchors import flatten_per_location


def rcnn_losses(model: nn.Module, features: dict[str, Tensor], image_sizes: Sequence[tuple[int, int]],
                targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg`` of a Faster R-CNN
    :class:`~dyhead_zoo.models.detector.DyHeadDetector` in train mode.

    ``features``: the backbone's named pyramid levels (N, C, H, W); ``image_sizes``: each
    image's (h, w) before padding; ``targets``: per image ``boxes`` (K, 4) XYXY in input pixels
    and 0-based ``labels`` (K,), K = 0 allowed. Random sampling draws from torch's default
    generator in detectron2's order (RPN anchors image by image, then proposals image by image).
    """
    rpn, roi_heads = model.proposal_generator, model.roi_heads
    rpn_config = rpn.config
    check_box_reg_loss_type(rpn_config.bbox_reg_loss_type)
    levels = [features[name] for name in rpn_config.in_features]
    anchors = model.anchor_generator(levels)
    logits, deltas = rpn.rpn_head(levels)
    logits = [flatten_per_location(x, 1).flatten(1) for x in logits]  # per level (N, H*W*A)
    deltas = [flatten_per_location(x, 4) for x in deltas]  # per level (N, H*W*A, 4)
    num_classes = model.config.num_classes
    ground_truth = check_targets(targets, levels[0].shape[0], num_classes, levels[0].device)
    losses = rpn_losses(anchors, logits, deltas, ground_truth, rpn_config)
    proposals = training_proposals(anchors, [x.detach() for x in logits], [x.detach() for x in deltas],
                                   image_sizes, rpn_config)
    losses.update(roi_heads_losses(roi_heads, features, proposals, ground_truth, num_classes))
    return losses
