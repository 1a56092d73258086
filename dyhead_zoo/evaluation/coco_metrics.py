"""COCO box AP through a maintained library: faster-coco-eval, or pycocotools to cross-check.

Detections go in as COCO results (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``);
out come the 12 standard statistics as fractions (COCO's own scale; ``-1`` where the
ground truth has nothing to score, e.g. no small objects).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Literal, Sequence

import numpy as np

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
Library = Literal["faster-coco-eval", "pycocotools"]


def detections_to_coco(image_id: int, boxes: Sequence[Sequence[float]], scores: Sequence[float],
                       labels: Sequence[int], category_ids: Sequence[int | None]) -> list[dict[str, Any]]:
    """COCO results for one image from XYXY pixel ``boxes``, ``scores`` and contiguous ``labels``.

    ``category_ids[label]`` is the annotation file's id of each label; detections of a label
    the file has no category for (``None``) are dropped, as they cannot be scored.
    """
    results = []
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        category = category_ids[int(label)]
        if category is not None:
            results.append({"image_id": int(image_id), "category_id": int(category),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                            "score": float(score)})
    return results


def _index(coco_cls: type, dataset: dict[str, Any]) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_box_stats(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]],
                   image_ids: Sequence[int] | None = None,
                   library: Library = "faster-coco-eval") -> dict[str, float]:
    """The 12 COCO box statistics (``STAT_NAMES``) of ``detections`` against ``ground_truth``.

    ``ground_truth`` is a parsed COCO instances file; ``image_ids`` restricts scoring to those
    images (default: all of them), as when only part of a dataset was run. Neither argument is
    modified. Returns fractions in [0, 1], or -1 where there is nothing to score.
    """
    if library == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"unknown metric library {library!r}; use 'faster-coco-eval' or 'pycocotools'")
    # The libraries add keys ("ignore", ...) to what they index: give them copies.
    ground_truth = {**ground_truth, **{k: [dict(item) for item in ground_truth[k]]
                                       for k in ("images", "annotations", "categories")}}
    gt = _index(COCO, ground_truth)
    known = set(gt.getImgIds())
    stray = {d["image_id"] for d in detections} - known
    if stray:
        raise ValueError(f"detections for {len(stray)} images that are not in the annotation file, "
                         f"e.g. {sorted(stray)[:5]}")
    results = {"images": ground_truth["images"], "categories": ground_truth["categories"],
               "annotations": [dict(copy.deepcopy(d), id=i + 1, area=d["bbox"][2] * d["bbox"][3], iscrowd=0)
                               for i, d in enumerate(detections)]}
    dt = _index(COCO, results)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(STAT_NAMES)]
    return dict(zip(STAT_NAMES, stats.tolist()))
