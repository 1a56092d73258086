"""Mapping detections from the network's input back to the original image (detectron2 rules)."""
from __future__ import annotations

from torch import Tensor

from dyhead_zoo.models.boxes import clip_boxes, nonempty


def rescale_boxes(boxes: Tensor, scores: Tensor, labels: Tensor, input_hw: tuple[int, int],
                  output_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Scale XYXY ``boxes`` from ``input_hw`` to ``output_hw``, clip there, and drop empty boxes."""
    scale_x = output_hw[1] / input_hw[1]
    scale_y = output_hw[0] / input_hw[0]
    boxes = boxes.clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = clip_boxes(boxes, output_hw)
    keep = nonempty(boxes)
    return boxes[keep], scores[keep], labels[keep]
