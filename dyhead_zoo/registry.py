"""The zoo: variant names, their configs (from ``dyhead_zoo/configs/*.toml``) and ``create_model``."""
from __future__ import annotations

import os

from dyhead_zoo.config import ModelConfig
from dyhead_zoo.configs import get_config, list_models

__all__ = ["create_model", "get_config", "list_models", "weight_sources"]

def create_model(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 config: ModelConfig | None = None, device: str | None = None, allow_unsafe_pickle: bool = False,
                 allow_non_finite: bool = False):
    """Build variant ``name`` in eval mode.

    ``weights``: a local checkpoint (official ``.pth`` or ``.safetensors``, or a folder with
    ``model.safetensors`` + ``config.json`` whose classes are used) loaded strictly;
    ``pretrained=True`` fetches the published weights instead (each source of the variant's
    record in order, checked strictly before use; see :func:`dyhead_zoo.weights.fetch.fetch_weights`);
    ``config`` overrides the variant's settings (build it with
    ``dataclasses.replace(get_config(name), ...)``). ``allow_unsafe_pickle=True`` reads a
    ``.pth`` that needs arbitrary unpickling (only for files you trust); ``allow_non_finite=True``
    loads weights holding NaN or Inf (refused by default).
    """
    from dyhead_zoo.models.detector import DyHeadDetector
    from dyhead_zoo.weights.checkpoint import load_checkpoint

    if weights is not None and os.path.isdir(weights):  # a from_pretrained folder: it names its classes
        from dyhead_zoo.weights.hub import folder_config

        config, weights = folder_config(weights, config or get_config(name))
    model = DyHeadDetector(config or get_config(name))
    if weights is not None:
        load_checkpoint(model, weights, allow_unsafe_pickle=allow_unsafe_pickle, allow_non_finite=allow_non_finite)
    elif pretrained:
        from dyhead_zoo.weights.fetch import download_weights

        load_checkpoint(model, download_weights(model.config), allow_unsafe_pickle=allow_unsafe_pickle,
                        allow_non_finite=allow_non_finite)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def weight_sources(name: str) -> dict[str, object]:
    """Where the published weights of variant ``name`` come from and what they reach.

    Keys: ``sources`` (every source in the order ``pretrained=True`` tries them, as dicts with
    ``role``, ``url`` or ``repo``/``revision``/``filename``, and the pinned ``sha256``),
    ``url`` (the official ``.pth``), ``hf_repo`` (this project's repo with the converted
    ``model.safetensors``), ``sha256`` (pinned hash of the ``.pth``, "" if none),
    ``num_params``, ``coco_map`` (published COCO box AP), ``categories`` (the 80 COCO class
    names in label order) and ``pth_cache_path`` (where the ``.pth`` is kept once fetched).
    """
    import dataclasses

    from dyhead_zoo.categories import COCO_CLASS_NAMES
    from dyhead_zoo.weights.fetch import pth_cache_path

    config = get_config(name)
    return {"sources": [dataclasses.asdict(s) for s in config.weights.sources],
            "url": config.weights.url, "hf_repo": config.weights.hf_repo, "sha256": config.weights.sha256,
            "num_params": config.weights.num_params, "coco_map": config.published_map,
            "categories": list(COCO_CLASS_NAMES), "pth_cache_path": str(pth_cache_path(config))}
