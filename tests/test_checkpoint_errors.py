"""A checkpoint that does not fit the variant is refused with the offending keys named."""
from __future__ import annotations

import pytest
import torch
from conftest import official_state_dict

import dyhead_zoo
from dyhead_zoo.weights.checkpoint import CheckpointMismatchError

NAME = "dyhead_r50_atss_fpn_1x"


def save(tmp_path, state) -> str:
    path = tmp_path / "model.pth"
    torch.save({"model": state, "iteration": 90000}, path)
    return str(path)


def test_official_layout_loads_strictly(tmp_path):
    state = official_state_dict(NAME)
    model = dyhead_zoo.create_model(NAME, weights=save(tmp_path, state))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    state = dict(official_state_dict(NAME))
    del state["head.centerness.bias"]
    state["head.extra.weight"] = torch.zeros(3)
    state["head.cls_logits.bias"] = torch.zeros(81)
    with pytest.raises(CheckpointMismatchError) as err:
        dyhead_zoo.create_model(NAME, weights=save(tmp_path, state))
    text = str(err.value)
    assert "missing keys (1)" in text and "head.centerness.bias" in text
    assert "unexpected keys (1)" in text and "head.extra.weight" in text
    assert "head.cls_logits.bias: checkpoint (81,) vs model (80,)" in text


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    state = official_state_dict("dyhead_swint_atss_fpn_2x_ms")
    with pytest.raises(CheckpointMismatchError, match="bottom_up.patch_embed"):
        dyhead_zoo.create_model(NAME, weights=save(tmp_path, state))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        dyhead_zoo.create_model(NAME, weights=tmp_path / "nothing.pth")
