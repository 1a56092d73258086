"""Hugging Face Hub folders: ``model.safetensors``, ``config.json`` and a ``README.md`` model card.

One layout serves the converter (``dyhead_zoo/converters/to_hub_folder.py``), ``save_pretrained`` /
``push_to_hub`` and ``from_pretrained``: the safetensors file holds the official state_dict
keys unchanged, ``config.json`` the variant's :class:`~dyhead_zoo.config.ModelConfig` (plus
the COCO category names) and the card the metadata the Hub indexes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, hf_hub_download
from torch import Tensor, nn

from dyhead_zoo.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from dyhead_zoo.config import ModelConfig, from_dict
from dyhead_zoo.version import __version__
from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME, load_checkpoint

CONFIG_NAME = "config.json"
README_NAME = "README.md"
LIBRARY_NAME = "dyhead-zoo"
LICENSE = "mit"  # the license of the official DynamicHead release and its weights
DATASET = "detection-datasets/coco"
TAGS = ("object-detection", "dyhead", "vision", "coco")
PAPER_URL = "https://arxiv.org/abs/2106.08322"
OFFICIAL_REPO = "https://github.com/microsoft/DynamicHead"
# Keys config.json carries besides the ModelConfig fields; informative only when loading.
_EXTRA_KEYS = ("library_name", "library_version", "category_ids")

CITATION = """@inproceedings{dai2021dynamic,
  title={Dynamic Head: Unifying Object Detection Heads with Attentions},
  author={Dai, Xiyang and Chen, Yinpeng and Xiao, Bin and Chen, Dongdong and Liu, Mengchen and Yuan, Lu and Zhang, Lei},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={7373--7382},
  year={2021}
}"""


def mixin_metadata() -> dict[str, Any]:
    """Class keywords for ``PyTorchModelHubMixin`` (a fresh dict: the mixin appends to ``tags``)."""
    return {"library_name": LIBRARY_NAME, "license": LICENSE, "tags": list(TAGS),
            "pipeline_tag": "object-detection", "paper_url": PAPER_URL}


def config_to_json(config: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` dict: every :class:`ModelConfig` field (``class_names`` among them,
    in label order) plus, for the 80 COCO classes, their annotation ids.
    :func:`config_from_json` is its inverse."""
    data = {"library_name": LIBRARY_NAME, "library_version": __version__, **config.to_dict()}
    if tuple(config.class_names) == COCO_CLASS_NAMES:
        data["category_ids"] = list(COCO_CATEGORY_IDS)
    return data


def config_from_json(data: Mapping[str, Any]) -> ModelConfig:
    """Rebuild the :class:`ModelConfig` from a ``config.json`` dict; unknown keys are an error."""
    return from_dict({k: v for k, v in data.items() if k not in _EXTRA_KEYS})


def _classes_line(config: ModelConfig) -> str:
    names = tuple(config.class_names)
    if names == COCO_CLASS_NAMES:
        return f"{len(names)} COCO categories (`class_names` in `config.json`)"
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    return f"{len(names)} classes, fine-tuned: {shown} (`class_names` in `config.json`)"


