"""Infinite, seeded, aspect-ratio-grouped training batches, resumable and sharded across ranks.

detectron2's ``TrainingSampler`` + ``AspectRatioGroupedDataset``: an endless stream of shuffled
epochs; each image goes to one of two buckets (wider than tall, or not) and a bucket that
reaches the batch size becomes a batch, so a batch never mixes landscape and portrait images.
Unlike detectron2, which groups within each rank's own stream, the buckets here hold the
*global* batch and every rank takes its own slice of it: N ranks of batch b see exactly the
images that one process of batch N*b sees, iteration by iteration.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np


class SampleKey(NamedTuple):
    """What the dataset needs to produce one sample: the ``iteration`` (0-based global
    batch number), the ``slot`` in the global batch, and the dataset ``index``."""

    iteration: int
    slot: int
    index: int


def aspect_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """detectron2's aspect-ratio bucket of each (height, width): 0 when wider than tall, else 1."""
    return [0 if width > height else 1 for height, width in sizes]


class AspectRatioBatchSampler:
    """Endless batches of :class:`SampleKey` for one rank.

    ``groups[i]`` is dataset item i's aspect bucket (see :func:`aspect_groups`); ``batch_size``
    is the global batch (all ranks together), split evenly: rank r gets slots
    ``[r * b, (r + 1) * b)`` with ``b = batch_size // world_size``. Epoch e's order is
    ``numpy.random.default_rng((seed, e)).permutation(len(groups))``, so the stream depends on
    the seed only. :meth:`state_dict` after k batches, loaded into a fresh sampler, makes it
    continue with batch k exactly as the original would.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if len(groups) == 0:
            raise ValueError("the training set is empty: there is nothing to sample")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
        if batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} (images per iteration, all processes together) must be "
                             f"a multiple of the number of processes {world_size}")
        if seed < 0:
            raise ValueError(f"the data seed must be a non-negative integer, got {seed}")
        self.groups = np.asarray(groups, dtype=np.int64)
        if not np.isin(self.groups, (0, 1)).all():
            raise ValueError("aspect groups must be 0 (wider than tall) or 1 (taller or square)")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = batch_size // world_size
        self._iteration = 0
        self._epoch = 0
        self._offset = 0
        self._buckets: tuple[list[int], list[int]] = ([], [])
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.groups))

    def next_global_batch(self) -> list[int]:
        """The next global batch of dataset indices (all ranks' slices, in slot order)."""
        while True:
            if self._offset == len(self._order):
                self._epoch += 1
                self._offset = 0
                self._order = self._epoch_order(self._epoch)
            index = int(self._order[self._offset])
            self._offset += 1
            bucket = self._buckets[int(self.groups[index])]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                batch = list(bucket)
                bucket.clear()
                self._iteration += 1
                return batch

    def next_batch(self) -> list[SampleKey]:
        """This rank's slice of the next global batch."""
        iteration = self._iteration
        batch = self.next_global_batch()
        start = self.rank * self.per_rank
        return [SampleKey(iteration, slot, batch[slot]) for slot in range(start, start + self.per_rank)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        while True:
            yield self.next_batch()

    @property
    def iteration(self) -> int:
        """Number of global batches produced so far."""
        return self._iteration

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream (plain ints and lists; JSON- and torch.save-friendly)."""
        return {"seed": self.seed, "batch_size": self.batch_size, "num_items": len(self.groups),
                "iteration": self._iteration, "epoch": self._epoch, "offset": self._offset,
                "buckets": [list(b) for b in self._buckets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a sampler over the same data, seed and global batch."""
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size), ("num_items", len(self.groups))):
            if state.get(key) != mine:
                raise ValueError(f"cannot resume the data order: the checkpoint's {key} is {state.get(key)} but "
                                 f"this run's is {mine}; resume with the same training set, --batch-size and seed")
        self._iteration = int(state["iteration"])
        self._epoch = int(state["epoch"])
        self._offset = int(state["offset"])
        self._buckets = tuple([int(i) for i in b] for b in state["buckets"])
        self._order = self._epoch_order(self._epoch)
