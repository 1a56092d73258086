"""Training data: checked COCO-format sets, detectron2 augmentation, the resumable sharded sampler, the loader."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dyhead_zoo
from dyhead_zoo.data.augmentation import TrainAugmentation, augment
from dyhead_zoo.data.batch_sampler import AspectRatioBatchSampler, aspect_groups
from dyhead_zoo.data.preprocess import normalize_and_pad, resized_shape, to_channel_order
from dyhead_zoo.data.train_dataset import load_train_dataset
from dyhead_zoo.data.train_loader import build_train_loader

INPUT = dataclasses.replace(dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x").input, size_divisibility=32)
SMALL = TrainAugmentation(min_sizes=(48, 64), max_size=120)


def write_set(root: Path, sizes: list[tuple[int, int]], annotations: list[dict], categories: list[dict] | None = None,
              seed: int = 0) -> tuple[Path, Path]:
    """Random-noise PNGs of the given (h, w) and an instances file; image ids are 1, 2, ..."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for number, (h, w) in enumerate(sizes, start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images_dir / f"{number}.png")
        images.append({"id": number, "file_name": f"{number}.png", "height": h, "width": w})
    for number, ann in enumerate(annotations, start=1):
        ann.setdefault("id", number)
    if categories is None:
        categories = [{"id": 5, "name": "circle"}, {"id": 2, "name": "square"}]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, path


def box(image_id: int, bbox: list[float], category_id: int = 2, **extra) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def varied_set(root: Path, count: int = 7) -> tuple[Path, Path]:
    sizes = [(30 + 7 * i, 50 - 3 * i) if i % 2 else (40 - 2 * i, 30 + 9 * i) for i in range(count)]
    anns = [box(i + 1, [2.0 + i, 3.0, 10.0, 8.0 + i], 2 if i % 3 else 5) for i in range(count)]
    return write_set(root, sizes, anns)


def test_labels_boxes_crowd_and_skipped_images(tmp_path):
    images_dir, path = write_set(tmp_path, [(40, 60), (50, 30), (20, 20)], [
        box(1, [1, 2, 10, 20], 5),
        box(1, [3.5, 4, 5, 6], 2),
        box(2, [0, 0, 8, 8], 5, iscrowd=1),   # image 2 has only a crowd box: skipped
        box(3, [1, 1, 4, 4], 2),
    ])
    data = load_train_dataset(images_dir, path)
    assert data.class_names == ("square", "circle") and data.category_ids == (2, 5)
    assert [im.id for im in data.images] == [1, 3] and data.skipped_images == 1
    np.testing.assert_array_equal(data.images[0].boxes, np.array([[1, 2, 11, 22], [3.5, 4, 8.5, 10]], np.float32))
    np.testing.assert_array_equal(data.images[0].labels, [1, 0])
    assert data.images[0].boxes.dtype == np.float32 and data.images[0].labels.dtype == np.int64


def test_invalid_boxes_dropped_with_warning_or_refused_when_strict(tmp_path):
    images_dir, path = write_set(tmp_path, [(40, 60)], [
        box(1, [1, 2, 10, 20]),
        box(1, [1, 2, 0, 20]),        # zero width
        box(1, [1, 2, 5, -3]),        # negative height
        box(1, [70, 2, 5, 5]),        # wholly right of the 60-pixel-wide image
        box(1, [55, 35, 10, 10]),     # reaches past the border: kept, clipped later
    ])
    with pytest.warns(UserWarning, match=r"3 of 5 boxes cannot be trained on \(2 non-positive size, 1 outside"):
        data = load_train_dataset(images_dir, path)
    assert data.dropped_boxes == 3 and len(data.images[0].boxes) == 2
    with pytest.raises(ValueError, match=r"3 of 5 boxes .*without --strict"):
        load_train_dataset(images_dir, path, strict=True)


