"""The parity rule that tests and benchmarks share (dyhead_zoo.evaluation.agreement)."""
from __future__ import annotations

import torch

from dyhead_zoo.evaluation.agreement import match_one_to_one

BOXES = torch.tensor([[10.0, 10.0, 50.0, 60.0], [100.0, 20.0, 180.0, 90.0], [30.0, 40.0, 30.5, 90.0]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
LABELS = torch.tensor([1, 2, 1])


def pairs(boxes=BOXES, scores=SCORES, labels=LABELS, **kwargs):
    return match_one_to_one(boxes, scores, labels, BOXES, SCORES, LABELS, **kwargs)


def test_identical_detections_pair_up_in_order():
    assert pairs() == [(0, 0), (1, 1), (2, 2)]
    assert pairs(boxes=BOXES.flip(0), scores=SCORES.flip(0), labels=LABELS.flip(0)) == [(0, 2), (1, 1), (2, 0)]


def test_label_score_and_box_differences_break_a_pair():
    assert pairs(labels=torch.tensor([1, 3, 1])) == [(0, 0), (2, 2)]
    assert pairs(scores=SCORES + torch.tensor([0.0, 2e-4, 5e-5])) == [(0, 0), (2, 2)]
    moved = BOXES.clone()
    moved[0, 2] += 0.1  # IoU 0.9975 < 0.999
    assert pairs(boxes=moved) == [(1, 1), (2, 2)]
    assert pairs(boxes=moved, iou=0.99) == [(0, 0), (1, 1), (2, 2)]


def test_each_reference_is_used_once():
    twice = torch.cat([BOXES[:1], BOXES[:1]])
    assert match_one_to_one(twice, SCORES[:1].repeat(2), LABELS[:1].repeat(2), BOXES, SCORES, LABELS) == [(0, 0)]
    assert match_one_to_one(BOXES[:0], SCORES[:0], LABELS[:0], BOXES, SCORES, LABELS) == []


def test_corner_tolerance_accepts_thin_boxes_whose_iou_is_noise():
    thin = BOXES.clone()
    thin[2, 2] += 0.005  # a 0.5-px-wide box: IoU 0.99, corners within 0.005 px
    assert (2, 2) not in pairs(boxes=thin)
    assert (2, 2) in pairs(boxes=thin, corner_tol=0.01)
