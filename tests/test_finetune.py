"""The short version of ``python -m benchmarks.finetune``: a dozen iterations on the shapes set lower the loss."""
from __future__ import annotations

import json
import statistics

import numpy as np
from PIL import Image

import dyhead_zoo
from benchmarks.finetune import FinetuneSettings, run_finetune
from benchmarks.shapes_dataset import write_shapes_dataset


def test_shapes_dataset_is_seeded_and_its_boxes_are_the_drawn_shapes(tmp_path):
    first = write_shapes_dataset(tmp_path / "a", train_images=3, val_images=2, seed=4)
    again = write_shapes_dataset(tmp_path / "b", train_images=3, val_images=2, seed=4)
    assert first.train_annotations.read_text() == again.train_annotations.read_text()
    assert (first.val_images / "00001.png").read_bytes() == (again.val_images / "00001.png").read_bytes()
    data = json.loads(first.train_annotations.read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle"]
    assert data["annotations"] and json.loads(first.val_annotations.read_text())["annotations"]
    for ann in data["annotations"]:
        image = data["images"][ann["image_id"] - 1]
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        if ann["category_id"] == 2:   # a square is one flat colour filling its box exactly
            pixels = np.asarray(Image.open(first.train_images / image["file_name"]))[y:y + h, x:x + w]
            assert w == h and (pixels == pixels[0, 0]).all()


def test_a_dozen_iterations_lower_the_loss_and_save_a_loadable_model(tmp_path):
    settings = FinetuneSettings(iters=12, batch_size=2, size=64, max_size=96, optimizer="adamw", lr=2e-4, warmup=0,
                                train_images=4, val_images=1, workers=0)
    record = run_finetune(settings, tmp_path, progress=False, log_period=1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["total_loss"] for row in rows if "total_loss" in row]
    assert len(losses) == 12 and record["iterations"] == 12
    assert statistics.mean(losses[-3:]) < 0.9 * statistics.mean(losses[:3]), losses
    assert 0.0 <= record["ap50_before"] <= 100.0 and 0.0 <= record["ap50_after"] <= 100.0
    model = dyhead_zoo.DyHeadDetector.from_pretrained(record["final_model"])
    assert model.class_names == ("circle", "square", "triangle")
