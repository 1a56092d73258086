"""Detections equal the official implementation's on real photos (recorded in tests/data/parity)."""
from __future__ import annotations

import pytest
import torch
from conftest import load_case, parity_cases, random_model

import dyhead_zoo
from dyhead_zoo.evaluation.agreement import match_one_to_one


@pytest.mark.parametrize("name,path", parity_cases(), ids=lambda v: getattr(v, "stem", v))
def test_matches_official_detections(name, path):
    case = load_case(path)
    model = random_model(name)
    det = model.predict(case["image_rgb"])
    ref_boxes = torch.from_numpy(case["boxes"])[:100]
    ref_scores = torch.from_numpy(case["scores"])[:100]
    ref_labels = torch.from_numpy(case["classes"])[:100]
    assert len(det) == len(ref_scores)
    pairs = match_one_to_one(det.boxes, det.scores, det.labels, ref_boxes, ref_scores, ref_labels)
    assert len(pairs) == len(ref_scores)  # same label, IoU > 0.999, scores within 1e-4, one to one
    assert det.label_names == [model.class_names[i] for i in det.labels.tolist()]


def test_every_variant_has_recorded_official_outputs():
    """The parametrised comparison above runs once per recorded file: none may be missing."""
    recorded = {}
    for name, path in parity_cases():
        recorded.setdefault(name, []).append(path.stem)
    assert {name: sorted(stems) for name, stems in recorded.items()} == {
        name: ["seed0_astronaut", "seed0_coffee"] for name in dyhead_zoo.list_models()}
