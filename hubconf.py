"""torch.hub entrypoints: one per dyhead-zoo variant, plus ``list``.

    model = torch.hub.load("/path/to/dyhead-zoo", "dyhead_r50_atss_fpn_1x", source="local", pretrained=True)

Each entrypoint takes ``pretrained`` and the keyword arguments of ``dyhead_zoo.create_model``
(``weights=PATH``, ``config=...``, ``device=...``, ``allow_unsafe_pickle=True`` for a trusted
``.pth`` that needs arbitrary unpickling).
"""
from __future__ import annotations

dependencies = ["torch", "torchvision", "timm", "numpy", "PIL", "safetensors", "huggingface_hub"]

from dyhead_zoo.registry import create_model as _create_model  # noqa: E402
from dyhead_zoo.registry import get_config as _get_config  # noqa: E402
from dyhead_zoo.registry import list_models as _list_models  # noqa: E402


def list() -> list[str]:  # noqa: A001 - the hub entrypoint's name
    """Names of the variants this hubconf exposes (``dyhead_zoo.list_models()``)."""
    return _list_models()


def _entrypoint(name: str):
    config = _get_config(name)

    def entrypoint(pretrained: bool = False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"{config.description}: Dynamic Head detector, COCO box AP {config.published_map} (published).\n\n"
        "    pretrained: fetch the published weights from the first of these sources that has them\n"
        "    (checked strictly before use):\n" + "".join(f"      {s.label}\n" for s in config.weights.sources)
        + "    Other keyword arguments go to dyhead_zoo.create_model\n"
        "    (weights=PATH, config=..., device=..., allow_unsafe_pickle=True for a trusted .pth that needs\n"
        "    arbitrary unpickling). Returns the model in eval mode.\n")
    return entrypoint


for _name in _list_models():
    globals()[_name] = _entrypoint(_name)
