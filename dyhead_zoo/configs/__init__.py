"""Variant records (TOML), shipped inside the package: ``list_models``, ``get_config`` and the raw records."""
from __future__ import annotations

import functools
import tomllib
from importlib import resources
from typing import Any

from dyhead_zoo.config import ModelConfig, from_dict


@functools.cache
def records() -> dict[str, dict[str, Any]]:
    """Variant name -> its parsed TOML record (the model settings and the ``[train]`` recipe section)."""
    package = resources.files("dyhead_zoo.configs")  # package data, in a checkout and in a wheel alike
    return {p.name[:-5]: tomllib.loads(p.read_text()) for p in sorted(package.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".toml")}


@functools.cache
def _configs() -> dict[str, ModelConfig]:
    configs = {}
    for stem, record in records().items():
        record = {k: v for k, v in record.items() if k != "train"}  # the recipe: dyhead_zoo.engine.recipe
        config = from_dict(record)
        if config.name != stem:
            raise ValueError(f"dyhead_zoo/configs/{stem}.toml declares name {config.name!r}; they must agree")
        configs[stem] = config
    return configs


def list_models() -> list[str]:
    """Names of all variants in the zoo, sorted."""
    return sorted(_configs())


def get_config(name: str) -> ModelConfig:
    """The frozen :class:`ModelConfig` of variant ``name``."""
    configs = _configs()
    if name not in configs:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(configs))}")
    return configs[name]
