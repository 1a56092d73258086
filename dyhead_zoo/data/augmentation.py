"""Training augmentation as detectron2 applies it: ResizeShortestEdge ("choice") then RandomFlip.

The resize is the test-time one (:func:`dyhead_zoo.data.preprocess.resize`, PIL bilinear on
uint8) at a shortest edge drawn from ``min_sizes``; boxes follow the image exactly as
detectron2's ``ResizeTransform`` / ``HFlipTransform`` move coordinates, then are clipped to
the image and empty ones removed (``transform_instance_annotations`` + ``filter_empty_instances``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dyhead_zoo.config import InputConfig
from dyhead_zoo.data.preprocess import resize

# detectron2's Boxes.nonempty threshold used by filter_empty_instances.
EMPTY_BOX_THRESHOLD = 1e-5


@dataclass(frozen=True)
class TrainAugmentation:
    """Training-time resize and flip: the shortest edge is one of ``min_sizes`` (uniform
    choice), the longest at most ``max_size``; a horizontal flip with probability ``flip_prob``.

    Official recipes: R50 variants ``min_sizes=(800,)``; Swin-T ``(640, 672, ..., 800)``;
    ``max_size`` 1333; ``flip_prob`` 0.5.
    """

    min_sizes: tuple[int, ...] = (800,)
    max_size: int = 1333
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if not self.min_sizes or any(int(s) != s or s < 1 for s in self.min_sizes):
            raise ValueError(f"min_sizes must be one or more positive pixel sizes, got {self.min_sizes}")
        if self.max_size < max(self.min_sizes):
            raise ValueError(f"max_size {self.max_size} is smaller than the largest min size {max(self.min_sizes)}; "
                             "raise max_size")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {self.flip_prob}")


def augment(image_rgb: np.ndarray, boxes: np.ndarray, augmentation: TrainAugmentation,
            input_config: InputConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize and maybe flip one training image and its boxes.

    ``image_rgb`` is HxWx3 uint8 RGB, ``boxes`` (K, 4) float XYXY in its pixels. Draws the
    shortest edge, then the flip, from ``rng`` (detectron2's order). Returns the augmented
    image (h, w, 3) uint8, its boxes (K', 4) float32 XYXY clipped to it, and the indices (K',)
    of the input boxes kept (those that are not empty after clipping).
    """
    height, width = image_rgb.shape[:2]
    min_size = int(rng.choice(np.asarray(augmentation.min_sizes)))
    flip = bool(rng.uniform() < augmentation.flip_prob)
    resized = resize(image_rgb, dataclasses.replace(input_config, min_size=min_size,
                                                    max_size=augmentation.max_size))
    new_h, new_w = resized.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array(
        [new_w / width, new_h / height, new_w / width, new_h / height], dtype=np.float32)
    if flip:
        resized = np.ascontiguousarray(resized[:, ::-1])
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
    boxes = np.clip(boxes, 0.0, np.array([new_w, new_h, new_w, new_h], dtype=np.float32)).astype(np.float32)
    keep = np.nonzero((boxes[:, 2] - boxes[:, 0] > EMPTY_BOX_THRESHOLD)
                      & (boxes[:, 3] - boxes[:, 1] > EMPTY_BOX_THRESHOLD))[0]
    return resized, boxes[keep], keep
