"""COCO-format datasets (dyhead_zoo.data.coco_data): checks before model work, loader, categories.

``write_coco`` here also builds the tiny datasets of the other test_eval_* files.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dyhead_zoo
from dyhead_zoo.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from dyhead_zoo.cli import main as cli
from dyhead_zoo.config import InputConfig
from dyhead_zoo.data.coco_data import (
    CocoImage,
    batch_shape,
    category_mapping,
    check_image_files,
    coco_paths,
    load_coco,
    make_loader,
    shape_batches,
)

SHUFFLED_IDS = tuple(1000 + 3 * (79 - i) for i in range(80))  # other ids, other order: mapped by name


def write_coco(root: Path, sizes: list[tuple[int, int]], category_ids=COCO_CATEGORY_IDS, seed: int = 0,
               boxes_per_image: int = 3) -> tuple[Path, Path]:
    """Write ``root/val2017/*.jpg`` (sizes as (h, w)) and ``root/annotations/instances_val2017.json``
    with random large boxes; return (images folder, annotation file)."""
    rng = np.random.default_rng(seed)
    images_dir, annotations = coco_paths(root)
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations.parent.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for index, (h, w) in enumerate(sizes):
        image_id = 100 + 7 * index
        name = f"{image_id:012d}.jpg"
        # Smooth blobs rather than noise, so the JPEG stays small and the picture has structure.
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([127 + 120 * np.sin(xx / (5 + 3 * c + index) + yy / (7 + c)) for c in range(3)], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(images_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for _ in range(boxes_per_image):
            bw, bh = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.choice(category_ids[:5])),
                         "bbox": [float(x), float(y), float(bw), float(bh)], "area": float(bw * bh), "iscrowd": 0})
    categories = [{"id": cid, "name": name, "supercategory": "thing"}
                  for cid, name in sorted(zip(category_ids, COCO_CLASS_NAMES))]
    annotations.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return images_dir, annotations


SIZES = [(120, 160), (96, 128), (160, 120), (100, 150)]
TEST_INPUT = dict(min_size=96, max_size=128)


def test_load_coco_reads_images_and_categories(tmp_path):
    images_dir, annotations = write_coco(tmp_path, SIZES)
    data = load_coco(images_dir, annotations)
    assert [im.id for im in data.images] == [100, 107, 114, 121]
    assert [(im.height, im.width) for im in data.images] == SIZES
    assert data.category_ids == COCO_CATEGORY_IDS
    assert [im.id for im in data.first(2)] == [100, 107]
    check_image_files(data.first(None))


def test_categories_are_mapped_by_name():
    categories = [{"id": cid, "name": name} for cid, name in zip(SHUFFLED_IDS, COCO_CLASS_NAMES)][::-1]
    assert category_mapping(categories) == SHUFFLED_IDS
    renamed = [{"id": 1, "name": "Person"}, {"id": 2, "name": "traffic_light"}, {"id": 3, "name": "dining-table"}]
    ids = category_mapping(renamed)
    assert (ids[0], ids[COCO_CLASS_NAMES.index("traffic light")], ids[COCO_CLASS_NAMES.index("dining table")]) \
        == (1, 2, 3)
    assert sum(i is not None for i in ids) == 3


def test_categories_the_model_lacks_warn_and_no_overlap_fails():
    with pytest.warns(UserWarning, match="unicorn"):
        category_mapping([{"id": 1, "name": "person"}, {"id": 2, "name": "unicorn"}])
    with pytest.raises(ValueError, match="share no name"):
        category_mapping([{"id": 1, "name": "unicorn"}])


def _edit_annotations(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change,error,match", [
    (lambda d: d.pop("annotations"), ValueError, "no 'annotations' list"),
    (lambda d: d["images"][0].pop("file_name"), ValueError, r"images\[0\] has no 'file_name'"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), ValueError, r"annotations\[1\]\['bbox'\]"),
    (lambda d: d["annotations"][0].pop("area"), ValueError, "has no 'area'"),
    (lambda d: d["annotations"][0].update(image_id=5), ValueError, "unknown image"),
    (lambda d: d["images"].append(dict(d["images"][0])), ValueError, "not unique"),
])
def test_malformed_annotation_files_are_named(tmp_path, change, error, match):
    images_dir, annotations = write_coco(tmp_path, SIZES[:2])
    _edit_annotations(annotations, change)
    with pytest.raises(error, match=match):
        load_coco(images_dir, annotations)


def test_missing_and_unreadable_files_are_named(tmp_path):
    images_dir, annotations = write_coco(tmp_path, SIZES)
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        load_coco(images_dir, tmp_path / "annotations" / "nope.json")
    with pytest.raises(FileNotFoundError, match="val2017.zip"):
        load_coco(tmp_path / "nope", annotations)
    text = annotations.read_text()
    annotations.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(images_dir, annotations)
    annotations.write_text(text)
    data = load_coco(images_dir, annotations)
    (images_dir / "000000000107.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 4 image files are missing"):
        check_image_files(data.images)
    (images_dir / "000000000107.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="000000000107.jpg: not a readable image"):
        check_image_files(data.images)
    Image.new("RGB", (50, 40)).save(images_dir / "000000000107.jpg")
    with pytest.raises(ValueError, match="image is 50x40 but the annotation file says 128x96"):
        check_image_files(data.images)


def test_cli_stops_on_a_bad_dataset_before_building_the_model(tmp_path, monkeypatch, capsys):
    images_dir, annotations = write_coco(tmp_path, SIZES)
    (images_dir / "000000000114.jpg").unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(dyhead_zoo.registry, "create_model", no_model)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"unused")
    argv = ["eval", "--model", "dyhead_r50_atss_fpn_1x", "--weights", str(weights), "--no-progress"]
    assert cli.main(argv + ["--coco-root", str(tmp_path)]) == 2
    assert "000000000114.jpg" in capsys.readouterr().err
    assert cli.main(argv + ["--coco-root", str(tmp_path / "elsewhere")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    assert cli.main(argv) == 2
    assert "--coco-root DIR" in capsys.readouterr().err


def test_loader_gives_what_model_preprocess_gives(tmp_path):
    images_dir, annotations = write_coco(tmp_path, SIZES)
    data = load_coco(images_dir, annotations)
    config = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x")
    config = dataclasses.replace(config, input=dataclasses.replace(config.input, **TEST_INPUT))
    model = dyhead_zoo.DyHeadDetector(config)
    expected = dict(zip([im.id for im in data.images], model.preprocess([im.path for im in data.images])))
    seen = []
    for batch in make_loader(data.images, config.input, batch_size=3, workers=1):
        assert len({batch_shape(next(im for im in data.images if im.id == i), config.input)
                    for i, _, _ in batch}) == 1
        for image_id, tensor, size in batch:
            assert tensor.dtype == torch.uint8
            torch.testing.assert_close(tensor.float(), expected[image_id][0], rtol=0, atol=0)
            assert size == tuple(expected[image_id][1])
            seen.append(image_id)
    assert sorted(seen) == [im.id for im in data.images]


def test_batches_share_one_padded_shape():
    config = InputConfig("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), min_size=64, max_size=100, size_divisibility=32)
    sizes = [(64, 64), (64, 96), (96, 64), (64, 64), (64, 64), (64, 100), (64, 96)]
    images = [CocoImage(i, Path(f"{i}.jpg"), h, w) for i, (h, w) in enumerate(sizes)]
    batches = shape_batches(images, config, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(images)))
    for batch in batches:
        assert len(batch) <= 2
        assert len({batch_shape(images[i], config) for i in batch}) == 1
    assert [len(b) for b in batches] == [2, 1, 2, 1, 1]
    assert shape_batches(images, config, batch_size=2) == batches  # deterministic
    with pytest.raises(ValueError, match="batch-size"):
        shape_batches(images, config, batch_size=0)
