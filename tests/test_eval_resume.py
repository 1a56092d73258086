"""Evaluation runs (dyhead_zoo.evaluation.evaluate): written as produced, resumed, keyed by their setup."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import random_model
from test_eval_data import SHUFFLED_IDS, SIZES, TEST_INPUT, write_coco

import dyhead_zoo
from dyhead_zoo.data.coco_data import load_coco
from dyhead_zoo.evaluation.evaluate import evaluate
from dyhead_zoo.evaluation.store import read_detections, run_key, run_settings

NAME = "dyhead_r50_atss_fpn_1x"


@pytest.fixture(scope="module")
def model():
    return random_model(NAME, input=dataclasses.replace(dyhead_zoo.get_config(NAME).input, **TEST_INPUT))


class Interrupted(Exception):
    pass


def count_forwards(model, monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count images through ``model``'s forward; raise :class:`Interrupted` once ``stop_after`` are done."""
    seen: list[int] = []
    forward = model.forward

    def counted(images, *args, **kwargs):
        if stop_after is not None and len(seen) >= stop_after:
            raise Interrupted
        seen.extend([0] * images.shape[0])
        return forward(images, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    return seen


def test_interrupted_run_resumes_and_scores_mapped_categories(model, tmp_path, monkeypatch):
    images_dir, annotations = write_coco(tmp_path / "coco", SIZES, category_ids=SHUFFLED_IDS)
    data = load_coco(images_dir, annotations)
    out = tmp_path / "out"

    seen = count_forwards(model, monkeypatch, stop_after=2)
    with pytest.raises(Interrupted):
        evaluate(model, data, out, batch_size=1, progress=False)
    (path,) = out.glob(f"{NAME}-*.rank0.jsonl")
    assert len(read_detections(path)) == 2  # written as they were produced
    with path.open("a") as f:
        f.write('{"image_id": 114, "boxes": [[1.0, 2')  # a writer killed mid-line

    monkeypatch.undo()
    seen = count_forwards(model, monkeypatch)
    result = evaluate(model, data, out, batch_size=1, progress=False)
    assert len(seen) == 2 and result.computed_images == 2 and result.num_images == 4
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines[1:]]  # every line parses: the torn one was cut
    assert sorted(r["image_id"] for r in records) == [im.id for im in data.images]
    assert result.images_per_second > 0

    # The loader path gives what model.predict gives.
    record = next(r for r in records if r["image_id"] == data.images[3].id)
    expected = model.predict(data.images[3].path)
    torch.testing.assert_close(torch.tensor(record["boxes"]), expected.boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.tensor(record["scores"]), expected.scores, rtol=0, atol=1e-6)
    assert record["labels"] == expected.labels.tolist()

    # Ground truth = every detection above the median score, in the file's own category ids:
    # each one is found, ranked above every miss, so AP is exactly 1 only if labels, ids and
    # boxes all travel correctly. The detections are reused: the key ignores the ground truth.
    scores = sorted(s for r in records for s in r["scores"])
    threshold = scores[len(scores) // 2]
    gt = json.loads(annotations.read_text())
    gt["annotations"] = [
        {"id": k + 1, "image_id": image_id, "category_id": SHUFFLED_IDS[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
        for k, (image_id, (x1, y1, x2, y2), label) in enumerate(
            (r["image_id"], box, label) for r in records
            for box, score, label in zip(r["boxes"], r["scores"], r["labels"]) if score > threshold)]
    annotations.write_text(json.dumps(gt))
    seen.clear()
    result = evaluate(model, load_coco(images_dir, annotations), out, progress=False)
    assert seen == [] and result.computed_images == 0
    assert result.metrics["AP"] == pytest.approx(100.0)
    assert result.images_per_second is not None  # remembered from the run that computed them
    saved = json.loads(result.metrics_file.read_text())
    assert saved["metrics_percent"]["AP"] == pytest.approx(100.0) and saved["num_images"] == 4


def test_limit_scores_only_the_first_images(model, tmp_path):
    images_dir, annotations = write_coco(tmp_path / "coco", SIZES)
    data = load_coco(images_dir, annotations)
    result = evaluate(model, data, tmp_path / "out", limit=1, progress=False)
    assert result.num_images == 1 and result.computed_images == 1
    (path,) = (tmp_path / "out").glob("*.jsonl")
    assert list(read_detections(path)) == [data.images[0].id]


def test_a_changed_setup_gets_another_key(model, tmp_path):
    images_dir, annotations = write_coco(tmp_path / "coco", SIZES[:2])
    data = load_coco(images_dir, annotations)
    key = run_key(run_settings(model, data))
    assert run_key(run_settings(model, data)) == key
    bigger = random_model(NAME, input=dataclasses.replace(model.config.input, min_size=128))
    assert run_key(run_settings(bigger, data)) != key
    with torch.no_grad():
        bigger.load_state_dict(model.state_dict())
        bigger.config = model.config
        assert run_key(run_settings(bigger, data)) == key
        bigger.head.bbox_pred.bias[0] += 1e-3
    assert run_key(run_settings(bigger, data)) != key
    other_images, other_annotations = write_coco(tmp_path / "other", SIZES[:3])
    assert run_key(run_settings(model, load_coco(other_images, other_annotations))) != key


def test_read_detections_skips_broken_lines_and_other_keys(tmp_path):
    path = tmp_path / "d.jsonl"
    good = {"image_id": 3, "boxes": [[0.0, 0.0, 1.0, 1.0]], "scores": [0.5], "labels": [2]}
    path.write_text(json.dumps({"key": "abc"}) + "\n" + json.dumps(good) + "\n" + "{broken\n"
                    + json.dumps(dict(good, image_id=4)) + "\n" + '{"image_id": 5, "bo')
    assert sorted(read_detections(path, "abc")) == [3, 4]
    assert read_detections(path, "other") == {}


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_every_variant_evaluates(name, tmp_path):
    images_dir, annotations = write_coco(tmp_path / "coco", SIZES[:1])
    model = random_model(name, input=dataclasses.replace(dyhead_zoo.get_config(name).input, **TEST_INPUT))
    result = evaluate(model, load_coco(images_dir, annotations), tmp_path / "out", progress=False)
    assert result.model == name and result.num_images == 1 and result.computed_images == 1
    (path,) = (tmp_path / "out").glob(f"{name}-*.rank0.jsonl")
    (record,) = read_detections(path).values()
    assert len(record["scores"]) > 0
