"""RetinaNet training: detectron2's anchor labelling, focal and box losses, running normaliser,
and one official training step (tests/data/train/dyhead_r50_retina_fpn_1x/case0)."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from head_train_step import (
    FULL_STEP_ENV,
    REFERENCE_BACKEND,
    TRAINABLE_BACKENDS,
    above_dyhead_block0_input,
    backbone_features,
    compare_head_to_reference,
    head_step,
)
from train_reference import build_train_model, compare_to_reference, load_case, run_train_step

import dyhead_zoo
from dyhead_zoo.losses.matcher import Matcher
from dyhead_zoo.losses.retinanet_loss import label_anchors, retinanet_losses
from dyhead_zoo.models.anchors import AnchorGenerator
from dyhead_zoo.models.box_coder import encode_deltas
from dyhead_zoo.models.retinanet import INITIAL_LOSS_NORMALIZER, RetinaNetHead

VARIANT = "dyhead_r50_retina_fpn_1x"


def small_head(num_classes: int = 3, channels: int = 4) -> tuple[RetinaNetHead, AnchorGenerator]:
    """A 2-level RetinaNet head with the variant's training settings, tiny channels."""
    torch.manual_seed(0)
    config = dataclasses.replace(dyhead_zoo.get_config(VARIANT).head, num_convs=1)
    generator = AnchorGenerator([8, 16], ((16.0,), (32.0,)), (0.5, 1.0, 2.0), 0.0)
    return RetinaNetHead(config, channels, num_classes, generator.num_anchors, 2), generator


def head_inputs(head: RetinaNetHead, generator: AnchorGenerator, num_images: int = 2):
    features = [torch.randn(num_images, 4, 8, 8), torch.randn(num_images, 4, 4, 4)]
    return head(features), generator(features)


def test_anchor_labels_follow_the_iou_bands_and_low_quality_matches():
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # IoU 1 with gt 0 -> class 2
        [0.0, 0.0, 10.0, 5.5],     # IoU 0.55 -> foreground
        [0.0, 0.0, 10.0, 4.5],     # IoU 0.45 -> ignored
        [0.0, 0.0, 10.0, 3.0],     # IoU 0.3 -> background
        [100.0, 100.0, 140.0, 140.0],  # gt 1's best anchor (IoU 0.25): foreground all the same
        [200.0, 200.0, 210.0, 210.0],  # no overlap -> background
    ])
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
    gt_labels = torch.tensor([2, 0])
    matcher = Matcher((0.4, 0.5), (0, -1, 1), allow_low_quality_matches=True)
    labels, matched = label_anchors(anchors, gt_boxes, gt_labels, matcher, num_classes=3)
    assert labels.tolist() == [2, 2, -1, 3, 0, 3]
    assert torch.equal(matched[4], gt_boxes[1]) and torch.equal(matched[1], gt_boxes[0])
    labels, matched = label_anchors(anchors, gt_boxes[:0], gt_labels[:0], matcher, num_classes=3)
    assert labels.tolist() == [3] * 6 and not matched.any()


