"""Box regression decoding (detectron2 ``Box2BoxTransform``)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

SCALE_CLAMP = math.log(1000.0 / 16)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: tuple[float, float, float, float],
                 scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """Decode ``deltas`` (R, 4*k) relative to ``boxes`` (R, 4) XYXY into boxes (R, 4*k), float32.

    ``weights`` divide (dx, dy, dw, dh); dw and dh are clamped at ``scale_clamp`` before exp.
    """
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    x2 = pred_ctr_x + 0.5 * pred_w
    y2 = pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def encode_deltas(boxes: Tensor, targets: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """The (R, 4) deltas that :func:`apply_deltas` turns ``boxes`` (R, 4) XYXY into ``targets``
    (R, 4) XYXY (detectron2 ``Box2BoxTransform.get_deltas``, no clamp): (dx, dy, dw, dh) times
    ``weights``. ``boxes`` must have positive width and height."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    target_widths = targets[:, 2] - targets[:, 0]
    target_heights = targets[:, 3] - targets[:, 1]
    target_ctr_x = targets[:, 0] + 0.5 * target_widths
    target_ctr_y = targets[:, 1] + 0.5 * target_heights
    wx, wy, ww, wh = weights
    dx = wx * (target_ctr_x - ctr_x) / widths
    dy = wy * (target_ctr_y - ctr_y) / heights
    dw = ww * torch.log(target_widths / widths)
    dh = wh * torch.log(target_heights / heights)
    return torch.stack((dx, dy, dw, dh), dim=1)
