"""Helpers for the trainer tests: a tiny COCO-format set and a small, quick ATSS model."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dyhead_zoo

MODEL = "dyhead_r50_atss_fpn_1x"
CLASS_NAMES = ("red box", "green box")
CATEGORY_IDS = (3, 7)  # not contiguous and not COCO's: labels must come from the file
SIZES = ((96, 128), (128, 96), (96, 128), (112, 128))


def small_config(blocks: int = 1) -> dyhead_zoo.ModelConfig:
    """The ATSS R50 variant with ``blocks`` DyHead blocks (6 officially): the trainer logic
    under test does not depend on the depth, and one block trains several times faster."""
    return dataclasses.replace(dyhead_zoo.get_config(MODEL), dyhead_num_blocks=blocks)


def write_coco(root: Path, num_images: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """Images of bright rectangles (class = colour channel) on dark noise, and their
    COCO-format annotations with categories ``CLASS_NAMES`` (ids ``CATEGORY_IDS``)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        h, w = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(2):
            bw, bh = (int(v) for v in rng.integers(16, 40, 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            label = int(rng.integers(0, 2))
            pixels[y:y + bh, x:x + bw, label] = 220
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[label],
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        Image.fromarray(pixels).save(images_dir / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
    categories = [{"id": cid, "name": name} for cid, name in zip(CATEGORY_IDS, CLASS_NAMES)]
    annotation_file = root / "annotations.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, annotation_file


def write_start_weights(path: Path, blocks: int = 1, seed: int = 0) -> Path:
    """A COCO-class (80) checkpoint of :func:`small_config`, initialised the official way."""
    from safetensors.torch import save_file

    from dyhead_zoo.engine.from_scratch import official_init

    torch.manual_seed(seed)
    model = dyhead_zoo.create_model(MODEL, config=small_config(blocks))
    official_init(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def quick_train(data: tuple[Path, Path], output_dir: Path, weights: Path, **kwargs):
    """:func:`dyhead_zoo.train` of the small model at 64-pixel images, no progress bar."""
    options = dict(max_iter=3, batch_size=1, device="cpu", min_size=64, max_size=128, progress=False,
                   log_period=1, config=small_config())
    options.update(kwargs)
    return dyhead_zoo.train(dyhead_zoo.TrainSettings(MODEL, data[0], data[1], output_dir, weights=weights, **options))


def distributed_worker(rank: int, world_size: int, port: int, data: tuple[Path, Path], output_dir: Path,
                       weights: Path, max_iter: int) -> None:
    """One process of a ``world_size``-process gloo run (what torchrun would set up)."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    quick_train(data, output_dir, weights, max_iter=max_iter, batch_size=world_size, checkpoint_period=0)
