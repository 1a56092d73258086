"""The training data loader: decoded, augmented, normalised and padded batches, forever.

:func:`build_train_loader` is what the trainer iterates. Images are decoded and augmented in
DataLoader workers; every random draw of a sample comes from its own generator seeded with
(seed, iteration, slot in the global batch, dataset index), so a run gives the same batches
whatever the number of workers or processes, and after a resume. :meth:`TrainLoader.state_dict`
is the data position after the last batch handed out (not after what workers prefetched).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dyhead_zoo.config import InputConfig
from dyhead_zoo.data.augmentation import TrainAugmentation, augment
from dyhead_zoo.data.batch_sampler import AspectRatioBatchSampler, SampleKey, aspect_groups
from dyhead_zoo.data.images import load_image
from dyhead_zoo.data.preprocess import normalize_and_pad, to_channel_order
from dyhead_zoo.data.train_dataset import TrainDataset

TrainBatch = tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]]]


class AugmentedSamples(Dataset):
    """Item ``key`` (a :class:`SampleKey`): the decoded, augmented image as a (3, h, w) uint8
    tensor in the model's channel order and its target ``{"boxes": (K, 4) float32 XYXY,
    "labels": (K,) int64}`` in the augmented image's pixels."""

    def __init__(self, dataset: TrainDataset, input_config: InputConfig, augmentation: TrainAugmentation,
                 seed: int) -> None:
        self.dataset = dataset
        self.input_config = input_config
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[Tensor, dict[str, Tensor], SampleKey]:
        image = self.dataset.images[key.index]
        rgb = load_image(image.path)
        if rgb.shape[:2] != (image.height, image.width):
            raise ValueError(f"{image.path}: decoded as {rgb.shape[1]}x{rgb.shape[0]} but the annotation says "
                             f"{image.width}x{image.height}; fix the 'width'/'height' of image {image.id}")
        rng = np.random.default_rng((self.seed, key.iteration, key.slot, key.index))
        augmented, boxes, keep = augment(rgb, image.boxes, self.augmentation, self.input_config, rng)
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
                  "labels": torch.from_numpy(np.ascontiguousarray(image.labels[keep], dtype=np.int64))}
        return to_channel_order(augmented, self.input_config), target, key


class _Collate:
    """Normalise and zero-pad one rank's samples into a batch (runs in the worker)."""

    def __init__(self, input_config: InputConfig) -> None:
        self.input_config = input_config

    def __call__(self, samples: list[tuple[Tensor, dict[str, Tensor], SampleKey]]
                 ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]], int]:
        images, sizes = normalize_and_pad([image.float() for image, _, _ in samples], self.input_config)
        return images, sizes, [target for _, target, _ in samples], samples[0][2].iteration


class TrainLoader:
    """Endless training batches for one rank; see :func:`build_train_loader`."""

    def __init__(self, samples: AugmentedSamples, sampler: AspectRatioBatchSampler, workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.samples = samples
        self.sampler = sampler
        self.workers = workers
        self.pin_memory = pin_memory
        self._state = sampler.state_dict()

    @property
    def dataset(self) -> TrainDataset:
        return self.samples.dataset

    @property
    def iteration(self) -> int:
        """Number of batches handed out so far (global iterations, counting a resumed run's past)."""
        return int(self._state["iteration"])

    def state_dict(self) -> dict[str, Any]:
        """Data position after the last batch this loader yielded (plain Python values)."""
        return {"sampler": dict(self._state), "seed": self.samples.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batch at which ``state`` was taken (call before iterating)."""
        if state.get("seed") != self.samples.seed:
            raise ValueError(f"cannot resume the data order: the checkpoint's data seed is {state.get('seed')} but "
                             f"this run's is {self.samples.seed}; resume with the same seed")
        self.sampler.load_state_dict(state["sampler"])
        self._state = self.sampler.state_dict()

    def __iter__(self) -> Iterator[TrainBatch]:
        """Yield ``(images, image_sizes, targets)`` forever, starting after the last batch yielded."""
        self.sampler.load_state_dict(self._state)  # forget what an earlier iterator prefetched
        pending: dict[int, dict[str, Any]] = {}

        def keys() -> Iterator[list[SampleKey]]:
            while True:
                batch = self.sampler.next_batch()
                pending[batch[0].iteration] = self.sampler.state_dict()
                yield batch

        loader = DataLoader(self.samples, batch_sampler=keys(), num_workers=self.workers,
                            collate_fn=_Collate(self.samples.input_config), pin_memory=self.pin_memory)
        for images, sizes, targets, iteration in loader:
            self._state = pending.pop(iteration)
            yield images, sizes, targets


def build_train_loader(dataset: TrainDataset, input_config: InputConfig, augmentation: TrainAugmentation,
                       batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                       pin_memory: bool = False) -> TrainLoader:
    """Endless, resumable training batches of ``dataset`` for one process.

    ``batch_size`` is the global number of images per iteration; with ``world_size`` processes
    this ``rank`` gets its ``batch_size // world_size`` slice of every global batch (grouped by
    aspect ratio, shuffled per epoch from ``seed``). ``workers`` DataLoader processes decode and
    augment (0: in this process). ``input_config`` gives the channel order, mean/std and size
    divisibility (the model's ``config.input``); ``augmentation`` the training sizes and flip.

    Iterating yields ``(images, image_sizes, targets)``: ``images`` (n, 3, H, W) float32,
    normalised and zero-padded to the size divisibility; ``image_sizes`` each image's (h, w)
    before padding; ``targets`` per image ``{"boxes": (K, 4) float32 XYXY in the resized image's
    pixels, "labels": (K,) int64}`` with labels indexing ``dataset.class_names`` (K may be 0 when
    every box became empty after resizing). Use ``loader.state_dict()`` /
    ``loader.load_state_dict()`` to save and restore the data position with a checkpoint.
    """
    if workers < 0:
        raise ValueError(f"--workers must be 0 (decode in the main process) or more, got {workers}")
    sizes = [(im.height, im.width) for im in dataset.images]
    sampler = AspectRatioBatchSampler(aspect_groups(sizes), batch_size, seed, rank, world_size)
    return TrainLoader(AugmentedSamples(dataset, input_config, augmentation, seed), sampler, workers, pin_memory)
