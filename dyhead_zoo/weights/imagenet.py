"""The ImageNet weights the official runs started from, converted to our backbone keys.

``--from-scratch`` training starts the backbone from the same ImageNet classifiers as the
official configs: detectron2's MSRA ResNet-50 (``R-50.pkl``: caffe2 blob names, caffe-style
ResNet with the stride in the 1x1 conv, BGR 0-255 input; timm's and torchvision's ResNet-50 are
a different network and are not substitutes) and Swin-T ImageNet-1k (timm's
``swin_tiny_patch4_window7_224.ms_in1k`` on the Hugging Face Hub, which holds the numbers of the
official ``swin_tiny_patch4_window7_224.pth``). Files are fetched once into the usual caches by
:mod:`dyhead_zoo.weights.fetch` and read without arbitrary unpickling (:mod:`dyhead_zoo.weights.checkpoint`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageNetWeights:
    """Where a backbone's ImageNet weights live: the ``url`` of the original file and, when
    mirrored, a Hugging Face Hub ``hf_repo`` / ``hf_filename`` (tried first)."""

    backbone: str
    description: str
    url: str
    hf_repo: str = ""
    hf_filename: str = ""
    sha256: str = ""


IMAGENET_WEIGHTS: dict[str, ImageNetWeights] = {
    "resnet50": ImageNetWeights(
        "resnet50", "detectron2's MSRA ResNet-50 (caffe2 names, BGR 0-255 input)",
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"),
    "swin_t": ImageNetWeights(
        "swin_t", "Swin-T ImageNet-1k (224, window 7)",
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
        hf_repo="timm/swin_tiny_patch4_window7_224.ms_in1k", hf_filename="model.safetensors"),
}

# FrozenBatchNorm statistics detectron2 leaves at their initial values when it loads caffe2
# AffineChannel weights (scale and shift only): mean 0, variance 1 - eps, so y = x * scale + shift.
_FROZEN_BN_EPS = 1e-5


def imagenet_weights(backbone: str) -> ImageNetWeights:
    """The ImageNet source of ``backbone`` (``"resnet50"`` or ``"swin_t"``)."""
    if backbone not in IMAGENET_WEIGHTS:
        raise ValueError(f"no ImageNet weights are known for backbone {backbone!r}; known: {sorted(IMAGENET_WEIGHTS)}")
    return IMAGENET_WEIGHTS[backbone]


def fetch_imagenet_weights(backbone: str, progress: bool = True) -> Path:
    """Local path of ``backbone``'s ImageNet weights, downloaded once if absent.

    Tries the Hub mirror (Hugging Face cache) when there is one, then the original URL into
    ``torch.hub.get_dir()/checkpoints``, each host probed first (so no network fails at once).
    Raises :class:`dyhead_zoo.weights.fetch.WeightsDownloadError` saying where to put a file
    downloaded by hand.
    """
    from dyhead_zoo.config import WeightSource
    from dyhead_zoo.weights.fetch import WeightsDownloadError, fetch_source, url_cache_path

    source = imagenet_weights(backbone)
    target = url_cache_path(source.url)
    if target.is_file():
        return target
    hub_failure = ""
    probes: dict[str, str] = {}
    if source.hf_repo:
        try:
            return fetch_source(WeightSource("mirror", repo=source.hf_repo, filename=source.hf_filename), progress,
                                probes)
        except WeightsDownloadError as err:
            hub_failure = f"{source.hf_repo}/{source.hf_filename}: {err.reason}"
            logger.info("no ImageNet weights from the Hub (%s); trying %s", hub_failure, source.url)
    try:
        return fetch_source(WeightSource("official", url=source.url, sha256=source.sha256), progress, probes)
    except WeightsDownloadError as err:
        raise WeightsDownloadError(
            f"could not get the ImageNet weights of the {backbone} backbone ({source.description}): "
            + (f"Hub: {hub_failure}; " if hub_failure else "") + f"{source.url}: {err.reason}. Download "
            f"{source.url} by hand and save it as {target}, or pass its path (--from-scratch PATH / "
            "load_imagenet_backbone(model, PATH)).", reason=err.reason) from err


def _c2_resnet_name(name: str) -> str:
    """detectron2's ``convert_basic_c2_names`` for a ResNet blob name (``res2_0_branch2a_bn_s`` ->
    ``res2.0.conv1.norm.weight``)."""
    name = name.replace("_", ".")
    name = re.sub(r"\.b$", ".bias", name)
    name = re.sub(r"\.w$", ".weight", name)
    name = re.sub(r"bn\.s$", "norm.weight", name)
    name = re.sub(r"bn\.bias$", "norm.bias", name)
    name = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", name)
    name = re.sub(r"^conv1\.", "stem.conv1.", name)
    for c2, ours in ((".branch1.", ".shortcut."), (".branch2a.", ".conv1."), (".branch2b.", ".conv2."),
                     (".branch2c.", ".conv3.")):
        name = name.replace(c2, ours)
    return name


def convert_msra_resnet50(blobs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """detectron2's MSRA ``R-50.pkl`` blobs -> our :class:`~dyhead_zoo.models.resnet.ResNet50` keys.

    ``blobs`` maps caffe2 names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ...) to
    arrays or tensors. The ImageNet classifier (``fc1000_*``) and solver state (``*_momentum``) are
    left out; a state already in our layout passes through; each norm gets the mean 0 / variance 1 - eps statistics detectron2 leaves in place,
    so it applies the caffe2 scale and shift exactly. Returns float32 tensors.
    """
    if "stem.conv1.weight" in blobs:  # already in our layout (converted before)
        return {name: torch.as_tensor(value).float().contiguous() for name, value in blobs.items()}
    out: dict[str, Tensor] = {}
    for name, value in blobs.items():
        if name.endswith("_momentum") or name.startswith("fc1000"):
            continue
        ours = _c2_resnet_name(name)
        if ours in out:
            raise ValueError(f"two caffe2 blobs map to {ours!r}; is this detectron2's MSRA R-50.pkl?")
        out[ours] = torch.as_tensor(value).float().contiguous()
    for name in [n for n in out if n.endswith(".norm.weight")]:
        prefix = name[: -len("weight")]
        out.setdefault(prefix + "running_mean", torch.zeros_like(out[name]))
        out.setdefault(prefix + "running_var", torch.full_like(out[name], 1.0 - _FROZEN_BN_EPS))
    return out


def convert_swin_tiny(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Swin-T ImageNet state_dict (timm >= 0.9 or the official release) -> our
    :class:`~dyhead_zoo.models.swin.SwinTransformer` keys.

    timm puts each PatchMerging at the start of the next stage (``layers.{i+1}.downsample``),
    the official code and ours at the end of the stage (``layers.{i}.downsample``). The
    classifier (``head``, final ``norm``), the relative-position indices and attention masks
    (buffers that depend only on the window layout) are left out; the detection model's
    per-stage output norms (``norm1..3``) are not in an ImageNet checkpoint and start as
    LayerNorm's identity, as in the official detection code. Returns float32 tensors.
    """
    timm_layout = any(k.startswith("layers.1.downsample.") for k in state) and not any(
        k.startswith("layers.0.downsample.") for k in state)
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.startswith(("head.", "norm.")) or name.endswith(("relative_position_index", "attn_mask")):
            continue
        found = re.match(r"layers\.(\d+)\.downsample\.(.*)", name)
        if timm_layout and found:
            name = f"layers.{int(found.group(1)) - 1}.downsample.{found.group(2)}"
        out[name] = torch.as_tensor(value).float().contiguous()
    return out