def model_card(config: ModelConfig, source_url: str = "", source_sha256: str = "",
               source_official: bool = False) -> ModelCard:
    """The ``README.md`` model card of ``config``: a YAML header (library, license, dataset,
    tags, the published COCO box AP as ``model-index``), a usage snippet and the citation.
    ``source_sha256`` (and ``source_url`` when known) name the checkpoint the weights were
    converted from, when they were; the card calls it the official checkpoint only when
    ``source_official`` (its hash is the pinned one), and says "unverified source" otherwise."""
    data = ModelCardData(
        library_name=LIBRARY_NAME, license=LICENSE, datasets=[DATASET], tags=list(TAGS),
        pipeline_tag="object-detection", model_name=config.name,
        eval_results=[EvalResult(
            task_type="object-detection", task_name="Object Detection", dataset_type=DATASET,
            dataset_name="COCO 2017", dataset_split="validation", metric_type="mAP",
            metric_name="box AP", metric_value=config.published_map,
            source_name="Dynamic Head official release", source_url=OFFICIAL_REPO)],
    )
    repo = config.weights.hf_repo or "PATH/TO/FOLDER"
    provenance = ""
    if source_sha256 and source_official:
        provenance = (f"\nConverted from the official checkpoint <{source_url or config.weights.url}> (SHA-256 "
                      f"`{source_sha256}`, the hash pinned for it in dyhead-zoo's record of this variant): every "
                      "tensor is bit-identical to it.\n")
    elif source_sha256:
        origin = f", downloaded from <{source_url}>," if source_url else ""
        provenance = (f"\n**Unverified source.** Converted from a checkpoint with SHA-256 `{source_sha256}`{origin} "
                      "which has not been matched against a pinned hash of the official release, so these "
                      "weights are not known to be the official ones. Every tensor is bit-identical to that "
                      "checkpoint.\n")
    body = f"""
# {config.name}

{config.description}: a [Dynamic Head]({PAPER_URL}) (CVPR 2021) object detector trained on
COCO, released at {OFFICIAL_REPO}, packaged for `dyhead-zoo`, a pure-PyTorch implementation
(no detectron2) whose outputs match the official code's.

| | |
|---|---|
| COCO box AP (published) | {config.published_map} |
| parameters | {config.weights.num_params:,} |
| input | {config.input.format}, shorter side {config.input.min_size}, longer side at most {config.input.max_size} |
| classes | {_classes_line(config)} |
{provenance}
Files: `model.safetensors` (the official state_dict keys), `config.json` (everything needed
to rebuild the model), this card.

## Usage

```python
from dyhead_zoo import DyHeadDetector

model = DyHeadDetector.from_pretrained("{repo}")
detections = model.predict("image.jpg")  # path, PIL image or HxWx3 uint8 RGB array
for box, score, name in zip(detections.boxes, detections.scores, detections.label_names):
    print(name, round(float(score), 3), box.tolist())  # XYXY pixels
```

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def save_folder(state: Mapping[str, Tensor], config: ModelConfig, directory: str | os.PathLike,
                source_url: str = "", source_sha256: str = "", source_official: bool = False) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for ``config`` into ``directory``.

    ``state`` is the full state_dict (official keys), written as stored; the safetensors
    metadata records the variant and, for a conversion, the input's SHA-256 (``source_sha256``),
    its URL when known, and ``source``: ``official`` when ``source_official`` (the hash is the
    pinned one), else ``unverified``. Returns ``directory``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "variant": config.name, "library": LIBRARY_NAME, "library_version": __version__}
    if source_url:
        metadata["source_url"] = source_url
    if source_sha256:
        metadata["source_sha256"] = source_sha256
        metadata["source"] = "official" if source_official else "unverified"
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(directory / SAFETENSORS_NAME), metadata=metadata)
    (directory / CONFIG_NAME).write_text(json.dumps(config_to_json(config), indent=2) + "\n")
    model_card(config, source_url, source_sha256, source_official).save(directory / README_NAME)
    return directory


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (a folder means its ``model.safetensors``)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path / SAFETENSORS_NAME if path.is_dir() else path), "pt") as f:
        return dict(f.metadata() or {})


def folder_config(folder: str | os.PathLike, base: ModelConfig) -> tuple[ModelConfig, Path]:
    """The config of a model folder (its ``config.json``: classes and architecture, e.g. a
    fine-tuned ``OUTPUT/model_final/``) with ``base``'s input settings (the test size the caller
    chose), and the folder's ``model.safetensors`` path.

    A folder without ``config.json`` gives ``base`` unchanged. Raises ``FileNotFoundError`` when
    the weights file is missing and ``ValueError`` when the folder holds another variant.
    """
    import dataclasses

    folder = Path(folder)
    weights = folder / SAFETENSORS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {SAFETENSORS_NAME}; give a checkpoint file or a folder written by "
                                "save_pretrained / dyhead-zoo train (OUTPUT/model_final)")
    if (folder / CONFIG_NAME).is_file():
        saved = config_from_json(json.loads((folder / CONFIG_NAME).read_text()))
        if saved.name != base.name:
            raise ValueError(f"{folder} holds {saved.name!r}, not {base.name!r}; pass --model {saved.name}")
        base = dataclasses.replace(saved, input=base.input)
    return base, weights


def load_pretrained(cls: type[nn.Module], model_id: str, config: ModelConfig | Mapping[str, Any] | None, *,
                    revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                    force_download: bool = False, local_files_only: bool = False,
                    token: str | bool | None = None, device: str | None = None) -> nn.Module:
    """Build ``cls(config)`` and load ``model.safetensors`` from a folder or Hub repo strictly.

    ``config`` is the parsed ``config.json`` (or a :class:`ModelConfig` given by the caller).
    Every key and shape must match; returns the model in eval mode, on ``device`` if given.
    """
    if config is None:
        raise FileNotFoundError(
            f"{model_id} has no {CONFIG_NAME}, so the variant is unknown. Use a folder written by "
            "save_pretrained or dyhead_zoo/converters/to_hub_folder.py, or pass config=dyhead_zoo.get_config(NAME).")
    if not isinstance(config, ModelConfig):
        config = config_from_json(config)
    model = cls(config)
    if os.path.isdir(model_id):
        weights = Path(model_id) / SAFETENSORS_NAME
    else:
        weights = Path(hf_hub_download(
            model_id, SAFETENSORS_NAME, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, library_name=LIBRARY_NAME, library_version=__version__))
    load_checkpoint(model, weights)
    model.eval()
    if device is not None:
        model.to(device)
    return model
