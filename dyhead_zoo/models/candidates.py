"""Score-threshold candidates straight from classification logits (one-stage post-processing).

Thresholding ``sigmoid(logits)`` runs the sigmoid over every (location, anchor, class) value:
16 million of them for RetinaNet at 800x1333, most far below the threshold. The sigmoid is
monotonic, so a comparison of the logits with ``logit(score_thresh)`` (less a small margin that
absorbs float rounding) keeps a superset of the candidates; the sigmoid and the exact test then
run on that superset only. Pairs, order and values are those of thresholding the full sigmoid.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: Logit margin of the pre-filter: far above float32 sigmoid rounding near any threshold.
_MARGIN = 1e-3


def sigmoid_candidates(logits: Tensor, score_thresh: float) -> tuple[Tensor, Tensor]:
    """Entries of ``logits`` whose sigmoid exceeds ``score_thresh``, and those probabilities.

    ``logits``: (R, K) of any float dtype. Returns ``indices`` (M,) int64 into the flattened
    (R*K) logits, ascending (as ``(sigmoid(logits) > score_thresh).flatten().nonzero()``; row
    ``indices // K``, class ``indices % K``), and ``probs`` (M,) float32, equal to
    ``sigmoid(logits.float())`` there.
    """
    if logits.dim() != 2:
        raise ValueError(f"expected (R, K) logits, got shape {tuple(logits.shape)}")
    flat = logits.reshape(-1)
    if 0.0 < score_thresh < 1.0:
        bound = math.log(score_thresh / (1.0 - score_thresh))
        maybe = flat > bound - _MARGIN * max(1.0, abs(bound))
        if bool(maybe.all()):  # every entry may pass (e.g. untrained weights): no gather needed
            indices, probs = None, flat.float().sigmoid()
        else:
            indices = maybe.nonzero().squeeze(1)
            probs = flat[indices].float().sigmoid()
    else:  # no finite logit bound: threshold the full sigmoid
        indices, probs = None, flat.float().sigmoid()
    keep = probs > score_thresh
    if bool(keep.all()):
        return (torch.arange(flat.numel(), device=flat.device) if indices is None else indices), probs
    if indices is None:
        indices = keep.nonzero().squeeze(1)
        return indices, probs[indices]
    return indices[keep], probs[keep]
