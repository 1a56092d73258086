"""From an exported network's raw outputs to the detections ``model.predict`` returns.

Thresholds, top-k and NMS have data-dependent sizes, which ONNX and ``torch.export`` express
poorly; they run here, in PyTorch, with the same functions the eager model uses, so an
onnxruntime session plus :func:`postprocess` gives ``model.predict``'s detections.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from dyhead_zoo.categories import COCO_CLASS_NAMES
from dyhead_zoo.config import ModelConfig
from dyhead_zoo.data.images import ImageInput, load_image
from dyhead_zoo.data.preprocess import normalize_and_pad, resize, to_model_tensor
from dyhead_zoo.models.anchors import AnchorGenerator
from dyhead_zoo.models.box_coder import apply_deltas
from dyhead_zoo.models.detections import Detections
from dyhead_zoo.models.postprocess import rescale_boxes
from dyhead_zoo.models.roi_heads import detections_from_boxes


def class_names_of(config: ModelConfig) -> tuple[str, ...]:
    """The variant's class names (the config's own when it has them, else COCO's 80)."""
    return tuple(getattr(config, "class_names", None) or COCO_CLASS_NAMES)


def prepare_batch(images: Sequence[ImageInput], config: ModelConfig, padded_hw: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """``model.predict``'s preprocessing for an exported network: load, resize, normalise, pad.

    Returns the float32 (N, 3, H, W) batch, each image's (h, w) after resizing (before
    padding) and its original (H, W). ``padded_hw`` pads to a fixed size (that of a
    statically exported network); it must be at least the size divisibility's padding of the
    largest image. Detections equal ``model.predict``'s when the batch's padded size is the
    one ``predict`` would use: DyHead pools over the whole padded map.
    """
    tensors, originals = [], []
    for image in images:
        rgb = load_image(image)
        tensors.append(to_model_tensor(resize(rgb, config.input), config.input))
        originals.append(tuple(rgb.shape[:2]))
    batch, sizes = normalize_and_pad(tensors, config.input)
    if padded_hw is not None:
        h, w = padded_hw
        if h < batch.shape[-2] or w < batch.shape[-1]:
            raise ValueError(f"images need a {batch.shape[-2]}x{batch.shape[-1]} batch, larger than the exported "
                             f"{h}x{w}; export with --height/--width at least that, or --dynamic")
        batch = torch.nn.functional.pad(batch, (0, w - batch.shape[-1], 0, h - batch.shape[-2]))
    return batch.numpy(), sizes, originals


def _as_tensors(outputs: Sequence[np.ndarray | Tensor]) -> list[Tensor]:
    return [torch.as_tensor(np.asarray(o)) if not isinstance(o, Tensor) else o for o in outputs]


def _one_stage(config: ModelConfig, outputs: list[Tensor], padded_hw: tuple[int, int],
               image_sizes: Sequence[tuple[int, int]]) -> list[tuple[Tensor, Tensor, Tensor]]:
    from dyhead_zoo.models.atss import ATSSHead
    from dyhead_zoo.models.retinanet import RetinaNetHead

    groups = 3 if config.meta_architecture == "ATSS" else 2
    num_levels = len(outputs) // groups
    levels = [outputs[g * num_levels:(g + 1) * num_levels] for g in range(groups)]
    strides = [padded_hw[0] // logits.shape[-2] for logits in levels[0]]
    anchors = AnchorGenerator(strides, config.anchors.sizes, config.anchors.aspect_ratios, config.anchors.offset)
    head_cls = ATSSHead if config.meta_architecture == "ATSS" else RetinaNetHead
    with torch.device("meta"):  # only the head's inference rules are used, not its weights
        head = head_cls(config.head, config.fpn_channels, config.num_classes, anchors.num_anchors, num_levels)
    return head.inference(tuple(levels), anchors(levels[0]), len(image_sizes), config.detections_per_image)


def _rcnn(config: ModelConfig, outputs: list[Tensor], image_sizes: Sequence[tuple[int, int]]
          ) -> list[tuple[Tensor, Tensor, Tensor]]:
    boxes, logits, levels, valid, class_logits, box_deltas = outputs
    rpn, roi = config.rpn, config.roi_heads
    results = []
    for i, size in enumerate(image_sizes):
        keep = valid[i].bool()
        b, s, lv, cl, bd = boxes[i][keep], logits[i][keep], levels[i][keep], class_logits[i][keep], box_deltas[i][keep]
        keep = batched_nms(b.float(), s, lv, rpn.nms_thresh)[:rpn.post_nms_topk]
        predicted = apply_deltas(bd[keep], b[keep], roi.bbox_reg_weights)
        probs = torch.softmax(cl[keep], dim=-1)
        results.append(detections_from_boxes(predicted, probs, size, roi.score_thresh, roi.nms_thresh,
                                             config.detections_per_image))
    return results


def postprocess(config: ModelConfig, outputs: Sequence[np.ndarray | Tensor], image_sizes: Sequence[tuple[int, int]],
                padded_hw: tuple[int, int], output_sizes: Sequence[tuple[int, int]] | None = None
                ) -> list[Detections]:
    """Detections from the raw outputs of an exported network (onnxruntime's list of arrays, or
    the tensors of an ExportedProgram), in the order of ``output_names``.

    ``image_sizes``: each image's (h, w) in the batch before padding; ``padded_hw``: the batch's
    (H, W); ``output_sizes``: the sizes to scale the boxes to (each image's original size, as
    :func:`prepare_batch` returns them; default ``image_sizes``). Returns one
    :class:`~dyhead_zoo.Detections` per image, as ``model.predict`` would.
    """
    tensors = _as_tensors(outputs)
    if config.meta_architecture == "GeneralizedRCNN":
        raw = _rcnn(config, tensors, image_sizes)
    else:
        raw = _one_stage(config, tensors, padded_hw, image_sizes)
    names = class_names_of(config)
    results = []
    for (boxes, scores, labels), size, target in zip(raw, image_sizes, output_sizes or image_sizes):
        boxes, scores, labels = rescale_boxes(boxes, scores, labels, tuple(size), tuple(target))
        results.append(Detections(boxes, scores, labels, [names[i] for i in labels.tolist()]))
    return results
