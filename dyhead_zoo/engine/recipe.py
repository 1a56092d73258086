"""The official training recipe of each variant: solver, schedule and training-time input sizes.

Read from the ``[train]`` section of ``dyhead_zoo/configs/<variant>.toml`` (the resolved settings of
microsoft/DynamicHead's ``train_net.py``); overrides go through ``dataclasses.replace``.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Literal

from dyhead_zoo.configs import get_config, records


@dataclass(frozen=True)
class TrainRecipe:
    """Official detectron2 ``SOLVER`` / ``INPUT`` / ``DATALOADER`` settings of one variant.

    ``base_lr`` is the LR for ``ims_per_batch`` images per iteration; :meth:`lr` scales it
    linearly to ``batch_size`` (the images of one iteration, all processes together).
    ``steps`` are given for a run of ``steps_max_iter`` iterations and move with ``max_iter``
    (:meth:`lr_steps`), so a shorter run keeps the official 2/3 and 8/9 decay points.
    """

    optimizer: Literal["SGD", "AdamW"]
    base_lr: float
    ims_per_batch: int
    momentum: float
    weight_decay: float
    weight_decay_bias: float
    bias_lr_factor: float
    max_iter: int
    steps: tuple[int, ...]
    gamma: float
    warmup_iters: int
    warmup_factor: float
    checkpoint_period: int
    min_size_train: tuple[int, ...]
    max_size_train: int
    horizontal_flip: bool
    aspect_ratio_grouping: bool
    filter_empty_annotations: bool
    batch_size: int = 0  # 0: ims_per_batch
    steps_max_iter: int = 0  # 0: max_iter as read from the record
    # None: norm parameters decay like the others, as the official build_optimizer does.
    weight_decay_norm: float | None = None
    lr_override: float | None = None  # an explicit LR: used as given, not scaled

    def __post_init__(self) -> None:
        if self.optimizer not in ("SGD", "AdamW"):
            raise ValueError(f"optimizer must be 'SGD' or 'AdamW', got {self.optimizer!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {self.max_iter}")
        if self.batch_size < 0 or self.ims_per_batch < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.lr_override is not None and not self.lr_override > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr_override}")
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError(f"warmup_iters must be >= 0 and warmup_factor in (0, 1], got {self.warmup_iters} "
                             f"and {self.warmup_factor}")
        if not self.min_size_train or min(self.min_size_train) < 1 or self.max_size_train < 1:
            raise ValueError(f"training sizes must be positive, got min {self.min_size_train}, "
                             f"max {self.max_size_train}")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"LR steps must increase, got {self.steps}")

    @property
    def images_per_iteration(self) -> int:
        """Images of one iteration, all processes together."""
        return self.batch_size or self.ims_per_batch

    @property
    def lr(self) -> float:
        """The run's base LR: ``lr_override`` if set, else ``base_lr`` x batch / ``ims_per_batch``."""
        if self.lr_override is not None:
            return self.lr_override
        return self.base_lr * self.images_per_iteration / self.ims_per_batch

    def lr_steps(self) -> tuple[int, ...]:
        """Iterations where the LR is multiplied by ``gamma``, scaled to this run's ``max_iter``."""
        reference = self.steps_max_iter or self.max_iter
        return tuple(int(round(step * self.max_iter / reference)) for step in self.steps)

    def describe(self) -> str:
        """One line for the start of a run: optimizer, LR (and how it was scaled), schedule."""
        if self.lr_override is not None:
            how = "as given"
        elif self.images_per_iteration == self.ims_per_batch:
            how = f"official, for {self.ims_per_batch} images"
        else:
            how = (f"official {self.base_lr:g} for {self.ims_per_batch} images, scaled linearly to "
                   f"{self.images_per_iteration}")
        return (f"{self.optimizer} lr {self.lr:g} ({how}), weight decay {self.weight_decay:g} "
                f"(bias {self.weight_decay_bias:g}), {self.max_iter} iterations of {self.images_per_iteration} "
                f"images, warmup {self.warmup_iters} from x{self.warmup_factor:g}, x{self.gamma:g} at "
                f"{list(self.lr_steps())}, sizes {list(self.min_size_train)} (max {self.max_size_train})")


_FIELDS = {f.name for f in dataclasses.fields(TrainRecipe)}
_RECORD_ONLY = {"batch_size", "steps_max_iter", "weight_decay_norm", "lr_override"}


def recipe_from_dict(data: dict) -> TrainRecipe:
    """A :class:`TrainRecipe` from a parsed ``[train]`` section; unknown or missing keys are an error."""
    unknown = set(data) - _FIELDS
    missing = _FIELDS - _RECORD_ONLY - set(data)
    if unknown or missing:
        raise ValueError(f"[train] section: unknown settings {sorted(unknown)}, missing {sorted(missing)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    values.setdefault("steps_max_iter", values["max_iter"])
    return TrainRecipe(**values)


@functools.cache
def get_recipe(name: str) -> TrainRecipe:
    """The official :class:`TrainRecipe` of variant ``name`` (its ``dyhead_zoo/configs/<name>.toml``)."""
    get_config(name)  # unknown names fail here, listing the known ones
    section = records()[name].get("train")
    if section is None:
        raise ValueError(f"dyhead_zoo/configs/{name}.toml has no [train] section: this variant has no training recipe")
    return recipe_from_dict(section)


def run_recipe(name: str, batch_size: int | None = None, max_iter: int | None = None,
               lr: float | None = None, **changes) -> TrainRecipe:
    """Variant ``name``'s recipe with a run's choices: ``batch_size`` (images per iteration,
    all processes; the LR scales with it), ``max_iter`` (the LR steps move with it), ``lr``
    (used as given) and any other :class:`TrainRecipe` field."""
    recipe = get_recipe(name)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if max_iter is not None:
        changes["max_iter"] = max_iter
    if lr is not None:
        changes["lr_override"] = lr
    return dataclasses.replace(recipe, **changes)
