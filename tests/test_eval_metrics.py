"""COCO box metrics (dyhead_zoo.evaluation.coco_metrics): library agreement and hand-checkable values."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from dyhead_zoo.evaluation.coco_metrics import STAT_NAMES, coco_box_stats, detections_to_coco

LIBRARIES = ["faster-coco-eval", "pycocotools"]


def ground_truth(seed: int = 0, num_images: int = 6, per_image: int = 6, categories=(1, 3, 18)) -> dict:
    """A COCO instances dict with boxes of all three area ranges (small, medium, large)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    sides = [12, 20, 50, 80, 150, 200]  # two of each area range
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id * 7, "file_name": f"{image_id}.jpg", "height": 480, "width": 640})
        for k in range(per_image):
            w = float(sides[k % len(sides)])
            h = float(sides[(k + 1) % len(sides)]) if k % 2 else w
            x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id * 7,
                                "category_id": categories[k % len(categories)], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in categories]}


def as_detections(gt: dict, score: float = 1.0) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": score} for a in gt["annotations"]]


def perturbed(gt: dict, seed: int = 1) -> list[dict]:
    """Jittered boxes with random scores, some dropped, plus false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                     "score": float(rng.uniform(0.05, 1.0))})
    for image in gt["images"]:
        for _ in range(4):
            w, h = rng.uniform(10, 200, 2)
            dets.append({"image_id": image["id"], "category_id": int(rng.choice([c["id"] for c in gt["categories"]])),
                         "bbox": [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), float(w), float(h)],
                         "score": float(rng.uniform(0.05, 1.0))})
    return dets


def test_libraries_agree_on_the_same_detections():
    gt = ground_truth()
    dets = perturbed(gt)
    untouched_gt, untouched_dets = copy.deepcopy(gt), copy.deepcopy(dets)
    faster = coco_box_stats(gt, dets, library="faster-coco-eval")
    reference = coco_box_stats(gt, dets, library="pycocotools")
    assert gt == untouched_gt and dets == untouched_dets  # inputs are not modified
    assert list(faster) == list(STAT_NAMES)
    assert 0.1 < faster["AP"] < 0.9, faster  # a case that tests something
    for name in STAT_NAMES:
        assert faster[name] == pytest.approx(reference[name], abs=1e-6), name


@pytest.mark.parametrize("library", LIBRARIES)
def test_ground_truth_as_detections_scores_one(library):
    gt = ground_truth()
    stats = coco_box_stats(gt, as_detections(gt), library=library)
    for name in STAT_NAMES[:6] + ("AR100", "ARs", "ARm", "ARl"):
        assert stats[name] == pytest.approx(1.0), name


@pytest.mark.parametrize("library", LIBRARIES)
def test_narrowed_boxes_match_only_at_low_iou(library):
    # Every box keeps its height and 62% of its width: IoU 0.62, a hit at IoU thresholds 0.50, 0.55
    # and 0.60 and a miss at the seven from 0.65 on, so AP = 3/10.
    gt = ground_truth()
    dets = as_detections(gt)
    for d in dets:
        d["bbox"][2] *= 0.62
    stats = coco_box_stats(gt, dets, library=library)
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)
    assert stats["AP"] == pytest.approx(0.3)


@pytest.mark.parametrize("library", LIBRARIES)
def test_half_of_the_objects_missed(library):
    # Precision 1 up to recall 0.5 and nothing after: 51 of the 101 recall points.
    gt = ground_truth(per_image=6, categories=(1, 3, 18))
    kept = [d for i, d in enumerate(as_detections(gt)) if (i // 3) % 2 == 0]
    stats = coco_box_stats(gt, kept, library=library)
    assert stats["AP"] == pytest.approx(51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)


@pytest.mark.parametrize("library", LIBRARIES)
def test_false_positive_ranked_first_halves_precision(library):
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10.0, 10.0, 40.0, 40.0],
                           "area": 1600.0, "iscrowd": 0}],
          "categories": [{"id": 5, "name": "x"}]}
    dets = [{"image_id": 1, "category_id": 5, "bbox": [60.0, 60.0, 30.0, 30.0], "score": 0.9},
            {"image_id": 1, "category_id": 5, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.8}]
    stats = coco_box_stats(gt, dets, library=library)
    assert stats["AP"] == pytest.approx(0.5)
    assert stats["AR1"] == pytest.approx(0.0)
    assert stats["AR10"] == pytest.approx(1.0)


def test_no_detections_scores_zero_in_both_libraries():
    gt = ground_truth()
    faster = coco_box_stats(gt, [], library="faster-coco-eval")
    reference = coco_box_stats(gt, [], library="pycocotools")
    assert faster == pytest.approx(reference, abs=1e-6)
    assert faster["AP"] == 0.0


def test_only_the_given_images_are_scored():
    gt = ground_truth()
    ids = [im["id"] for im in gt["images"]][:2]
    dets = [d for d in as_detections(gt) if d["image_id"] in ids]
    assert coco_box_stats(gt, dets, image_ids=ids)["AP"] == pytest.approx(1.0)
    assert coco_box_stats(gt, dets)["AP"] < 0.5


def test_detections_for_unknown_images_are_refused():
    gt = ground_truth()
    with pytest.raises(ValueError, match="not in the annotation file"):
        coco_box_stats(gt, [{"image_id": 99999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_unknown_library_is_refused():
    with pytest.raises(ValueError, match="pycocotools"):
        coco_box_stats(ground_truth(), [], library="cocoapi")


def test_detections_to_coco_converts_boxes_and_maps_categories():
    out = detections_to_coco(42, [[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]], [0.9, 0.4], [1, 0],
                             category_ids=[None, 7])
    assert out == [{"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9}]
