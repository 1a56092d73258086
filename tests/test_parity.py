"""Detections equal the official implementation's on real photos (recorded in tests/data/parity)."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from conftest import load_case, parity_cases, random_model


def match_one_to_one(boxes, scores, labels, ref_boxes, ref_scores, ref_labels) -> int:
    """Number of reference detections matched one-to-one (same label, IoU > 0.999, |ds| < 1e-4)."""
    ok = ((labels[:, None] == ref_labels[None]) & (box_iou(boxes, ref_boxes) > 0.999)
          & ((scores[:, None] - ref_scores[None]).abs() < 1e-4))
    used: set[int] = set()
    matched = 0
    for row in ok:
        candidates = [j for j in row.nonzero().flatten().tolist() if j not in used]
        if candidates:
            used.add(candidates[0])
            matched += 1
    return matched


@pytest.mark.parametrize("name,path", parity_cases(), ids=lambda v: getattr(v, "stem", v))
def test_matches_official_detections(name, path):
    case = load_case(path)
    model = random_model(name)
    det = model.predict(case["image_rgb"])
    ref_boxes = torch.from_numpy(case["boxes"])[:100]
    ref_scores = torch.from_numpy(case["scores"])[:100]
    ref_labels = torch.from_numpy(case["classes"])[:100]
    assert len(det) == len(ref_scores)
    assert match_one_to_one(det.boxes, det.scores, det.labels, ref_boxes, ref_scores, ref_labels) == len(ref_scores)
    assert det.label_names == [model.class_names[i] for i in det.labels.tolist()]
