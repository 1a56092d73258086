"""Issue 9 hardening, model side: half precision, lazy batched predict, strict value checks,
unsafe pickles through every entry point, extreme aspect ratios (items 1, 2, 4, 8, 13)."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch
from conftest import load_case, official_state_dict, parity_cases, random_model
from hub_testing import REPO_ROOT
from safetensors.torch import save_file

import dyhead_zoo
from dyhead_zoo.data.preprocess import normalize_and_pad, resized_shape
from dyhead_zoo.errors import CheckpointError
from dyhead_zoo.weights.checkpoint import UnsafeCheckpointError, conform_state_dict

NAME = "dyhead_r50_atss_fpn_1x"
SMALL_INPUT = dict(min_size=96, max_size=128)


def model_input(name: str):
    return dyhead_zoo.get_config(name).input


def small(name: str = NAME) -> dyhead_zoo.DyHeadDetector:
    return random_model(name, input=dataclasses.replace(model_input(name), **SMALL_INPUT))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph, downscaled so that the test runs at a small input size."""
    return np.ascontiguousarray(load_case(parity_cases()[1][1])["image_rgb"][::3, ::3])


def assert_same(a: dyhead_zoo.Detections, b: dyhead_zoo.Detections) -> None:
    assert len(a) == len(b)
    # Batched convolutions may sum in another order: float32 rounding, not another result.
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.labels, b.labels) and a.label_names == b.label_names


# Item 1: half precision ---------------------------------------------------------------------

# The modules whose outputs are the network's last word before post-processing (box decoding,
# thresholds, NMS, ROI pooling of proposals).
LAST_LAYERS = {"ATSS": ["head"], "RetinaNet": ["head"],
               "GeneralizedRCNN": ["proposal_generator.rpn_head", "roi_heads.box_predictor"]}


def _map(outputs, fn):
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    return type(outputs)(_map(o, fn) for o in outputs)


def _detect_with_rounded_outputs(model, features, sizes, replay=None):
    """Run ``model._detect`` with every last layer's output rounded to bfloat16 (values) and
    handed on in the model's dtype; ``replay`` gives the rounded outputs of an earlier run instead."""
    dtype = next(model.parameters()).dtype
    recorded, handles = [], []
    layers = [model.get_submodule(n) for n in LAST_LAYERS[model.config.meta_architecture]]

    def hook(module, args, output):
        value = replay.pop(0) if replay is not None else _map(output, lambda t: t.to(torch.bfloat16))
        recorded.append(value)
        return _map(value, lambda t: t.to(dtype))

    for layer in layers:
        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model._detect({k: v.to(dtype) for k, v in features.items()}, sizes), recorded
    finally:
        for handle in handles:
            handle.remove()


