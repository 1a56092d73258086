"""The RetinaNet and Faster R-CNN inference rules on small hand-checkable inputs."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from dyhead_zoo.config import HeadConfig, RPNConfig
from dyhead_zoo.models.anchors import AnchorGenerator
from dyhead_zoo.models.retinanet import RetinaNetHead, decode_level
from dyhead_zoo.models.roi_heads import assign_boxes_to_levels, detections_from_boxes, pool_boxes
from dyhead_zoo.models.rpn import RPN, top_proposals


def square(x: float, y: float, side: float) -> list[float]:
    return [float(x), float(y), float(x + side), float(y + side)]


# ---------------------------------------------------------------- ROI level assignment and pooling

def test_boxes_go_to_the_level_of_their_size():
    boxes = torch.tensor([
        square(0, 0, 224),   # canonical: level 4
        square(5, 5, 112),   # half the side: level 3
        square(0, 0, 448),   # twice: level 5
        square(0, 0, 223),   # just under canonical: floor(4 + log2(223/224)) = 3
        square(0, 0, 10),    # tiny: clamped to the lowest level, 2
        square(0, 0, 2000),  # huge: clamped to the highest level, 5
        [0, 0, 112, 448],    # sqrt(area) = 224: level 4
        [3, 3, 3, 50],       # empty: log2(1e-8) is very negative -> level 2
    ])
    levels = assign_boxes_to_levels(boxes, min_level=2, max_level=5)
    assert levels.dtype == torch.int64
    assert levels.tolist() == [2, 1, 3, 1, 0, 3, 2, 0]


def test_each_box_is_pooled_from_its_own_level():
    # Level k is filled with the constant k + 1, so a pooled box reads back its level (and a
    # sample outside the map would read 0). The image is 512 x 512.
    features = [torch.full((2, 3, 128 // 2**k, 128 // 2**k), float(k + 1)) for k in range(4)]
    strides = [4, 8, 16, 32]
    boxes = [torch.tensor([square(0, 0, 40.0), square(10, 10, 250.0)]),
             torch.tensor([square(0, 0, 120.0), square(0, 0, 500.0), square(2, 2, 20.0)])]
    pooled = pool_boxes(features, strides, boxes, output_size=7, sampling_ratio=0)
    assert pooled.shape == (5, 3, 7, 7)
    per_box = pooled.flatten(1)
    assert torch.equal(per_box.amin(1), per_box.amax(1))
    assert per_box[:, 0].tolist() == [1.0, 3.0, 2.0, 4.0, 1.0]


def test_pooling_is_aligned_roi_align_in_input_pixels():
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 32, 32), torch.randn(2, 4, 16, 16)]
    box = torch.tensor([[8.0, 4.0, 100.0, 60.0]])  # sqrt(area) ~ 71.7 -> level 2 (stride 4)
    pooled = pool_boxes(features, [4, 8], [torch.zeros(0, 4), box], output_size=7, sampling_ratio=0)
    rois = torch.tensor([[1.0, 8.0, 4.0, 100.0, 60.0]])
    expected = roi_align(features[0], rois, 7, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    assert torch.equal(pooled, expected)
    single = pool_boxes(features[:1], [4], [torch.zeros(0, 4), box], output_size=7, sampling_ratio=0)
    assert torch.equal(single, expected)
    unaligned = roi_align(features[0], rois, 7, spatial_scale=0.25, sampling_ratio=0, aligned=False)
    assert not torch.allclose(pooled, unaligned)


# ---------------------------------------------------------------- Fast R-CNN outputs

def test_fast_rcnn_drops_background_clips_and_suppresses_per_class():
    # 3 proposals, 2 classes + background; boxes (R, 2*4).
    boxes = torch.tensor([
        square(-10, -10, 50) + square(0, 0, 30),
        square(0, 0, 50) + square(1, 1, 30),
        square(60, 60, 80) + square(60, 60, 10),
    ])
    probs = torch.tensor([
        [0.50, 0.30, 0.20],
        [0.45, 0.04, 0.51],   # class 1 below threshold; background is ignored however high
        [0.03, 0.90, 0.07],
    ])
    out_boxes, scores, labels = detections_from_boxes(boxes, probs, (100, 120), score_thresh=0.05,
                                                      nms_thresh=0.5, max_detections=10)
    # Class 0: proposal 0 clipped to [0, 0, 40, 40] and proposal 1's [0, 0, 50, 50] overlap
    # with IoU 0.64 -> the 0.45 one is suppressed. Class 1: two disjoint boxes survive.
    assert labels.tolist() == [1, 0, 1]
    assert torch.allclose(scores, torch.tensor([0.90, 0.50, 0.30]))
    assert out_boxes.tolist() == [[60, 60, 70, 70], [0, 0, 40, 40], [0, 0, 30, 30]]
    # The proposal 2 class-0 box [60, 60, 140, 140] would be clipped to (h=100, w=120) but
    # its score 0.03 is below the threshold.
    _, _, labels = detections_from_boxes(boxes, probs, (100, 120), 0.05, 0.5, max_detections=2)
    assert labels.tolist() == [1, 0]
    clipped, _, _ = detections_from_boxes(boxes, probs, (100, 120), 0.02, 0.5, 10)
    assert [60, 60, 120, 100] in clipped.tolist()


# ---------------------------------------------------------------- RPN proposals

def test_rpn_keeps_top_k_per_level_clips_and_suppresses_within_levels():
    level0 = torch.tensor([square(0, 0, 10), square(1, 0, 10), square(50, 50, 10), square(80, 80, 40)])
    level1 = torch.tensor([square(0, 0, 10), square(30, 30, 20)])
    zeros = [torch.zeros(4, 4), torch.zeros(2, 4)]
    logits = [torch.tensor([5.0, 4.0, 3.0, 6.0]), torch.tensor([1.0, 2.0])]
    boxes, scores = top_proposals([level0, level1], zeros, logits, image_hw=(100, 110),
                                  pre_nms_topk=3, post_nms_topk=10, nms_thresh=0.7)
    # Level 0 keeps logits 6, 5, 4 (3.0 is cut by pre_nms_topk); box 1 overlaps box 0
    # (IoU 9/11 > 0.7) and is suppressed; level 1's copy of box 0 is kept: NMS is per level.
    assert scores.tolist() == [6.0, 5.0, 2.0, 1.0]
    assert boxes.tolist() == [[80, 80, 110, 100], square(0, 0, 10), square(30, 30, 20), square(0, 0, 10)]
    boxes, scores = top_proposals([level0, level1], zeros, logits, (100, 110), 3, post_nms_topk=2, nms_thresh=0.7)
    assert scores.tolist() == [6.0, 5.0]


def test_rpn_drops_boxes_empty_after_clipping_and_decodes_deltas():
    anchors = [torch.tensor([[-20.0, 5.0, -5.0, 15.0], square(10, 10, 20)])]
    deltas = [torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])]  # shift box 1 by half its width
    boxes, scores = top_proposals(anchors, deltas, [torch.tensor([9.0, 1.0])], (100, 100), 10, 10, 0.7)
    assert scores.tolist() == [1.0]
    assert boxes.tolist() == [[20.0, 10.0, 40.0, 30.0]]


def test_rpn_reads_objectness_in_anchor_order():
    # Identity 3x3 conv, objectness = x-ramp for anchor 1 only, zero deltas: the best proposal
    # is anchor 1 at the right-most location of the bottom row, clipped to the image.
    config = RPNConfig(in_features=("p3",), pre_nms_topk=1, post_nms_topk=5, nms_thresh=0.7,
                       bbox_reg_weights=(1.0, 1.0, 1.0, 1.0))
    rpn = RPN(config, channels=2, num_anchors=3)
    with torch.no_grad():
        for p in rpn.parameters():
            p.zero_()
        rpn.rpn_head.conv.weight[0, 0, 1, 1] = 1.0
        rpn.rpn_head.objectness_logits.weight[1, 0] = 1.0
    feature = torch.zeros(1, 2, 3, 4)
    feature[0, 0] = torch.arange(12.0).view(3, 4)
    generator = AnchorGenerator([8], ((16.0,),), (0.5, 1.0, 2.0), 0.0)
    [(boxes, logits)] = rpn([feature], generator, [(20, 30)])
    anchors = generator([feature])[0].view(3, 4, 3, 4)
    expected = anchors[2, 3, 1].clone()
    expected[0::2] = expected[0::2].clamp(0, 30)
    expected[1::2] = expected[1::2].clamp(0, 20)
    assert logits.tolist() == [11.0]
    assert torch.equal(boxes[0], expected)


# ---------------------------------------------------------------- RetinaNet

def test_retinanet_keeps_scores_above_threshold_then_the_top_k():
    probs = torch.tensor([
        [0.04, 0.90, 0.30],
        [0.06, 0.01, 0.70],
        [0.05, 0.20, 0.02],
    ])
    anchors = torch.tensor([square(0, 0, 10), square(20, 0, 10), square(40, 0, 10)])
    deltas = torch.zeros(3, 4)
    deltas[1] = torch.tensor([0.1, 0.0, 0.0, 0.0])
    boxes, scores, classes = decode_level(probs, deltas, anchors, score_thresh=0.05, topk=3,
                                          weights=(1.0, 1.0, 1.0, 1.0))
    assert torch.allclose(scores, torch.tensor([0.90, 0.70, 0.30]))
    assert classes.tolist() == [1, 2, 2]
    assert torch.allclose(boxes, torch.tensor([square(0, 0, 10), square(21, 0, 10), square(0, 0, 10)]))
    # 0.05 itself is not above the threshold; only 5 pairs qualify, so topk 100 keeps 5.
    _, scores, _ = decode_level(probs, deltas, anchors, 0.05, topk=100, weights=(1.0, 1.0, 1.0, 1.0))
    assert len(scores) == 5


def _head(num_convs: int = 1) -> RetinaNetHead:
    config = HeadConfig(num_convs=num_convs, score_thresh=0.05, topk_candidates=2, nms_thresh=0.5,
                        bbox_reg_weights=(1.0, 1.0, 1.0, 1.0))
    return RetinaNetHead(config, channels=8, num_classes=2, num_anchors=1, num_levels=2)


def test_retinanet_head_layout():
    names = [n for n, _ in _head(num_convs=4).state_dict().items()]
    convs = [f"{tower}.{i}.{p}" for tower in ("cls_subnet", "bbox_subnet")
             for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    assert names == convs + ["cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"]
    with pytest.raises(ValueError, match="2 levels"):
        _head()([torch.zeros(1, 8, 2, 2)])


def test_retinanet_inference_top_k_per_level_and_class_wise_nms():
    head = _head()
    # Level 0: 2x2 locations, level 1: 1x1; logits (N=1, A*K=2, H, W); zero deltas.
    def logit(p: float) -> float:
        return float(torch.logit(torch.tensor(p)))

    level0 = torch.tensor([[logit(0.9), logit(0.8), logit(0.7), logit(0.01)],     # class 0
                           [logit(0.85), logit(0.01), logit(0.01), logit(0.6)]]).view(1, 2, 2, 2)
    level1 = torch.tensor([logit(0.3), logit(0.95)]).view(1, 2, 1, 1)
    deltas = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 1, 1)]
    anchors = [torch.tensor([square(0, 0, 10), square(1, 0, 10), square(50, 0, 10), square(50, 50, 10)]),
               torch.tensor([square(0, 0, 10)])]
    [(boxes, scores, labels)] = head.inference(([level0, level1], deltas), anchors, num_images=1,
                                               max_detections=10)
    # Level 0 top 2 of the 5 candidates: (loc 0, cls 0) 0.9 and (loc 0, cls 1) 0.85; same box,
    # different classes, both survive. Level 1: 0.95 (cls 1) suppresses 0.85 (same box, cls 1);
    # 0.3 (cls 0) is suppressed by 0.9.
    assert torch.allclose(scores, torch.tensor([0.95, 0.9]))
    assert labels.tolist() == [1, 0]
    assert boxes.tolist() == [square(0, 0, 10)] * 2
    [(_, scores, _)] = head.inference(([level0, level1], deltas), anchors, 1, max_detections=1)
    assert torch.allclose(scores, torch.tensor([0.95]))
