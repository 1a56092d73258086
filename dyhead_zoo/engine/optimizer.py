"""The official optimizer and LR schedule: detectron2's ``WarmupMultiStepLR`` over the
parameter settings of DynamicHead's ``train_net.Trainer.build_optimizer``."""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import nn

from dyhead_zoo.engine.recipe import TrainRecipe

_NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d)


def parameter_groups(model: nn.Module, recipe: TrainRecipe) -> list[dict]:
    """Optimizer parameter groups with the official per-parameter LR and weight decay.

    As ``train_net.build_optimizer``: every trainable parameter gets ``recipe.lr`` and
    ``weight_decay``, those whose name contains ``"bias"`` (Swin's relative position bias
    tables too) ``lr x bias_lr_factor`` and ``weight_decay_bias``. Norm parameters decay like
    the others unless ``recipe.weight_decay_norm`` is set. Parameters with equal settings
    share a group (same update as one group each, faster). Each group records its
    ``initial_lr`` ratio in ``lr_factor`` for the schedule.
    """
    norm_params = set()
    if recipe.weight_decay_norm is not None:
        for module in model.modules():
            if isinstance(module, _NORM_TYPES):
                norm_params.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[float, float], dict] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        factor, decay = 1.0, recipe.weight_decay
        if "bias" in name:
            factor, decay = recipe.bias_lr_factor, recipe.weight_decay_bias
        if id(param) in norm_params:
            decay = recipe.weight_decay_norm
        group = groups.setdefault((factor, decay), {"params": [], "param_names": [], "lr": recipe.lr * factor,
                                                    "weight_decay": decay, "lr_factor": factor})
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """SGD (momentum, no Nesterov) or AdamW (torch's default betas and eps) over
    :func:`parameter_groups`, as the official ``build_optimizer``."""
    groups = parameter_groups(model, recipe)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if recipe.optimizer == "SGD":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    return torch.optim.AdamW(groups, lr=recipe.lr)


@dataclass(frozen=True)
class WarmupMultiStep:
    """LR multiplier of iteration ``it``: linear warmup from ``warmup_factor`` over
    ``warmup_iters``, then x ``gamma`` at each of ``steps`` (detectron2 ``WarmupMultiStepLR``)."""

    steps: tuple[int, ...]
    gamma: float
    warmup_iters: int
    warmup_factor: float

    def __call__(self, it: int) -> float:
        factor = self.gamma ** bisect.bisect_right(self.steps, it)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainRecipe) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler (``scheduler.step()`` after each ``optimizer.step()``)
    giving every group its LR x :class:`WarmupMultiStep` of the iteration."""
    multiplier = WarmupMultiStep(recipe.lr_steps(), recipe.gamma, recipe.warmup_iters, recipe.warmup_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
