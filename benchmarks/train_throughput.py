"""Training throughput through the trainer: images per second per variant, official sizes.

    python -m benchmarks.train_throughput [--models NAME ...] [--iters 3] [--warmup 1]
                                          [--batch-size 2] [--device cpu] [--threads N]
                                          [--amp bf16] [--out benchmarks/results]

Each variant trains on a small synthetic COCO-format set (640x480 photos of boxes, so the
official resize gives 800x1066 batches; Swin-T draws 640..800) with its official recipe, from
its official initialisation (no download needed): data loading, forward, backward and the
optimizer step, as ``dyhead-zoo train`` runs them. The first ``--warmup`` iterations are not
timed. Results go to ``train-throughput-<device>.json`` and ``.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dyhead_zoo
from dyhead_zoo.data.augmentation import TrainAugmentation
from dyhead_zoo.data.train_dataset import load_train_dataset
from dyhead_zoo.data.train_loader import build_train_loader
from dyhead_zoo.engine.from_scratch import official_init
from dyhead_zoo.engine.recipe import run_recipe
from dyhead_zoo.engine.trainer import Trainer

from .dcn import RESULTS, environment


def write_photos(root: Path, count: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """``count`` 480x640 images with three boxes each and their COCO-format annotations."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        for _ in range(3):
            w, h = (int(v) for v in rng.integers(40, 200, 2))
            x, y = int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(root / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 480, "width": 640})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "box"}]}))
    return root / "images", path


def measure(name: str, data: tuple[Path, Path], iters: int, warmup: int, batch_size: int, device: torch.device,
            amp: str | None, work: Path) -> dict:
    """Seconds per timed iteration and images per second of one variant."""
    dataset = load_train_dataset(*data)
    config = dataclasses.replace(dyhead_zoo.get_config(name), num_classes=1, class_names=dataset.class_names)
    torch.manual_seed(0)
    model = dyhead_zoo.create_model(name, config=config)
    official_init(model)
    recipe = run_recipe(name, batch_size=batch_size, max_iter=warmup + iters)
    augmentation = TrainAugmentation(recipe.min_size_train, recipe.max_size_train)
    loader = build_train_loader(dataset, config.input, augmentation, batch_size)
    trainer = Trainer(model, recipe, loader, work / name, device=device, amp=amp, progress=False)
    batches = iter(loader)
    times, cpu_times = [], []
    for it in range(warmup + iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.step(*trainer._to_device(next(batches)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if it >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    seconds = float(np.median(times))
    # On a shared machine the wall time depends on the other jobs; the process CPU time of a
    # 1-thread run is what the iteration costs alone.
    return {"model": name, "batch_size": batch_size, "seconds_per_iteration": seconds,
            "images_per_second": batch_size / seconds, "cpu_seconds_per_iteration": float(np.median(cpu_times)),
            "iterations_timed": iters}


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"Training throughput ({env['device']}, {env['threads']} threads, torch {env['torch']}, "
             f"amp {record['amp'] or 'off'}; official sizes; median of {record['rows'][0]['iterations_timed']} "
             "iterations after warm-up)", "",
             "| variant | batch | s / iteration | images / s | CPU s / iteration |", "|---|---:|---:|---:|---:|"]
    for row in record["rows"]:
        lines.append(f"| {row['model']} | {row['batch_size']} | {row['seconds_per_iteration']:.2f} | "
                     f"{row['images_per_second']:.3f} | {row['cpu_seconds_per_iteration']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=dyhead_zoo.list_models())
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--amp", choices=["bf16", "fp16"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_photos(Path(tmp) / "data")
        for name in args.models:
            row = measure(name, data, args.iters, args.warmup, args.batch_size, device, args.amp, Path(tmp))
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    record = {"environment": environment(device, args.threads), "amp": args.amp, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"train-throughput-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
