"""hubconf.py: one documented torch.hub entrypoint per variant, loaded for real with source="local"."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import official_state_dict
from hub_testing import REPO_ROOT, assert_bit_identical, official_pth

import dyhead_zoo

NAME = "dyhead_r50_atss_fpn_1x"


@pytest.fixture(scope="module")
def hubconf():
    """hubconf.py imported the way torch.hub imports it (a fresh module from the file)."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoints_are_the_zoo_plus_list(hubconf):
    # torch.hub.list's rule: the public callables of hubconf
    entrypoints = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert sorted(entrypoints) == sorted([*dyhead_zoo.list_models(), "list"])
    assert torch.hub.load(str(REPO_ROOT), "list", source="local") == dyhead_zoo.list_models()
    assert all(importlib.util.find_spec(package) for package in hubconf.dependencies)


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_entrypoint_docstring_states_the_map(hubconf, name):
    entry = getattr(hubconf, name)
    config = dyhead_zoo.get_config(name)
    assert entry.__name__ == name
    assert f"COCO box AP {config.published_map}" in entry.__doc__ and config.description in entry.__doc__


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_hub_load_local_builds_the_variant(name):
    model = torch.hub.load(str(REPO_ROOT), name, source="local", pretrained=False)
    assert isinstance(model, dyhead_zoo.DyHeadDetector) and not model.training
    assert model.config == dyhead_zoo.get_config(name)


def test_hub_load_local_passes_weights_through():
    model = torch.hub.load(str(REPO_ROOT), NAME, source="local", weights=official_pth(NAME))
    assert_bit_identical(model.state_dict(), official_state_dict(NAME))
