"""Detections: selection, conversions (dict, NumPy, COCO), drawing, and predict's filters and tensor input."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import load_case, parity_cases, random_model
from PIL import Image

import dyhead_zoo
from dyhead_zoo.draw import class_colour
from dyhead_zoo.models.detections import category_ids_for, class_indices, select


def sample() -> dyhead_zoo.Detections:
    return dyhead_zoo.Detections(
        boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0], [5.0, 5.0, 25.0, 15.0], [30.0, 0.0, 70.0, 40.0]]),
        scores=torch.tensor([0.9, 0.5, 0.2]), labels=torch.tensor([0, 11, 16]),
        label_names=["person", "stop sign", "dog"])


def test_boolean_mask_index_slice_and_int_selection():
    det = sample()
    high = det[det.scores > 0.4]
    assert high.label_names == ["person", "stop sign"] and torch.equal(high.labels, torch.tensor([0, 11]))
    picked = det[torch.tensor([2, 0])]
    assert picked.label_names == ["dog", "person"] and torch.equal(picked.boxes[0], det.boxes[2])
    assert det[1:].label_names == ["stop sign", "dog"]
    assert det[-1].label_names == ["dog"] and len(det[0]) == 1
    assert det[[True, False, True]].label_names == ["person", "dog"]
    assert len(det[det.scores > 2]) == 0


def test_selection_rejects_masks_of_the_wrong_length_and_float_indices():
    det = sample()
    with pytest.raises(ValueError, match="boolean mask"):
        det[torch.tensor([True, False])]
    with pytest.raises(TypeError, match="integer indices"):
        det[torch.tensor([0.5])]


def test_to_dict_is_json_ready_and_numpy_has_the_documented_dtypes():
    det = sample()
    data = json.loads(json.dumps(det.to_dict()))
    assert data["label_names"] == det.label_names and data["labels"] == [0, 11, 16]
    np.testing.assert_allclose(data["boxes"], det.boxes.numpy())
    arrays = det.numpy()
    assert arrays["boxes"].dtype == np.float32 and arrays["boxes"].shape == (3, 4)
    assert arrays["labels"].dtype == np.int64 and list(arrays["label_names"]) == det.label_names


def test_to_coco_uses_real_category_ids_and_xywh_boxes():
    records = sample().to_coco(42)
    assert [r["category_id"] for r in records] == [1, 13, 18]  # person, stop sign (ids skip 12), dog
    assert records[0] == {"image_id": 42, "category_id": 1, "bbox": [10.0, 20.0, 40.0, 40.0],
                          "score": pytest.approx(0.9)}
    assert [r["category_id"] for r in sample().to_coco(1, category_ids=range(100, 200))] == [100, 111, 116]
    with pytest.raises(ValueError, match="category_ids"):
        sample().to_coco(1, category_ids=[1, 2])


def test_category_ids_for_custom_classes_are_one_based():
    assert category_ids_for(dyhead_zoo.COCO_CLASS_NAMES) == dyhead_zoo.COCO_CATEGORY_IDS
    assert category_ids_for(["cat", "dog"]) == (1, 2)


def test_class_indices_accept_names_and_ids_and_explain_mistakes():
    names = dyhead_zoo.COCO_CLASS_NAMES
    assert class_indices(["dog", 0, "2", "traffic light"], names) == [16, 0, 2, 9]
    with pytest.raises(ValueError, match="unknown class 'dgo'"):
        class_indices(["dgo"], names)
    with pytest.raises(ValueError, match="out of range"):
        class_indices([80], names)


def test_draw_keeps_the_size_and_colours_the_boxes_above_the_threshold():
    image = np.full((80, 100, 3), 255, dtype=np.uint8)
    drawn = dyhead_zoo.draw(image, sample(), score_threshold=0.3)
    assert isinstance(drawn, Image.Image) and drawn.size == (100, 80) and drawn.mode == "RGB"
    pixels = np.asarray(drawn)
    assert tuple(pixels[59, 30]) == class_colour(0)  # bottom edge of the person box (below its label)
    assert tuple(pixels[40, 65]) == (255, 255, 255)  # the dog box's bottom edge (score 0.2) is not drawn
    assert np.array_equal(np.asarray(dyhead_zoo.draw(image, sample()[:0])), image)


def test_draw_applies_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.new("RGB", (60, 40), (255, 255, 255)).save(path, exif=exif)
    drawn = dyhead_zoo.draw(path, sample(), score_threshold=0.0)
    assert drawn.size == (40, 60)


def test_class_colours_differ_between_neighbouring_ids():
    colours = [class_colour(i) for i in range(80)]
    assert all(a != b for a, b in zip(colours, colours[1:]))


@pytest.fixture(scope="module")
def small_atss():
    config = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x")
    return random_model("dyhead_r50_atss_fpn_1x", input=dataclasses.replace(config.input, min_size=96, max_size=160))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_case(parity_cases()[1][1])["image_rgb"]


def test_predict_filters_equal_selecting_from_the_full_detections(small_atss, photo):
    full = small_atss.predict(photo)
    assert len(full) > 0
    threshold = float(full.scores.median())
    label = int(full.labels[0])
    filtered = small_atss.predict(photo, score_threshold=threshold, classes=[small_atss.class_names[label]])
    expected = select(full, threshold, [label])
    assert 0 < len(filtered) < len(full)
    assert torch.equal(filtered.labels, expected.labels) and torch.allclose(filtered.boxes, expected.boxes)
    assert (filtered.scores >= threshold).all() and (filtered.labels == label).all()


def test_predict_accepts_chw_uint8_tensors(small_atss, photo):
    from_array = small_atss.predict(photo)
    tensor = torch.from_numpy(np.ascontiguousarray(photo.transpose(2, 0, 1)))
    from_tensor = small_atss.predict(tensor)
    assert torch.equal(from_tensor.boxes, from_array.boxes) and from_tensor.label_names == from_array.label_names
    batch = small_atss.predict(torch.stack([tensor, tensor]))
    assert len(batch) == 2 and batch[1].label_names == from_array.label_names
    torch.testing.assert_close(batch[1].scores, from_array.scores, atol=1e-5, rtol=0)  # batched GEMMs round apart
    with pytest.raises(ValueError, match="uint8"):
        small_atss.predict(tensor.float())
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        dyhead_zoo.load_image(tensor[:2])
