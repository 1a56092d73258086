"""A tiny COCO-format detection set that a detector can learn on CPU in minutes.

    python -m benchmarks.shapes_dataset OUT [--train 200] [--val 50] [--seed 0]

Three classes (circle, square, triangle) of random colour and size drawn on textured
backgrounds (smooth colour fields, stripes and pixel noise) in small images of mixed aspect
ratio. Writes ``OUT/train/*.png`` + ``OUT/train.json`` and a held-out ``OUT/val/*.png`` +
``OUT/val.json``; the same seed always gives the same files. Boxes are the tight extent of
each drawn shape's pixels; shapes never overlap, so every box is fully visible.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})


@dataclass(frozen=True)
class ShapesSettings:
    """Image side range (pixels), shapes per image and shape size range (pixels)."""

    min_side: int = 96
    max_side: int = 160
    max_shapes: int = 4
    min_shape: int = 16
    max_shape: int = 48


@dataclass(frozen=True)
class ShapesDataset:
    """Where :func:`write_shapes_dataset` put the two splits."""

    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (3, 4, 3))
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
    field = field + stripes * rng.uniform(10, 50) * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 12, (height, width, 3))
    return np.clip(field, 0, 255).astype(np.uint8)


def _shape_mask(kind: int, height: int, width: int, x: int, y: int, size: int) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == 1:
        draw.ellipse([x, y, x + size - 1, y + size - 1], fill=255)
    elif kind == 2:
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=255)
    else:
        draw.polygon([(x + (size - 1) / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=255)
    return np.asarray(mask) > 127


def _image(rng: np.random.Generator, settings: ShapesSettings) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    height, width = (int(v) for v in rng.integers(settings.min_side, settings.max_side + 1, 2))
    image = _background(rng, height, width)
    placed: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, settings.max_shapes + 1))):
        for _attempt in range(20):   # rejection sampling keeps shapes apart
            size = int(rng.integers(settings.min_shape, min(settings.max_shape, height, width) + 1))
            x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
            if all(x + size + 2 <= px or px + ps + 2 <= x or y + size + 2 <= py or py + ps + 2 <= y
                   for px, py, ps, _ in placed):
                break
        else:
            continue
        kind = int(rng.integers(1, 4))
        mask = _shape_mask(kind, height, width, x, y, size)
        image[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
        ys, xs = np.nonzero(mask)
        objects.append((kind, [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                               float(ys.max() + 1 - ys.min())]))
        placed.append((x, y, size, kind))
    return image, objects


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator,
                 settings: ShapesSettings) -> tuple[Path, Path]:
    images_dir = root / split
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for number in range(1, count + 1):
        image, objects = _image(rng, settings)
        name = f"{number:05d}.png"
        Image.fromarray(image).save(images_dir / name)
        images.append({"id": number, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for kind, bbox in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": kind, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": 0})
    path = root / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(CATEGORIES)}))
    return images_dir, path


def write_shapes_dataset(root: str | Path, train_images: int = 200, val_images: int = 50, seed: int = 0,
                         settings: ShapesSettings = ShapesSettings()) -> ShapesDataset:
    """Write the train and held-out val splits under ``root`` (see the module docstring)."""
    if train_images < 1 or val_images < 1:
        raise ValueError(f"each split needs at least one image, got train={train_images}, val={val_images}")
    root = Path(root)
    train_rng, val_rng = (np.random.default_rng((seed, split)) for split in (0, 1))
    train = _write_split(root, "train", train_images, train_rng, settings)
    val = _write_split(root, "val", val_images, val_rng, settings)
    return ShapesDataset(*train, *val)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write train/, val/, train.json and val.json into")
    parser.add_argument("--train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--val", type=int, default=50, help="held-out images (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = write_shapes_dataset(args.out, args.train, args.val, args.seed)
    print(f"wrote {data.train_annotations} ({args.train} images) and {data.val_annotations} ({args.val} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
