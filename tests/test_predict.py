"""model.predict: the official test-time pipeline around the network."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import load_case, parity_cases, random_model
from PIL import Image

import dyhead_zoo
from dyhead_zoo.data.preprocess import normalize_and_pad, resized_shape


@pytest.mark.parametrize("hw,expected", [
    ((480, 640), (800, 1067)),
    ((512, 512), (800, 800)),
    ((400, 600), (800, 1200)),
    ((640, 427), (1199, 800)),
    ((100, 1000), (133, 1333)),
])
def test_resized_shape_follows_resize_shortest_edge(hw, expected):
    assert resized_shape(*hw, 800, 1333) == expected


@pytest.mark.parametrize("name,path", parity_cases()[::2], ids=lambda v: getattr(v, "stem", v))
def test_resized_size_matches_the_official_run(name, path):
    case = load_case(path)
    h, w = case["image_rgb"].shape[:2]
    config = dyhead_zoo.get_config(name).input
    assert resized_shape(h, w, config.min_size, config.max_size) == tuple(case["resized_hw"])


def test_padding_is_zero_after_normalisation():
    config = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x").input
    image = torch.full((3, 10, 20), 200.0)
    batch, sizes = normalize_and_pad([image], config)
    assert batch.shape == (1, 3, 128, 128) and sizes == [(10, 20)]
    assert torch.allclose(batch[0, :, :10, :20], (200.0 - torch.tensor(config.pixel_mean)).view(3, 1, 1).expand(3, 10, 20))
    assert batch[0, :, 10:].abs().sum() == 0 and batch[0, :, :, 20:].abs().sum() == 0


def small(name: str) -> dyhead_zoo.DyHeadDetector:
    config = dyhead_zoo.get_config(name)
    return random_model(name, input=dataclasses.replace(config.input, min_size=96, max_size=160))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_case(parity_cases()[1][1])["image_rgb"]


def assert_same(a: dyhead_zoo.Detections, b: dyhead_zoo.Detections) -> None:
    assert len(a) == len(b)
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.labels, b.labels) and a.label_names == b.label_names


def test_input_kinds_give_the_same_detections(tmp_path, photo):
    model = small("dyhead_r50_atss_fpn_1x")
    Image.fromarray(photo).save(tmp_path / "p.png")
    reference = model.predict(photo)
    assert len(reference) > 0
    for source in (tmp_path / "p.png", str(tmp_path / "p.png"), Image.fromarray(photo)):
        assert_same(model.predict(source), reference)
    (listed,) = model.predict([photo])
    assert_same(listed, reference)
    assert model.predict([]) == []


def test_boxes_are_in_original_pixels(photo):
    model = small("dyhead_r50_atss_fpn_1x")
    det = model.predict(photo)
    h, w = photo.shape[:2]
    assert det.boxes[:, 0::2].max() <= w and det.boxes[:, 1::2].max() <= h and det.boxes.min() >= 0
    assert bool(((det.boxes[:, 2] > det.boxes[:, 0]) & (det.boxes[:, 3] > det.boxes[:, 1])).all())
    assert torch.all(det.scores[:-1] >= det.scores[1:])
    assert det.labels.dtype == torch.int64 and det.labels.max() < 80


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_batched_predict_equals_one_at_a_time(name, photo):
    model = small(name)
    crops = [photo, photo[:200, :300], photo[50:, 40:], np.ascontiguousarray(photo[::-1])]
    batched = model.predict(crops)
    for crop, det in zip(crops, batched):
        assert_same(det, model.predict(crop))


def test_channel_order_follows_the_variant(photo):
    bgr_model = small("dyhead_r50_atss_fpn_1x")
    (tensor, _), = bgr_model.preprocess([photo[:8, :8]])
    assert bgr_model.config.input.format == "BGR"
    resized = np.asarray(Image.fromarray(photo[:8, :8]).resize((96, 96), Image.BILINEAR))
    assert torch.equal(tensor, torch.from_numpy(resized[:, :, ::-1].transpose(2, 0, 1).copy()).float())
    rgb_model = small("dyhead_swint_atss_fpn_2x_ms")
    (tensor, _), = rgb_model.preprocess([photo[:8, :8]])
    assert torch.equal(tensor, torch.from_numpy(resized.transpose(2, 0, 1).copy()).float())
