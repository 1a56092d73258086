"""Reading checkpoints in every layout detectron2 writes, refusing unsafe pickles, strict keys."""
from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import official_state_dict
from hub_testing import assert_bit_identical, official_pth

import dyhead_zoo
from dyhead_zoo.weights.checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_checkpoint,
    read_state_dict,
)

NAME = "dyhead_r50_atss_fpn_1x"
SMALL = OrderedDict([("a.weight", torch.randn(3, 4)), ("a.bias", torch.randn(3)),
                     ("b.index", torch.arange(5))])


class _Config:
    """Stands for the non-tensor objects (configs, schedulers) a training checkpoint may hold."""


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def _numpy(state):
    return {k: v.numpy() for k, v in state.items()}


def _as_numpy1(path):
    """Rewrite a torch.save zip so its numpy globals read as numpy 1.x wrote them."""
    with zipfile.ZipFile(path) as zin:
        entries = [(info.filename, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for filename, data in entries:
            if filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(filename, data)


LAYOUTS = {
    "detectron2": lambda s: {"model": s, "iteration": 90000},
    "detectron2_training": lambda s: {
        "model": s, "iteration": 7,
        "scheduler": {"base_lrs": [0.01], "last_epoch": 7, "_get_lr_called_within_step": False},
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                      "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]}},
    "bare": lambda s: s,
    "state_dict_key": lambda s: {"state_dict": s, "epoch": 3},
    "module_prefix": lambda s: {"model": OrderedDict((f"module.{k}", v) for k, v in s.items())},
    "numpy": lambda s: {"model": _numpy(s), "__author__": "Detectron2 Model Zoo", "matching_heuristics": True,
                        "iteration": np.int64(90000)},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_detectron2_layouts(tmp_path, layout):
    path = tmp_path / "model.pth"
    torch.save(LAYOUTS[layout](SMALL), path)
    state = read_state_dict(path)
    assert_bit_identical(state, SMALL)


def test_reads_numpy1_checkpoints(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": _numpy(SMALL)}, path)
    _as_numpy1(path)
    assert b"numpy.core.multiarray" in zipfile.ZipFile(path).read("model/data.pkl")
    assert_bit_identical(read_state_dict(path), SMALL)


def test_reads_detectron2_pkl(tmp_path):
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": _numpy(SMALL), "__author__": "Detectron2 Model Zoo"}, f)
    assert_bit_identical(read_state_dict(path), SMALL)


def test_reads_safetensors_file_and_folder(tmp_path):
    from safetensors.torch import save_file

    save_file(dict(SMALL), str(tmp_path / "model.safetensors"))
    for path in (tmp_path / "model.safetensors", tmp_path):
        state = read_state_dict(path)
        assert_bit_identical(OrderedDict((k, state[k]) for k in SMALL), SMALL)
        assert state.keys() == SMALL.keys()


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_refuses_arbitrary_unpickling_unless_allowed(tmp_path, suffix):
    marker = tmp_path / "code-ran"
    path = tmp_path / f"model{suffix}"
    payload = {"model": dict(SMALL), "cfg": _Config(), "hook": _RunsCode(str(marker))}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    assert "allow_unsafe_pickle=True" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    assert_bit_identical(read_state_dict(path, allow_unsafe_pickle=True), SMALL)
    assert marker.exists()  # the opt-in really unpickles everything


def test_unreadable_files_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_state_dict(garbage)
    odd = tmp_path / "odd.pth"
    torch.save({"model": {"a.weight": torch.ones(1), "a.note": "text"}}, odd)
    with pytest.raises(ValueError, match="'a.note' is a str"):
        read_state_dict(odd)


@pytest.fixture(scope="module")
def model():
    return dyhead_zoo.create_model(NAME)


def test_fp16_checkpoints_are_cast(model, tmp_path):
    reference = official_state_dict(NAME)
    half = {k: v.half() if v.is_floating_point() else v for k, v in reference.items()}
    torch.save({"model": half, "iteration": 1}, tmp_path / "half.pth")
    load_checkpoint(model, tmp_path / "half.pth")
    assert_bit_identical(model.state_dict(), {k: v.to(reference[k].dtype) for k, v in half.items()})


def test_a_refused_checkpoint_changes_nothing(model, tmp_path):
    """Mismatches are named (see test_checkpoint_errors.py) before any tensor is copied."""
    load_checkpoint(model, official_pth(NAME))
    state = dict(official_state_dict(NAME, seed=1))
    state["head.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointMismatchError, match="unexpected keys \\(1\\):\n  head.extra.weight"):
        load_checkpoint(model, tmp_path / "wrong.pth")
    assert_bit_identical(model.state_dict(), official_state_dict(NAME))
