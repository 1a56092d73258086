"""Fine-tuning to another class set: which layers depend on the classes, and their official init.

Everything else of a checkpoint loads strictly; these layers are re-initialised the way the
official heads initialise them when the checkpoint was trained on other classes:
ATSS (DynamicHead ``ATSSHead``) and RetinaNet (detectron2 ``RetinaNetHead``): weights normal
(std 0.01), classification bias ``-log((1 - 0.01) / 0.01)`` (the focal-loss prior 0.01);
Faster R-CNN (detectron2 ``FastRCNNOutputLayers``): classifier normal (std 0.01), box
regressor normal (std 0.001), biases 0.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from dyhead_zoo.weights.checkpoint import check_state_dict

PRIOR_PROB = 0.01  # MODEL.ATSS.PRIOR_PROB / MODEL.RETINANET.PRIOR_PROB


def class_layers(model: nn.Module) -> dict[str, tuple[nn.Module, float, float]]:
    """The layers whose shape depends on the number of classes, by module name, with the
    official (weight std, bias value) of their initialisation."""
    prior_bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
    arch = model.config.meta_architecture
    if arch == "ATSS":
        return {"head.cls_logits": (model.head.cls_logits, 0.01, prior_bias)}
    if arch == "RetinaNet":
        return {"head.cls_score": (model.head.cls_score, 0.01, prior_bias)}
    predictor = model.roi_heads.box_predictor
    return {"roi_heads.box_predictor.cls_score": (predictor.cls_score, 0.01, 0.0),
            "roi_heads.box_predictor.bbox_pred": (predictor.bbox_pred, 0.001, 0.0)}


@torch.no_grad()
def init_class_layers(model: nn.Module, generator: torch.Generator | None = None) -> list[str]:
    """Re-initialise :func:`class_layers` the official way; returns their names."""
    layers = class_layers(model)
    for module, std, bias in layers.values():
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
        module.bias.fill_(bias)
    return list(layers)


def load_for_classes(model: nn.Module, state: Mapping[str, Tensor], source_class_names: Sequence[str] | None
                     ) -> list[str]:
    """Load ``state`` into ``model``; when it was trained on other classes than the model's
    ``config.class_names``, leave out and re-initialise the class-dependent layers.

    ``source_class_names`` are the checkpoint's classes (``None`` when unknown: then the
    layers are kept exactly when their shapes match). Every other key and shape must match
    (:class:`~dyhead_zoo.weights.checkpoint.CheckpointMismatchError` otherwise). Returns the names of
    the re-initialised layers (empty when nothing was re-initialised).
    """
    layers = class_layers(model)
    expected = model.state_dict()
    prefixes = tuple(f"{name}." for name in layers)
    if source_class_names is not None:
        same = tuple(source_class_names) == tuple(model.config.class_names)
    else:
        same = all(k in state and tuple(state[k].shape) == tuple(v.shape)
                   for k, v in expected.items() if k.startswith(prefixes))
    if same:
        check_state_dict(model, state)
        model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=True)
        return []
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    current = {k: v for k, v in expected.items() if k.startswith(prefixes)}
    check_state_dict(model, {**kept, **current})
    model.load_state_dict({k: kept[k].to(v.dtype) if k in kept else v for k, v in expected.items()}, strict=True)
    return init_class_layers(model)
