"""Whether two sets of detections are the same: the parity rule, one detection to one.

A detection and a reference detection agree when they have the same label, their boxes
overlap at IoU above ``iou`` (or, with ``corner_tol`` > 0, every corner lies within that many
pixels: IoU float noise alone moves by about 1e-3 for boxes under a pixel thick) and their
scores differ by less than ``score_tol``. Pairs are formed greedily in detection order, each
reference used once. The parity tests use IoU 0.999 and scores within 1e-4.
"""
from __future__ import annotations

from torch import Tensor
from torchvision.ops import box_iou


def match_one_to_one(boxes: Tensor, scores: Tensor, labels: Tensor, ref_boxes: Tensor, ref_scores: Tensor,
                     ref_labels: Tensor, *, iou: float = 0.999, score_tol: float = 1e-4,
                     corner_tol: float = 0.0) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of agreeing detections ``i`` and reference detections ``j`` (see the
    module docstring); boxes XYXY, any float dtype. ``len(pairs) == len(ref_scores)`` means every
    reference detection has its counterpart."""
    if not len(boxes) or not len(ref_boxes):
        return []
    boxes, ref_boxes = boxes.float(), ref_boxes.float()
    same_box = box_iou(boxes, ref_boxes) > iou
    if corner_tol > 0:
        same_box |= (boxes[:, None] - ref_boxes[None]).abs().amax(-1) < corner_tol
    ok = (same_box & (labels[:, None] == ref_labels[None])
          & ((scores[:, None].float() - ref_scores[None].float()).abs() < score_tol))
    used: set[int] = set()
    pairs = []
    for i, row in enumerate(ok):
        j = next((j for j in row.nonzero().flatten().tolist() if j not in used), None)
        if j is not None:
            used.add(j)
            pairs.append((i, j))
    return pairs
