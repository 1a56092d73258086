"""IoU matching of predictions (anchors, proposals) to ground truth: detectron2's ``Matcher``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of XYXY boxes, (M, 4) x (N, 4) -> (M, N); 0 where they do not overlap
    (so empty boxes get 0, never NaN), as detectron2's ``pairwise_iou`` computes it."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    width_height = (torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2]))
    inter = width_height.clamp(min=0).prod(dim=2)
    return torch.where(inter > 0, inter / (area1[:, None] + area2 - inter), torch.zeros(1, dtype=inter.dtype,
                                                                                        device=inter.device))


@dataclass(frozen=True)
class Matcher:
    """Assigns each prediction (column of an IoU matrix) its best ground truth (row) and a label.

    ``thresholds`` split the best IoU into len(thresholds) + 1 intervals [t_i, t_{i+1}) (the first
    from -inf, the last to +inf), labelled by ``labels`` (1 = foreground, 0 = background,
    -1 = ignored). With ``allow_low_quality_matches`` every prediction whose IoU with some ground
    truth equals that ground truth's best IoU (ties included) becomes foreground, keeping its
    own best match (as Detectron did).
    """

    thresholds: tuple[float, ...]
    labels: tuple[int, ...]
    allow_low_quality_matches: bool = False

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.thresholds) + 1:
            raise ValueError(f"{len(self.thresholds)} IoU thresholds need {len(self.thresholds) + 1} labels, "
                             f"got {list(self.labels)}")
        if list(self.thresholds) != sorted(self.thresholds):
            raise ValueError(f"IoU thresholds must be increasing, got {list(self.thresholds)}")
        if any(label not in (-1, 0, 1) for label in self.labels):
            raise ValueError(f"match labels must be -1 (ignore), 0 (background) or 1 (foreground), "
                             f"got {list(self.labels)}")

    def __call__(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """``quality``: (M ground truths, N predictions) IoU matrix, all >= 0.

        Returns per prediction the index of its best ground truth (N,) int64 and its label (N,)
        int8. With no ground truth (M = 0) every prediction gets index 0 and the first label.
        """
        if quality.dim() != 2:
            raise ValueError(f"expected an (M, N) match-quality matrix, got shape {tuple(quality.shape)}")
        num_predictions = quality.shape[1]
        if quality.numel() == 0:
            matches = quality.new_zeros((num_predictions,), dtype=torch.int64)
            return matches, quality.new_full((num_predictions,), self.labels[0], dtype=torch.int8)
        matched_values, matches = quality.max(dim=0)
        match_labels = matches.new_full(matches.shape, 1, dtype=torch.int8)
        bounds = (-math.inf, *self.thresholds, math.inf)
        for label, low, high in zip(self.labels, bounds[:-1], bounds[1:]):
            match_labels[(matched_values >= low) & (matched_values < high)] = label
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1).values
            # A ground truth whose best IoU is 0 makes every prediction it misses foreground,
            # exactly as detectron2 does (its nonzero() runs on the equality mask, not the IoU).
            _, best_predictions = torch.nonzero(quality == best_per_gt[:, None], as_tuple=True)
            match_labels[best_predictions] = 1
        return matches, match_labels
