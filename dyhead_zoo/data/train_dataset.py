"""COCO-format training sets, read and checked before any training starts (detectron2's rules).

:func:`load_train_dataset` reads an annotation file and its image folder into a
:class:`TrainDataset`: contiguous 0-based labels from the file's categories sorted by id,
crowd boxes ignored, boxes XYWH -> XYXY, images without a usable box skipped, as detectron2's
``load_coco_json`` + ``filter_images_with_only_crowd_annotations`` do. Problems that would
silently hurt a run (missing image files, unknown ids, degenerate boxes, an empty set) are
reported here, naming the problem and the fix.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dyhead_zoo.data.coco_data import coco_format_error, read_instances

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TrainImage:
    """One training image: annotation ``id``, file ``path``, annotated ``height`` x ``width``,
    its non-crowd ``boxes`` (K, 4) float32 XYXY in the image's pixels and ``labels`` (K,) int64
    (contiguous, 0-based)."""

    id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class TrainDataset:
    """A checked training set.

    ``images`` are sorted by id and each has at least one box. ``class_names[label]`` and
    ``category_ids[label]`` are the name and annotation-file id of contiguous ``label``
    (the file's categories sorted by id). ``dropped_boxes`` counts invalid boxes left out,
    ``skipped_images`` images without a usable box.
    """

    images_dir: Path
    annotations: Path
    images: tuple[TrainImage, ...]
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    dropped_boxes: int = 0
    skipped_images: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        """One line for the training log: images, boxes, classes, what was left out."""
        boxes = sum(len(im.labels) for im in self.images)
        return (f"{self.annotations.name}: {len(self.images)} images, {boxes} boxes, {self.num_classes} classes; "
                f"{self.skipped_images} images without a usable box skipped, {self.dropped_boxes} invalid boxes "
                "dropped")


def _box_problem(bbox: list, height: int, width: int) -> str | None:
    """Why an XYWH box cannot be trained on, or None when it can."""
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return "not [x, y, width, height]"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "not finite"
    if w <= 0 or h <= 0:
        return "non-positive size"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "outside the image"
    return None


def load_train_dataset(images_dir: str | os.PathLike, annotations: str | os.PathLike,
                       strict: bool = False) -> TrainDataset:
    """Read and check a COCO-format training set (``images_dir`` + instances ``annotations`` json).

    Labels are the file's categories sorted by id, numbered 0..C-1 (names kept). Crowd boxes
    (``iscrowd`` 1) are ignored and images left without a box are skipped, as in detectron2.
    Boxes whose width or height is not positive, that lie wholly outside their image or are not
    four finite numbers are counted and dropped with a warning, or raise ``ValueError`` with
    ``strict=True``; boxes reaching past the border are kept (clipped after resizing, as
    detectron2 does). Raises ``FileNotFoundError`` for a missing folder, annotation file or
    image file of a kept image, and ``ValueError`` for a malformed file, duplicate ids,
    annotations naming unknown image or category ids, or a set with no usable image.
    """
    images_dir, annotations = Path(images_dir).resolve(), Path(annotations).resolve()
    if not annotations.is_file():
        raise FileNotFoundError(f"training annotation file not found: {annotations} (a COCO-format instances "
                                "json: --train-annotations)")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"training image folder not found: {images_dir} (--train-images)")
    data = read_instances(annotations, {"image_id": int, "category_id": int, "bbox": list})
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise coco_format_error(annotations, "'categories' is empty: list the classes to train, e.g. "
                                 "[{\"id\": 1, \"name\": \"cat\"}]")
    category_ids = tuple(c["id"] for c in categories)
    if len(set(category_ids)) != len(category_ids):
        raise coco_format_error(annotations, "category ids are not unique")
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    images = {im["id"]: im for im in data["images"]}
    if len(images) != len(data["images"]):
        raise coco_format_error(annotations, "image ids are not unique")
    for image in data["images"]:
        if image["height"] < 1 or image["width"] < 1:
            raise coco_format_error(annotations, f"image {image['id']} has size {image['width']}x{image['height']}")

    unknown_categories = sorted({a["category_id"] for a in data["annotations"] if a["category_id"] not in label_of})
    if unknown_categories:
        count = sum(a["category_id"] not in label_of for a in data["annotations"])
        raise ValueError(f"{annotations}: {count} annotations use category ids {unknown_categories[:10]} that are not "
                         f"in 'categories' (ids {list(category_ids)[:10]}); add those categories or remove the "
                         "annotations")
    unknown_images = sorted({a["image_id"] for a in data["annotations"] if a["image_id"] not in images})
    if unknown_images:
        raise ValueError(f"{annotations}: annotations refer to image ids {unknown_images[:10]} that are not in "
                         "'images'; add the images or remove the annotations")

    per_image: dict[int, list[tuple[list[float], int]]] = {image_id: [] for image_id in images}
    problems: dict[str, int] = {}
    examples: list[str] = []
    for index, ann in enumerate(data["annotations"]):
        if ann.get("iscrowd", 0) != 0:
            continue
        image = images[ann["image_id"]]
        problem = _box_problem(ann["bbox"], image["height"], image["width"])
        if problem is not None:
            problems[problem] = problems.get(problem, 0) + 1
            if len(examples) < 3:
                examples.append(f"annotations[{index}] (image {image['id']}, bbox {ann['bbox']}): {problem}")
            continue
        per_image[image["id"]].append(([float(v) for v in ann["bbox"]], label_of[ann["category_id"]]))
    dropped = sum(problems.values())
    if dropped:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(problems.items()))
        message = (f"{annotations}: {dropped} of {len(data['annotations'])} boxes cannot be trained on ({counts}), "
                   f"e.g. {'; '.join(examples)}")
        if strict:
            raise ValueError(message + "; fix or remove them, or run without --strict to drop them")
        warnings.warn(message + "; they are dropped", stacklevel=2)

    kept = []
    for image_id in sorted(per_image):
        entries = per_image[image_id]
        if not entries:
            continue
        image = images[image_id]
        xywh = np.array([box for box, _ in entries], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        labels = np.array([label for _, label in entries], dtype=np.int64)
        kept.append(TrainImage(image_id, images_dir / image["file_name"], image["height"], image["width"],
                               xyxy, labels))
    if not kept:
        raise ValueError(f"{annotations}: no image has a usable (non-crowd, valid) box among {len(images)} images "
                         f"and {len(data['annotations'])} annotations; there is nothing to train on")
    missing = [str(im.path) for im in kept if not im.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(kept)} training image files are missing under "
                                f"{images_dir}, e.g. {missing[:3]}; check --train-images and the 'file_name' "
                                "fields")
    skipped = len(images) - len(kept)
    if skipped:
        logger.info("%s: %d of %d images have no usable box and are skipped", annotations.name, skipped, len(images))
    return TrainDataset(images_dir, annotations, tuple(kept), tuple(c["name"] for c in categories), category_ids,
                        dropped, skipped)
