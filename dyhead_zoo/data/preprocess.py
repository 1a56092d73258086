"""Test-time preprocessing as detectron2's DefaultPredictor does it: resize, normalise, pad."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dyhead_zoo.config import InputConfig


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side at ``min_size`` and the longer at most ``max_size``."""
    scale = min_size * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = min_size * 1.0, scale * width
    else:
        new_h, new_w = scale * height, min_size * 1.0
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    # At extreme aspect ratios (about 2666:1 at 800/1333) the shorter side rounds to 0 pixels.
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize(image_rgb: np.ndarray, config: InputConfig) -> np.ndarray:
    """Resize an HxWx3 uint8 image (shortest edge) with PIL bilinear on uint8."""
    h, w = image_rgb.shape[:2]
    new_h, new_w = resized_shape(h, w, config.min_size, config.max_size)
    if (new_h, new_w) == (h, w):
        return image_rgb
    return np.asarray(Image.fromarray(image_rgb).resize((new_w, new_h), Image.BILINEAR))


def to_channel_order(image_rgb: np.ndarray, config: InputConfig) -> Tensor:
    """HxWx3 uint8 RGB -> (3, H, W) uint8 in the model's channel order (cheap to send between processes)."""
    if config.format == "BGR":
        image_rgb = image_rgb[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))


def to_model_tensor(image_rgb: np.ndarray, config: InputConfig) -> Tensor:
    """HxWx3 uint8 RGB -> (3, H, W) float32 in the model's channel order, not yet normalised."""
    return to_channel_order(image_rgb, config).float()


def group_by_padded_shape(images: list[Tensor], size_divisibility: int) -> list[list[int]]:
    """Indices of ``images`` (..., h, w) grouped by padded size, in first-seen order.

    Only images of one padded size may share a batch: DyHead pools over the whole padded map,
    so extra padding would change an image's detections.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(padded_shape(image.shape[-2], image.shape[-1], size_divisibility), []).append(index)
    return list(groups.values())


def normalize_and_pad(images: list[Tensor], config: InputConfig) -> tuple[Tensor, list[tuple[int, int]]]:
    """Normalise (3, H, W) images and zero-pad them into one batch divisible by the size divisor.

    Returns the (N, 3, H', W') batch and each image's (h, w) before padding.
    """
    mean = torch.tensor(config.pixel_mean, device=images[0].device).view(3, 1, 1)
    std = torch.tensor(config.pixel_std, device=images[0].device).view(3, 1, 1)
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    max_h, max_w = padded_shape(max(h for h, _ in sizes), max(w for _, w in sizes), config.size_divisibility)
    batch = torch.stack([
        F.pad((im - mean) / std, (0, max_w - im.shape[-1], 0, max_h - im.shape[-2]), value=0.0)
        for im in images
    ])
    return batch, sizes


def padded_shape(height: int, width: int, size_divisibility: int) -> tuple[int, int]:
    """Size of an image's batch tensor after padding to the size divisor."""
    d = size_divisibility
    return -(-height // d) * d, -(-width // d) * d
