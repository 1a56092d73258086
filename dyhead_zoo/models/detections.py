"""What a detector returns for one image, with the conversions people reach for (JSON, NumPy, COCO)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from dyhead_zoo.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES


@dataclass
class Detections:
    """Detections for one image: XYXY ``boxes`` (N, 4) float in pixels, ``scores`` (N,),
    0-based ``labels`` (N,) int64 and their ``label_names``, best first.

    Select like a tensor: ``det[det.scores > 0.5]``, ``det[:10]``, ``det[torch.tensor([0, 2])]``
    (an integer gives a one-detection ``Detections``).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    label_names: list[str]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> "Detections":
        """The same detections with their tensors on ``device``."""
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device), self.label_names)

    def __getitem__(self, index: int | slice | Tensor | np.ndarray | Sequence[int] | Sequence[bool]) -> "Detections":
        """The detections picked by a boolean mask (N,), integer indices, a slice or one integer."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.scores.device)
            if index.dtype == torch.bool:
                if index.shape != self.scores.shape:
                    raise ValueError(f"boolean mask of shape {tuple(index.shape)} for {len(self)} detections; "
                                     "build it from the detections, e.g. det.scores > 0.5")
            elif index.dtype.is_floating_point or index.dim() != 1:
                raise TypeError("select detections with a boolean mask (N,), 1-D integer indices, a slice "
                                f"or an int, got a {index.dtype} tensor of shape {tuple(index.shape)}")
        positions = torch.arange(len(self))[index.cpu() if isinstance(index, Tensor) else index]
        names = [self.label_names[i] for i in positions.tolist()]
        return Detections(self.boxes[index], self.scores[index], self.labels[index], names)

    def numpy(self) -> dict[str, np.ndarray]:
        """``boxes`` (N, 4) float32 XYXY, ``scores`` (N,) float32, ``labels`` (N,) int64 as NumPy arrays
        and ``label_names`` (N,) as a string array."""
        return {
            "boxes": self.boxes.detach().float().cpu().numpy(),
            "scores": self.scores.detach().float().cpu().numpy(),
            "labels": self.labels.detach().cpu().numpy().astype(np.int64),
            "label_names": np.asarray(self.label_names, dtype=str),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``boxes`` as [x1, y1, x2, y2] lists, ``scores``, ``labels``, ``label_names``."""
        arrays = self.numpy()
        return {
            "boxes": arrays["boxes"].tolist(),
            "scores": arrays["scores"].tolist(),
            "labels": arrays["labels"].tolist(),
            "label_names": list(self.label_names),
        }

    def to_coco(self, image_id: int | str, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The detections as COCO results records: ``image_id``, ``category_id``, ``bbox``
        [x, y, width, height] in pixels and ``score``.

        ``category_ids`` maps each 0-based label to its dataset id; the default is the 80 COCO
        categories' real ids (1..90 with gaps), right for the published models.
        """
        ids = COCO_CATEGORY_IDS if category_ids is None else tuple(category_ids)
        arrays = self.numpy()
        labels = arrays["labels"]
        if labels.size and int(labels.max()) >= len(ids):
            raise ValueError(f"label {int(labels.max())} has no category id ({len(ids)} given); pass "
                             "category_ids=[...] with one dataset id per class of the model")
        boxes = arrays["boxes"].astype(np.float64)
        records = []
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), arrays["scores"].tolist(), labels.tolist()):
            records.append({"image_id": image_id, "category_id": int(ids[label]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
        return records


def class_indices(classes: Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """0-based label indices of ``classes``, given as names (``"dog"``) or 0-based ids (``16``,
    ``"16"``), checked against the model's ``class_names``."""
    indices = []
    for item in classes:
        if isinstance(item, str) and not item.strip().isdigit():
            name = item.strip()
            if name not in class_names:
                raise ValueError(f"unknown class {name!r}; the model's classes are: {', '.join(class_names)}")
            indices.append(list(class_names).index(name))
            continue
        index = int(item)
        if not 0 <= index < len(class_names):
            raise ValueError(f"class id {index} is out of range: the model has {len(class_names)} classes "
                             f"(0..{len(class_names) - 1}), or give class names such as {class_names[0]!r}")
        indices.append(index)
    return indices


def select(detections: Detections, score_threshold: float | None = None,
           classes: Sequence[int] | None = None) -> Detections:
    """The detections scoring at least ``score_threshold`` whose 0-based label is in ``classes``
    (either filter skipped when ``None``); order kept."""
    keep = torch.ones_like(detections.scores, dtype=torch.bool)
    if score_threshold is not None:
        keep &= detections.scores >= score_threshold
    if classes is not None:
        keep &= torch.isin(detections.labels, torch.as_tensor(list(classes), dtype=detections.labels.dtype,
                                                               device=detections.labels.device))
    return detections[keep]


def category_ids_for(class_names: Sequence[str]) -> tuple[int, ...]:
    """Dataset category ids for a model's classes: COCO's real ids (1..90 with gaps) for the 80
    COCO classes, else 1..K in class order."""
    if tuple(class_names) == COCO_CLASS_NAMES:
        return COCO_CATEGORY_IDS
    return tuple(range(1, len(class_names) + 1))