@pytest.mark.parametrize("change, error, message", [
    (lambda d: d["annotations"][0].update(category_id=9), ValueError, r"category ids \[9\] that are not in"),
    (lambda d: d["annotations"][0].update(image_id=42), ValueError, r"image ids \[42\]"),
    (lambda d: d["images"][0].update(file_name="gone.png"), FileNotFoundError, r"1 of 1 training image files are missing"),
    (lambda d: d.update(annotations=[]), ValueError, "no image has a usable"),
    (lambda d: d["annotations"][0].update(iscrowd=1), ValueError, "no image has a usable"),
    (lambda d: d.update(categories=[]), ValueError, "'categories' is empty"),
    (lambda d: d["annotations"][0].pop("bbox"), ValueError, r"annotations\[0\] has no 'bbox'"),
    (lambda d: d.pop("images"), ValueError, "no 'images' list"),
])
def test_bad_sets_fail_naming_the_problem(tmp_path, change, error, message):
    images_dir, path = write_set(tmp_path, [(40, 60)], [box(1, [1, 2, 10, 20])])
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(error, match=message):
        load_train_dataset(images_dir, path)


def test_missing_paths_and_broken_json(tmp_path):
    images_dir, path = write_set(tmp_path, [(40, 60)], [box(1, [1, 2, 10, 20])])
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_train_dataset(images_dir, tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_train_dataset(tmp_path / "nope", path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_train_dataset(images_dir, path)


def _painted(height: int, width: int, boxes: np.ndarray) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
    return image


def _extent(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("seed", range(6))
def test_boxes_follow_the_resized_and_flipped_image(seed):
    boxes = np.array([[10, 8, 30, 20], [44, 2, 60, 38]], np.float32)
    image = _painted(40, 60, boxes[:1])
    augmentation = TrainAugmentation(min_sizes=(80, 120), max_size=200, flip_prob=0.5)
    out, out_boxes, keep = augment(image, boxes, augmentation, INPUT, np.random.default_rng(seed))
    h, w = out.shape[:2]
    assert (h, w) in {resized_shape(40, 60, s, 200) for s in (80, 120)}
    np.testing.assert_array_equal(keep, [0, 1])
    # the painted square's pixels land where the first box went (bilinear blur: one pixel)
    np.testing.assert_allclose(_extent(out[:, :, 0] > 127), out_boxes[0], atol=1.0)
    # the second box touches the right border: it stays at the border after a flip or not
    assert out_boxes[1, 0] == 0 or out_boxes[1, 2] == w


def test_augmentation_draws_every_size_and_both_flips_and_clips():
    boxes = np.array([[50, 0, 70, 10], [60, 5, 64, 6]], np.float32)   # past the border; empty once clipped
    seen = set()
    for seed in range(40):
        out, out_boxes, keep = augment(_painted(40, 60, boxes[:0]), boxes, SMALL, INPUT, np.random.default_rng(seed))
        flipped = out_boxes[0, 0] == 0
        seen.add((out.shape[0], flipped))
        assert out_boxes[0, 2] <= out.shape[1] and out_boxes[0, 0] >= 0
        np.testing.assert_array_equal(keep, [0])   # the clipped, empty box is filtered as detectron2 does
    assert seen == {(48, False), (48, True), (64, False), (64, True)}


def test_sampler_groups_aspect_ratios_and_resumes():
    groups = aspect_groups([(10, 20), (20, 10), (10, 10), (5, 30), (30, 5), (8, 9), (9, 8)])
    assert groups == [0, 1, 1, 0, 1, 0, 1]
    straight = AspectRatioBatchSampler(groups, batch_size=2, seed=3)
    batches = [straight.next_global_batch() for _ in range(12)]
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    counts = np.bincount([i for b in batches for i in b], minlength=7)
    assert counts.min() >= 2   # 24 draws over 3+ epochs: every image comes round
    resumed = AspectRatioBatchSampler(groups, batch_size=2, seed=3)
    half = AspectRatioBatchSampler(groups, batch_size=2, seed=3)
    for _ in range(5):
        half.next_global_batch()
    resumed.load_state_dict(json.loads(json.dumps(half.state_dict())))
    assert [resumed.next_global_batch() for _ in range(7)] == batches[5:]
    other = AspectRatioBatchSampler(groups, batch_size=2, seed=4)
    assert [other.next_global_batch() for _ in range(12)] != batches

def test_sampler_shards_every_global_batch_across_ranks():
    groups = [0, 1] * 10
    whole = AspectRatioBatchSampler(groups, batch_size=4, seed=1)
    ranks = [AspectRatioBatchSampler(groups, batch_size=4, seed=1, rank=r, world_size=2) for r in range(2)]
    for iteration in range(6):
        parts = [s.next_batch() for s in ranks]
        assert [k.iteration for p in parts for k in p] == [iteration] * 4
        assert [k.slot for p in parts for k in p] == [0, 1, 2, 3]
        assert [k.index for p in parts for k in p] == whole.next_global_batch()
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        AspectRatioBatchSampler(groups, batch_size=3, world_size=2)
    with pytest.raises(ValueError, match="same training set, --batch-size and seed"):
        AspectRatioBatchSampler(groups, batch_size=2).load_state_dict(whole.state_dict())


def _take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (images_a, sizes_a, targets_a), (images_b, sizes_b, targets_b) in zip(a, b):
        assert sizes_a == sizes_b
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
        for ta, tb in zip(targets_a, targets_b):
            torch.testing.assert_close(ta["boxes"], tb["boxes"], rtol=0, atol=0)
            torch.testing.assert_close(ta["labels"], tb["labels"], rtol=0, atol=0)


def test_loader_batches_are_model_ready(tmp_path):
    data = load_train_dataset(*varied_set(tmp_path))
    (images, sizes, targets), = _take(build_train_loader(data, INPUT, SMALL, 2, seed=5), 1)
    assert images.dtype == torch.float32 and images.shape[0] == 2 and len(sizes) == len(targets) == 2
    assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0
    for image, (h, w), target in zip(images, sizes, targets):
        assert min(h, w) in SMALL.min_sizes or max(h, w) == SMALL.max_size
        assert not image[:, h:, :].any() and not image[:, :, w:].any()   # zero padding
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["boxes"].shape == (len(target["labels"]), 4)
        assert (target["boxes"][:, 2:] <= torch.tensor([w, h])).all() and (target["boxes"] >= 0).all()
    # the first image by hand: its key, the decoded PNG augmented with its own generator, BGR, minus the mean
    key = AspectRatioBatchSampler(aspect_groups([(im.height, im.width) for im in data.images]), 2, seed=5).next_batch()[0]
    item = data.images[key.index]
    rgb = np.asarray(Image.open(item.path).convert("RGB"))
    expected_rgb, expected_boxes, _ = augment(rgb, item.boxes, SMALL, INPUT,
                                              np.random.default_rng((5, key.iteration, key.slot, key.index)))
    expected, _ = normalize_and_pad([to_channel_order(expected_rgb, INPUT).float()], INPUT)
    h, w = sizes[0]
    torch.testing.assert_close(images[0, :, :h, :w], expected[0, :, :h, :w], rtol=0, atol=0)
    assert INPUT.format == "BGR" and not torch.equal(images[0, 0, :h, :w], images[0, 2, :h, :w])
    torch.testing.assert_close(targets[0]["boxes"], torch.from_numpy(expected_boxes))

def test_loader_is_the_same_for_any_worker_count_resume_and_rank_split(tmp_path):
    data = load_train_dataset(*varied_set(tmp_path))
    straight = _take(build_train_loader(data, INPUT, SMALL, 2, seed=7), 5)
    _assert_same_batches(straight, _take(build_train_loader(data, INPUT, SMALL, 2, seed=7, workers=2), 5))

    first = build_train_loader(data, INPUT, SMALL, 2, seed=7, workers=2)
    _assert_same_batches(straight[:3], _take(first, 3))   # workers prefetch beyond batch 3
    assert first.iteration == 3
    resumed = build_train_loader(data, INPUT, SMALL, 2, seed=7)
    resumed.load_state_dict(first.state_dict())
    _assert_same_batches(straight[3:], _take(resumed, 2))

    halves = [_take(build_train_loader(data, INPUT, SMALL, 2, seed=7, rank=r, world_size=2), 5) for r in range(2)]
    for batch, part0, part1 in zip(straight, *halves):
        assert batch[1] == part0[1] + part1[1]
        for target, part_target in zip(batch[2], part0[2] + part1[2]):
            torch.testing.assert_close(target["boxes"], part_target["boxes"], rtol=0, atol=0)
        for image, (h, w), part in zip(batch[0], batch[1], (part0[0][0], part1[0][0])):
            torch.testing.assert_close(image[:, :h, :w], part[:, :h, :w], rtol=0, atol=0)
    with pytest.raises(ValueError, match="same seed"):
        build_train_loader(data, INPUT, SMALL, 2, seed=8).load_state_dict(first.state_dict())
