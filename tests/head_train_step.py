"""A reference training step whose backward stops at the DyHead features: the backbone runs
once without gradient and only the detection head (one-stage head, or RPN + ROI heads) is
differentiated. Losses and the head's gradients are then exactly the full step's; the
backbone's gradients need the full (much slower) step of train_reference.run_train_step.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from train_reference import Comparison, TrainCase, build_batch, compare_to_reference, dcn_backend

import dyhead_zoo
from dyhead_zoo.ops.deform_conv import available_backends, is_differentiable

#: Set to run the full training steps (backbone included) against the references, per backend.
FULL_STEP_ENV = "DYHEAD_FULL_TRAIN_STEPS"
#: The deformable-conv backends that train on CPU.
TRAINABLE_BACKENDS = tuple(n for n in available_backends("cpu") if is_differentiable(n))

#: Backend of the (gradient-free) backbone pass of the head-only checks: the references emulate
#: the official kernel with torchvision's deform_conv2d, so its features are the closest (the
#: gather backend's differ by ~1e-6, enough to move a near-tied proposal through NMS).
REFERENCE_BACKEND = "torchvision"

def above_dyhead_block0_input(name: str) -> bool:
    """Parameters whose gradients do not flow back through the first DyHead block's offset and
    scale attention into the FPN (the part tests/test_train_atss.py records as a known gap)."""
    return not name.startswith(("backbone.backbone.", "backbone.dyhead_tower.0.offset.",
                                 "backbone.dyhead_tower.0.AttnConv."))


#: Parameter-name prefixes of the parts after the backbone, per meta-architecture.
HEAD_PREFIXES = {"RetinaNet": ("head.",), "ATSS": ("head.",),
                 "GeneralizedRCNN": ("proposal_generator.", "roi_heads.")}


def backbone_features(model: dyhead_zoo.DyHeadDetector, case: TrainCase, backend: str | None = None
                      ) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
    """The DyHead features of the case's batch (no gradient) and the image sizes."""
    batch, sizes = build_batch(case, model.config)
    threads = torch.get_num_threads()
    # One thread: the reference's proposals hold near-ties that NMS resolves differently when
    # the features move by 1e-7 (summation order); one proposal more or less shifts the box
    # branch's gradients past the tolerance. A single thread reproduced them on our CPUs.
    torch.set_num_threads(1)
    try:
        with dcn_backend(backend), torch.no_grad():
            return model.backbone(batch), sizes
    finally:
        torch.set_num_threads(threads)


def head_losses(model: dyhead_zoo.DyHeadDetector, features: dict[str, Tensor], sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``DyHeadDetector.losses`` after the backbone, on precomputed ``features``."""
    if model.config.meta_architecture == "GeneralizedRCNN":
        from dyhead_zoo.losses.rcnn_losses import rcnn_losses

        return rcnn_losses(model, features, sizes, targets)
    maps = [features[name] for name in model.levels]
    if model.config.meta_architecture == "ATSS":
        from dyhead_zoo.losses.atss_loss import atss_losses

        return atss_losses(model.head, model.head(maps), model.anchor_generator(maps), sizes, targets)
    from dyhead_zoo.losses.retinanet_loss import retinanet_losses

    return retinanet_losses(model.head, model.head(maps), model.anchor_generator(maps), sizes, targets)


def head_step(model: dyhead_zoo.DyHeadDetector, case: TrainCase, features: dict[str, Tensor],
              sizes: list[tuple[int, int]]) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """Seed, losses on ``features``, backward; returns the losses and the head parameters' gradients."""
    model.zero_grad(set_to_none=True)
    targets = [{k: v.clone() for k, v in t.items()} for t in case.targets]
    torch.manual_seed(case.torch_seed)  # nothing random runs in the backbone
    losses = head_losses(model, features, sizes, targets)
    sum(losses.values()).backward()
    prefixes = HEAD_PREFIXES[model.config.meta_architecture]
    grads = {name: None if p.grad is None else p.grad.detach().clone()
             for name, p in model.named_parameters() if name.startswith(prefixes)}
    return {k: v.detach() for k, v in losses.items()}, grads


def compare_head_to_reference(case: TrainCase, losses: dict[str, Tensor], grads: dict[str, Tensor | None]
                              ) -> Comparison:
    """:func:`compare_to_reference` restricted to the parameters in ``grads`` (the head's)."""
    head = dataclasses.replace(
        case,
        grad_norms={k: v for k, v in case.grad_norms.items() if k in grads},
        grad_none={k for k in case.grad_none if k in grads},
        full_grads={k: v for k, v in case.full_grads.items() if k in grads},
    )
    if len(head.grad_norms) != len(grads):
        raise AssertionError(f"parameters missing from the reference: {sorted(set(grads) - set(head.grad_norms))}")
    return compare_to_reference(head, losses, grads)
