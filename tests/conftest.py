"""Shared test helpers: official-layout random checkpoints and the recorded parity cases."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))

from make_checkpoint import make  # noqa: E402

import dyhead_zoo  # noqa: E402


def manifest_path(name: str) -> Path:
    """The official state_dict manifest of variant ``name`` (copied from shared/reference)."""
    return DATA / f"{name}.keys.json"


def manifest(name: str) -> list[dict]:
    return json.loads(manifest_path(name).read_text())["keys"]


@functools.lru_cache(maxsize=4)
def official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic random checkpoint in the official key layout (make_checkpoint.py)."""
    return make(str(manifest_path(name)), seed)


def random_model(name: str, seed: int = 0, **config_changes) -> dyhead_zoo.DyHeadDetector:
    """Variant ``name`` with the seeded official-layout random weights, in eval mode."""
    import dataclasses

    config = dyhead_zoo.get_config(name)
    if config_changes:
        config = dataclasses.replace(config, **config_changes)
    model = dyhead_zoo.create_model(name, config=config)
    model.load_state_dict(official_state_dict(name, seed), strict=True)
    return model.eval()


def parity_cases() -> list[tuple[str, Path]]:
    """(variant, npz path) for every recorded official output under tests/data/parity."""
    return [(p.parent.name, p) for p in sorted((DATA / "parity").glob("*/*.npz"))]


def load_case(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.manual_seed(0)
    yield
