"""``--from-scratch``: the official initialisation of every layer, then the ImageNet backbone.

The official runs start the ResNet-50 / Swin-T body from ImageNet classifiers
(:mod:`dyhead_zoo.weights.imagenet`) and everything above it from these rules:
detectron2's FPN and box head (``c2_xavier_fill``: Kaiming-uniform with a=1, bias 0);
DynamicHead's DyConv (deformable convs uniform in +-1/sqrt(fan_in), bias 0; the spatial
attention conv normal std 0.01, bias 0; the offset conv and DyReLU at PyTorch's defaults);
the ATSS and RetinaNet heads and the RPN (normal std 0.01, bias 0, classification bias at the
focal-loss prior 0.01); the Fast R-CNN predictor (see :mod:`.class_layers`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dyhead_zoo.engine.class_layers import init_class_layers


def _c2_xavier_fill(module: nn.Module) -> None:
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _normal(module: nn.Module, std: float) -> None:
    nn.init.normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


@torch.no_grad()
def official_init(model: nn.Module) -> None:
    """Initialise FPN, DyHead blocks and heads of ``model`` as the official code builds them
    (the backbone body is left as it is)."""
    from dyhead_zoo.models.dyhead import DyConv, ModulatedDeformConv

    fpn = model.backbone.backbone
    for name, module in fpn.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith("bottom_up"):
            _c2_xavier_fill(module)
    for block in model.backbone.modules():
        if isinstance(block, DyConv):
            for module in block.modules():
                if isinstance(module, ModulatedDeformConv):
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.weight, -bound, bound)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm)):
                    module.reset_parameters()
            for module in block.AttnConv.modules():
                if isinstance(module, nn.Conv2d):
                    _normal(module, 0.01)
    arch = model.config.meta_architecture
    if arch in ("ATSS", "RetinaNet"):
        for module in model.head.modules():
            if isinstance(module, nn.Conv2d):
                _normal(module, 0.01)
        for scale in getattr(model.head, "scales", []):
            scale.scale.fill_(1.0)
    else:
        for module in model.proposal_generator.modules():
            if isinstance(module, nn.Conv2d):
                _normal(module, 0.01)
        for module in model.roi_heads.box_head.modules():
            if isinstance(module, nn.Linear):
                _c2_xavier_fill(module)
    init_class_layers(model)


def init_from_imagenet(model: nn.Module) -> str:
    """:func:`official_init`, then the ImageNet weights into the backbone body (downloaded
    once through the weights cache). Returns a line for the log."""
    from dyhead_zoo.weights.imagenet import load_imagenet_backbone

    official_init(model)
    path = load_imagenet_backbone(model)
    return f"weights: ImageNet backbone {path}; FPN, DyHead and head initialised the official way"
