"""Every variant in the zoo: exact official state_dict layout and consistent records."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import manifest

import dyhead_zoo
from dyhead_zoo.config import from_dict

PUBLISHED = {
    "dyhead_r50_rcnn_fpn_1x": 40.3,
    "dyhead_r50_retina_fpn_1x": 39.9,
    "dyhead_r50_atss_fpn_1x": 42.4,
    "dyhead_swint_atss_fpn_2x_ms": 49.8,
}


def test_zoo_lists_the_published_table():
    assert dyhead_zoo.list_models() == sorted(PUBLISHED)
    for name, value in PUBLISHED.items():
        assert dyhead_zoo.get_config(name).published_map == value


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_state_dict_is_the_official_layout(name):
    model = dyhead_zoo.create_model(name)
    state = model.state_dict()
    expected = manifest(name)
    assert list(state) == [k["name"] for k in expected]
    for key in expected:
        tensor = state[key["name"]]
        assert list(tensor.shape) == key["shape"], key["name"]
        assert str(tensor.dtype).removeprefix("torch.") == key["dtype"], key["name"]
    params = dict(model.named_parameters())
    assert {k["name"] for k in expected if k["kind"] == "param"} == set(params)
    assert sum(p.numel() for p in params.values()) == model.config.weights.num_params


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_config_round_trips_through_a_dict(name):
    config = dyhead_zoo.get_config(name)
    assert from_dict(config.to_dict()) == config
    smaller = dataclasses.replace(config, input=dataclasses.replace(config.input, min_size=320))
    assert from_dict(smaller.to_dict()).input.min_size == 320


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ValueError, match="dyhead_r50_atss_fpn_1x"):
        dyhead_zoo.create_model("dyhead_r101")


def test_unknown_config_setting_is_named():
    data = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x").to_dict()
    data["input"]["min_sise"] = 800
    with pytest.raises(ValueError, match="min_sise"):
        from_dict(data)


def test_model_is_in_eval_mode_and_runs_on_a_tensor_batch():
    model = dyhead_zoo.create_model("dyhead_r50_atss_fpn_1x")
    assert not model.training
    out = model(torch.zeros(1, 3, 128, 128))
    assert len(out) == 1 and out[0].boxes.shape[1] == 4
    with pytest.raises(ValueError, match="divisible by 128"):
        model(torch.zeros(1, 3, 100, 128))