def test_image_without_objects_gives_only_background_terms():
    head, generator = small_head()
    outputs, anchors = head_inputs(head, generator)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = retinanet_losses(head, outputs, anchors, [(64, 64)] * 2, targets)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert not head.bbox_pred.weight.grad.any()
    assert head.cls_score.weight.grad.abs().sum() > 0
    # No foreground: the count entering the running normaliser is clamped to 1.
    assert head.loss_normalizer == pytest.approx(0.9 * INITIAL_LOSS_NORMALIZER + 0.1)
    # The focal loss with all-zero targets, by its definition, over every anchor and class.
    logits = torch.cat([x.detach().permute(0, 2, 3, 1).reshape(2, -1, 3) for x in outputs[0]], dim=1)
    p = logits.sigmoid()
    expected = (0.75 * p**2 * -torch.log1p(-p)).sum() / head.loss_normalizer
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_box_loss_is_l1_on_encoded_deltas_of_foreground_anchors():
    head, generator = small_head()
    outputs, anchors = head_inputs(head, generator, num_images=1)
    gt = torch.tensor([[5.0, 7.0, 27.0, 21.0]])
    losses = retinanet_losses(head, outputs, anchors, [(64, 64)], [{"boxes": gt, "labels": torch.tensor([1])}])
    all_anchors = torch.cat(anchors)
    matcher = Matcher((0.4, 0.5), (0, -1, 1), allow_low_quality_matches=True)
    labels, _ = label_anchors(all_anchors, gt, torch.tensor([1]), matcher, 3)
    fg = labels == 1
    assert fg.sum() >= 1
    deltas = torch.cat([x.detach().permute(0, 2, 3, 1).reshape(1, -1, 4) for x in outputs[1]], dim=1)[0]
    targets = encode_deltas(all_anchors[fg], gt.expand(int(fg.sum()), 4), (1.0, 1.0, 1.0, 1.0))
    normalizer = 0.9 * INITIAL_LOSS_NORMALIZER + 0.1 * int(fg.sum())
    expected = (deltas[fg] - targets).abs().sum() / normalizer
    assert losses["loss_box_reg"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_running_normaliser_is_a_plain_attribute_updated_each_step():
    head, generator = small_head()
    keys = set(head.state_dict())
    outputs, anchors = head_inputs(head, generator)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 10.0, 60.0, 50.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    first = retinanet_losses(head, outputs, anchors, [(64, 64)] * 2, targets)
    after_first = head.loss_normalizer
    num_fg = round((after_first - 0.9 * INITIAL_LOSS_NORMALIZER) / 0.1)
    assert num_fg >= 2  # each object claims at least its best anchor
    second = retinanet_losses(head, outputs, anchors, [(64, 64)] * 2, targets)
    assert head.loss_normalizer == pytest.approx(0.9 * after_first + 0.1 * num_fg)
    # Same predictions and targets: the losses scale with 1 / normaliser.
    ratio = first["loss_cls"].item() / second["loss_cls"].item()
    assert ratio == pytest.approx(head.loss_normalizer / after_first, rel=1e-6)
    assert set(head.state_dict()) == keys
    head.loss_normalizer = 250.0  # a trainer restoring its saved value
    third = retinanet_losses(head, outputs, anchors, [(64, 64)] * 2, targets)
    assert third["loss_box_reg"].item() == pytest.approx(
        first["loss_box_reg"].item() * after_first / (0.9 * 250.0 + 0.1 * num_fg), rel=1e-6)


def test_bad_targets_are_rejected_with_the_fix():
    head, generator = small_head()
    outputs, anchors = head_inputs(head, generator)
    good = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    with pytest.raises(ValueError, match="one dict per image"):
        retinanet_losses(head, outputs, anchors, [(64, 64)] * 2, [good])
    with pytest.raises(ValueError, match="below 3"):
        retinanet_losses(head, outputs, anchors, [(64, 64)] * 2,
                         [good, {"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="XYXY"):
        retinanet_losses(head, outputs, anchors, [(64, 64)] * 2,
                         [good, {"boxes": torch.tensor([[5.0, 0, 1, 5]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="not implemented"):
        head.config = dataclasses.replace(head.config, bbox_reg_loss_type="diou")
        retinanet_losses(head, outputs, anchors, [(64, 64)] * 2, [good, good])


def test_detector_in_train_mode_returns_the_retinanet_losses():
    torch.manual_seed(0)
    # A narrow one-block model keeps this quick; the loss rules do not depend on the widths.
    config = dataclasses.replace(dyhead_zoo.get_config(VARIANT), fpn_channels=32, dyhead_num_blocks=1)
    model = dyhead_zoo.create_model(VARIANT, config=config).train()
    images = torch.randn(2, 3, 128, 128)
    no_objects = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    one = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0]]), "labels": torch.tensor([5])}
    losses = model(images, [(128, 128), (100, 120)], [no_objects, no_objects])
    assert set(losses) == {"loss_cls", "loss_box_reg"} and losses["loss_box_reg"].item() == 0.0
    losses = model(images, [(128, 128), (100, 120)], [one, no_objects])
    assert losses["loss_box_reg"].item() > 0
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    # Two steps so far: 100 -> 0.9 * 100 + 0.1 * 1 -> then this batch's foreground count.
    assert model.head.loss_normalizer > 0.9 * (0.9 * INITIAL_LOSS_NORMALIZER + 0.1) + 0.1
    assert "head.loss_normalizer" not in model.state_dict()


# ---------------------------------------------------------------- the official reference

@pytest.fixture(scope="module")
def reference_step():
    case = load_case(VARIANT, "case0")
    model = build_train_model(case)
    features, sizes = backbone_features(model, case, REFERENCE_BACKEND)
    losses, grads = head_step(model, case, features, sizes)
    return case, model, losses, grads


def test_first_training_step_matches_the_official_one(reference_step):
    # Every loss term and every head parameter's gradient (norms of all, full tensors of the
    # class and box predictors) of a fresh model's first step; the backbone's gradients are in
    # the full step below.
    case, model, losses, grads = reference_step
    assert model.head.loss_normalizer == case.loss_normalizer  # 0.9 * 100 + 0.1 * 320 foreground anchors
    report = compare_head_to_reference(case, losses, grads)
    print(f"{VARIANT} {case.case}, head: {report.summary()}")
    report.assert_ok()


@pytest.mark.skipif(not os.environ.get(FULL_STEP_ENV), reason=f"full training steps are slow on CPU "
                    f"(minutes, 10+ GB); set {FULL_STEP_ENV}=1 to run them")
@pytest.mark.parametrize("backend", TRAINABLE_BACKENDS)
def test_full_training_step_matches_the_official_one(backend, request):
    if backend != REFERENCE_BACKEND:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "with the gather DCN (float32 rounding apart from the reference's torchvision-formula "
            "arithmetic) the last DyHead block's DyReLU fc gradients, global sums over every "
            "position, miss rtol 1e-3 elementwise (fc.2.bias: 2.4e-3 absolute); losses 2.3e-7 and "
            "gradient norms 2.7e-4 relative are within tolerance")))
    case = load_case(VARIANT, "case0")
    model = build_train_model(case)
    losses, grads = run_train_step(model, case, backend=backend)
    everywhere = compare_to_reference(case, losses, grads)
    print(f"{VARIANT} {case.case} ({backend}), all parameters: {everywhere.summary()}")
    # Strict down to the first DyHead block; below it, the gap recorded in test_train_atss.py.
    compare_to_reference(case, losses, grads, parameters=above_dyhead_block0_input).assert_ok()