def assert_close_to_float32(half: dyhead_zoo.Detections, full: dyhead_zoo.Detections) -> None:
    """End-to-end tolerance for a random checkpoint: its DyHead offsets are tens of pixels (the
    FPN outputs are O(50)), so rounding the features moves sampling points and near-tied
    neighbours swap places in NMS; the best detection must survive with a close score."""
    assert len(half) > 0 and half.boxes.dtype == half.scores.dtype == torch.float32
    assert abs(float(half.scores[0]) - float(full.scores[0])) < 0.05
    assert int(half.labels[0]) in full.labels[:5].tolist()


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_every_variant_predicts_in_bfloat16_on_cpu(name, photo):
    """bfloat16 models predict; given the same values, bfloat16 network outputs give exactly the
    float32 detections (scores, box decoding, ROI pooling and NMS run in float32)."""
    model = small(name)
    full = model.predict(photo)
    batch, sizes = normalize_and_pad([model.preprocess([photo])[0][0]], model.config.input)
    with torch.no_grad():
        features = model.backbone(batch)
    expected, rounded = _detect_with_rounded_outputs(model, features, sizes)
    model.to(torch.bfloat16)
    half, _ = _detect_with_rounded_outputs(model, features, sizes, replay=list(rounded))
    for (boxes, scores, labels), (hboxes, hscores, hlabels) in zip(expected, half):
        assert len(scores) > 0 and hboxes.dtype == hscores.dtype == torch.float32
        torch.testing.assert_close(hboxes, boxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(hscores, scores, atol=1e-6, rtol=0)
        assert torch.equal(hlabels, labels)

    detections = model.predict(photo)
    assert_close_to_float32(detections, full)
    h, w = photo.shape[:2]
    assert (detections.boxes[:, 0::2] <= w).all() and (detections.boxes[:, 1::2] <= h).all()
    assert (detections.boxes >= 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_every_variant_predicts_in_half_precision_on_cuda(name, dtype, photo):
    model = small(name).to("cuda")
    full = model.predict(photo)
    half = model.to(dtype).predict(photo)
    assert_close_to_float32(half, full)


# Item 2: lazy decoding, capped batches ------------------------------------------------------

def test_predict_decodes_lazily_in_capped_batches(monkeypatch):
    import dyhead_zoo.models.detector as detector

    model = random_model(NAME, input=dataclasses.replace(model_input(NAME), min_size=96, max_size=160))
    photo = load_case(parity_cases()[1][1])["image_rgb"]
    # The crops of test_predict's batching test, plus one that pads to another size.
    images = [photo, photo[:200, :300], photo[:40], photo[50:, 40:]]
    expected = [model.predict(image) for image in images]
    events: list[tuple[str, int]] = []
    load_image, forward = detector.load_image, model.forward

    def counted_load(image):
        events.append(("load", 1))
        return load_image(image)

    def counted_forward(batch, *args, **kwargs):
        events.append(("forward", batch.shape[0]))
        return forward(batch, *args, **kwargs)

    monkeypatch.setattr(detector, "load_image", counted_load)
    monkeypatch.setattr(model, "forward", counted_forward)
    results = model.predict(images, batch_size=2)
    for got, want in zip(results, expected):
        assert_same(got, want)
    loaded = run = 0
    for kind, count in events:
        loaded += count if kind == "load" else 0
        run += count if kind == "forward" else 0
        assert kind == "load" or count <= 2
        assert loaded - run <= 2  # never more than one batch decoded and waiting
    assert (loaded, run) == (4, 4)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(images, batch_size=0)


# Item 4: dtype kinds and non-finite values --------------------------------------------------

def test_strict_loading_refuses_other_dtype_kinds_and_non_finite_values(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"0\.weight: checkpoint torch\.int32 vs model torch\.float32"):
        conform_state_dict(module, dict(state, **{"0.weight": state["0.weight"].to(torch.int32)}))
    with pytest.raises(CheckpointError, match=r"1\.bias: checkpoint torch\.bool"):
        conform_state_dict(module, dict(state, **{"1.bias": state["1.bias"] > 0}))
    with pytest.raises(CheckpointError, match="num_batches_tracked: checkpoint torch.float32 vs model torch.int64"):
        conform_state_dict(module, dict(state, **{"1.num_batches_tracked": torch.tensor(0.0)}))
    conform_state_dict(module, dict(state, **{"0.weight": state["0.weight"].half()}))  # same kind: cast

    # Through create_model, from a .safetensors file: the first non-finite tensor is named.
    sd = dict(official_state_dict(NAME))
    sd["head.cls_logits.bias"] = sd["head.cls_logits.bias"].clone()
    sd["head.cls_logits.bias"][3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match="'head.cls_logits.bias' holds 1 NaN or infinite") as info:
        dyhead_zoo.create_model(NAME, weights=path)
    assert "allow_non_finite=True" in str(info.value)
    model = dyhead_zoo.create_model(NAME, weights=path, allow_non_finite=True)
    assert torch.isnan(model.head.cls_logits.bias[3])


# Item 8: allow_unsafe_pickle everywhere ------------------------------------------------------

def test_allow_unsafe_pickle_reaches_create_model_and_hub(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": official_state_dict(NAME), "args": argparse.Namespace(lr=0.01)}, path)
    with pytest.raises(UnsafeCheckpointError, match="--allow-unsafe-pickle"):
        dyhead_zoo.create_model(NAME, weights=path)
    model = dyhead_zoo.create_model(NAME, weights=path, allow_unsafe_pickle=True)
    assert all(torch.equal(v, official_state_dict(NAME)[k]) for k, v in model.state_dict().items())
    hub_model = torch.hub.load(str(REPO_ROOT), NAME, source="local", weights=str(path), allow_unsafe_pickle=True)
    assert torch.equal(hub_model.head.cls_logits.bias, model.head.cls_logits.bias)


# Item 13: extreme aspect ratios ---------------------------------------------------------------

def test_extreme_aspect_ratios_resize_to_at_least_one_pixel():
    assert resized_shape(1, 2667, 800, 1333) == (1, 1333)
    assert resized_shape(2000, 1, 320, 1333) == (1333, 1)
    model = small()
    strip = np.full((1, 400, 3), 200, dtype=np.uint8)
    strip[:, 150:250] = 30
    det = model.predict(strip)
    assert det.boxes.shape[1] == 4 and ((det.boxes[:, 0::2] <= 400) & (det.boxes[:, 1::2] <= 1)).all()
    det = model.predict(np.ascontiguousarray(strip.transpose(1, 0, 2)))
    assert ((det.boxes[:, 0::2] <= 1) & (det.boxes[:, 1::2] <= 400)).all()