def _with_model_buffers(converted: dict[str, Tensor], bottom_up: nn.Module) -> dict[str, Tensor]:
    """Add what the ImageNet file cannot hold: Swin's fixed index buffers and output norms."""
    if type(bottom_up).__name__ != "SwinTransformer":
        return converted
    for name, value in bottom_up.state_dict().items():
        if name.endswith("relative_position_index"):
            converted.setdefault(name, value.clone())
        elif re.fullmatch(r"norm\d+\.weight", name):
            converted.setdefault(name, torch.ones_like(value))
        elif re.fullmatch(r"norm\d+\.bias", name):
            converted.setdefault(name, torch.zeros_like(value))
    return converted


def convert_imagenet_state_dict(backbone: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a raw ImageNet checkpoint of ``backbone`` (``"resnet50"``: caffe2 blobs;
    ``"swin_t"``: timm or official Swin-T names) to our bottom-up keys."""
    if backbone == "resnet50":
        return convert_msra_resnet50(state)
    if backbone == "swin_t":
        return convert_swin_tiny(state)
    raise ValueError(f"no ImageNet conversion for backbone {backbone!r}; known: {sorted(IMAGENET_WEIGHTS)}")


def bottom_up_of(model: nn.Module) -> nn.Module:
    """The ImageNet-classifier part of a :class:`~dyhead_zoo.DyHeadDetector` (ResNet-50 or Swin-T)."""
    try:
        return model.backbone.backbone.bottom_up
    except AttributeError as err:
        raise TypeError(f"expected a DyHeadDetector (backbone.backbone.bottom_up), got {type(model).__name__}") from err


def load_imagenet_backbone(model: nn.Module, path: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Load the official ImageNet weights into ``model``'s backbone (the ``--from-scratch`` start).

    ``path`` is a local copy of the file (``R-50.pkl``, the official Swin ``.pth`` or timm's
    ``model.safetensors``); ``None`` fetches it (see :func:`fetch_imagenet_weights`). Only the
    ResNet/Swin body is loaded, strictly (every key and shape must match); FPN, DyHead and head
    keep their initialisation. Returns the file used.
    """
    from dyhead_zoo.weights.checkpoint import find_mismatches, read_state_dict, tensor_specs

    backbone = model.config.backbone
    path = fetch_imagenet_weights(backbone, progress) if path is None else Path(path)
    converted = convert_imagenet_state_dict(backbone, read_state_dict(path))
    bottom_up = bottom_up_of(model)
    converted = _with_model_buffers(converted, bottom_up)
    found = find_mismatches(tensor_specs(bottom_up.state_dict()), converted)
    problems = [f"{title} ({len(items)}): {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
                for title, items in (("missing keys", found.missing), ("unexpected keys", found.unexpected),
                                     ("shape mismatches", [f"{k} {got} vs {want}" for k, got, want in found.shapes]))
                if items]
    if problems:
        raise ValueError(f"{path} is not the {imagenet_weights(backbone).description} checkpoint the "
                         f"{model.config.name} backbone starts from (download it with "
                         f"`python -m dyhead_zoo.converters.imagenet_backbones {backbone} --out FILE` or pass no path): "
                         + "; ".join(problems))
    own = bottom_up.state_dict()
    bottom_up.load_state_dict({k: converted[k].to(own[k].dtype) for k in own}, strict=True)
    logger.info("backbone initialised from ImageNet weights %s (%d tensors)", path, len(own))
    return path
