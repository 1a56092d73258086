"""Reading user images into HxWx3 uint8 RGB arrays, with clear errors for bad input."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def too_large_message(path: str | os.PathLike, err: Exception) -> str:
    """The error text for an image over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)."""
    return (f"{path}: the image is too large to decode safely ({err}); if you trust the file, raise the limit "
            "with PIL.Image.MAX_IMAGE_PIXELS = None (or a larger number) before loading, or downscale it")


def _from_pil(image: Image.Image, source: str) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: keep the top 8 bits of the 16-bit range.
        array = np.asarray(image, dtype=np.uint32) >> 8
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        raise ValueError(f"{source}: floating-point images have no agreed 0-255 scale; "
                         "convert it to 8-bit RGB first")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _from_array(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"{source}: expected an HxWx3 RGB (or HxW gray, HxWx4 RGBA) array, "
                         f"got shape {array.shape}")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 pixels in 0..255, got dtype {array.dtype}; "
                         "convert with (x * 255).round().astype(np.uint8) if it is a 0..1 float image")
    return np.ascontiguousarray(array)


def _chw_tensor_to_hwc(image: torch.Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"tensor: expected a (3, H, W) RGB (or (1, H, W) gray) tensor as "
                         f"torchvision.io.read_image returns it, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"tensor: expected uint8 pixels in 0..255, got dtype {image.dtype}; convert with "
                         "(x * 255).round().to(torch.uint8) if it is a 0..1 float image")
    return image.detach().cpu().permute(1, 2, 0).numpy()


def load_image(image: ImageInput) -> np.ndarray:
    """Return ``image`` (a path, a PIL image, an HxWx3 array or a (3, H, W) uint8 RGB tensor)
    as an HxWx3 uint8 RGB array.

    Grayscale, RGBA, palette and 16-bit images are converted; EXIF orientation is applied as
    detectron2's ``read_image`` does. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for an unreadable, truncated, empty or unsupported image.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as pil:
                pil.load()
                array = _from_pil(pil, str(path))
        except UnidentifiedImageError as err:
            raise ValueError(f"{path}: not a readable image file (PIL could not identify it)") from err
        except Image.DecompressionBombError as err:
            raise ValueError(too_large_message(path, err)) from err
        except (OSError, SyntaxError) as err:
            raise ValueError(f"{path}: the image file is truncated or corrupt ({err})") from err
        source = str(path)
    elif isinstance(image, Image.Image):
        source = "PIL image"
        try:
            array = _from_pil(image, source)
        except OSError as err:
            raise ValueError(f"PIL image could not be decoded ({err})") from err
    elif isinstance(image, np.ndarray):
        source = "array"
        array = _from_array(image, source)
    elif isinstance(image, torch.Tensor):
        source = "tensor"
        array = _from_array(_chw_tensor_to_hwc(image), source)
    else:
        raise TypeError(f"expected a path, PIL.Image or numpy array (or a (3, H, W) uint8 tensor), got "
                        f"{type(image).__name__}; "
                        "for tensors already preprocessed call the model directly")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{source}: empty image of size {array.shape[1]}x{array.shape[0]}")
    return array
