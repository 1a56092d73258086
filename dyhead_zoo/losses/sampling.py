"""Random foreground/background subsampling of labelled anchors or proposals (detectron2's rule)."""
from __future__ import annotations

import torch
from torch import Tensor


def subsample_labels(labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int
                     ) -> tuple[Tensor, Tensor]:
    """Indices of at most ``num_samples`` entries of ``labels`` (N,): foreground (neither -1
    nor ``bg_label``) up to ``int(num_samples * positive_fraction)``, background filling the rest.

    Each group is drawn with one ``torch.randperm`` call on the default generator (foreground
    first), the calls detectron2 makes, so a seeded run draws the same samples. Returns
    (foreground indices, background indices), int64.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos_perm = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_perm = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[pos_perm], negative[neg_perm]
